//! `osbuild-boot-menu [SYSROOT]`: keep the boot menu in step with libostree's boot
//! entries. Runs on the device after deploys and at boot (see osbuild_admin::device);
//! SYSROOT is the physical root, `/sysroot` in a booted deployment. A sysroot marked for
//! systemd-boot gets its ESP synced (osbuild_admin::esp), one with a generated GRUB menu
//! gets it regenerated (osbuild_admin::bootmenu); any other is left alone.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let sysroot = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sysroot"));
    let result = osbuild_admin::esp::update(&sysroot).and_then(|synced| match synced {
        Some(steps) => Ok(Some(format!(
            "synced systemd-boot's entries on the ESP ({steps} changes)"
        ))),
        None => osbuild_admin::bootmenu::update(&sysroot)
            .map(|updated| updated.then(|| "updated GRUB's menu".to_string())),
    });
    match result {
        Ok(Some(what)) => {
            eprintln!("osbuild-boot-menu: {what} for {}", sysroot.display());
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osbuild-boot-menu: {e:#}");
            ExitCode::FAILURE
        }
    }
}
