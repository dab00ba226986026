//! `check-device`: the device's reductions and BatchNorm statistics against the host.

use cifar_webgpu::backend::{self, Backend};
use cifar_webgpu::error::Error;

pub(crate) fn run(b: Backend) -> Result<(), Error> {
    let (device, info) = backend::select(b, backend::Precision::F32, backend::GpuConv::Auto)?;
    println!("device: {info}");
    let checks = backend::check_device(&device, backend::tf32_matmuls(&info));
    let mut failed = Vec::new();
    for c in &checks {
        let ok = c.ok();
        let verdict = match (ok, c.ours) {
            (true, _) => "ok",
            (false, true) => "WRONG",
            (false, false) => "wrong (Burn's op; not used for training)",
        };
        println!("{:<58} rel. error {:>9.2e}  {verdict}", c.what, c.rel_err);
        if !ok && c.ours {
            failed.push(c.what.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!("{} computes wrongly: {}", info.backend, failed.join("; "))))
    }
}
