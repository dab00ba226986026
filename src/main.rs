//! Native command line: `cargo run --release` trains the full recipe; see `--help`. This file
//! only dispatches: the arguments are `args.rs`, each command a file of `commands/`.

mod args;
mod commands;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use cifar_core::model::{ModelConfig, summary};

use args::{Cli, Command, RECIPE_OPTIONS};
use cifar_webgpu::error::Error;

/// Large blocks cached across training steps (src/memory.rs).
#[global_allocator]
static ALLOCATOR: cifar_webgpu::memory::CachingAllocator = cifar_webgpu::memory::CachingAllocator;

/// The recipe options typed on the command line (not defaults): `--resume` refuses them.
fn given(matches: &ArgMatches) -> Vec<&'static str> {
    RECIPE_OPTIONS.into_iter().filter(|id| matches.value_source(id) == Some(ValueSource::CommandLine)).collect()
}

/// Whether `--precision` was typed on the command line.
fn precision_given(matches: &ArgMatches) -> bool {
    matches.value_source("precision") == Some(ValueSource::CommandLine)
}

fn main() {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        None => commands::train::train(args::TrainArgs {
            given: given(&matches),
            precision_given: precision_given(&matches),
            ..cli.train
        }),
        Some(Command::Train(args)) => {
            let sub = matches.subcommand_matches("train").expect("the train subcommand's matches");
            commands::train::train(args::TrainArgs { given: given(sub), precision_given: precision_given(sub), ..args })
        }
        Some(Command::LrFind(args)) => commands::lr_find::run(args).map(|_| ()),
        Some(Command::Eval(args)) => commands::eval::run(args),
        Some(Command::Bench(args)) => commands::bench::run(args),
        Some(Command::CheckDevice { backend }) => commands::check_device::run(backend),
        Some(Command::Summary { width }) => {
            let config = ModelConfig::new().with_width(width);
            config.validate().map_err(Error::from).map(|_| {
                let model = config.init(&burn::tensor::Device::flex());
                print!("{}", summary::summary_table(&model));
            })
        }
    };
    match result {
        Ok(()) => {}
        Err(Error::Interrupted) => std::process::exit(130),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
