//! Native command line: `cargo run --release` trains the full recipe; see `--help`. This file
//! only dispatches: the arguments are `args.rs`, each command a file of `commands/`.

mod args;
mod commands;

use clap::Parser;

use cifar_core::model::{ModelConfig, summary};

use args::{Cli, Command};
use commands::INTERRUPTED;

/// Large blocks cached across training steps (src/memory.rs).
#[global_allocator]
static ALLOCATOR: cifar_webgpu::memory::CachingAllocator = cifar_webgpu::memory::CachingAllocator;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None => commands::train::train(cli.train),
        Some(Command::Train(args)) => commands::train::train(args),
        Some(Command::LrFind(args)) => commands::lr_find::run(args).map(|_| ()),
        Some(Command::Eval(args)) => commands::eval::run(args),
        Some(Command::Bench(args)) => commands::bench::run(args),
        Some(Command::CheckDevice { backend }) => commands::check_device::run(backend),
        Some(Command::Summary { width }) => {
            let config = ModelConfig::new().with_width(width);
            config.validate().map(|_| {
                let model = config.init(&burn::tensor::Device::flex());
                print!("{}", summary::summary_table(&model));
            })
        }
    };
    match result {
        Ok(()) => {}
        Err(e) if e == INTERRUPTED => std::process::exit(130),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
