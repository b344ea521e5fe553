//! `osbuild-boot-menu [SYSROOT]`: regenerate GRUB's menu from libostree's boot entries.
//! Runs on the device after deploys (see osbuild_admin::bootmenu); SYSROOT is the physical
//! root, `/sysroot` in a booted deployment.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let sysroot = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sysroot"));
    match osbuild_admin::bootmenu::update(&sysroot) {
        Ok(true) => {
            eprintln!(
                "osbuild-boot-menu: updated GRUB's menu in {}",
                sysroot.display()
            );
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osbuild-boot-menu: {e:#}");
            ExitCode::FAILURE
        }
    }
}
