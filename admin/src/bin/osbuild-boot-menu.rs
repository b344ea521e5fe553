//! `osbuild-boot-menu [SYSROOT]`: keep the boot menu in step with libostree's boot
//! entries. Runs on the device after deploys and at boot (see osbuild_admin::device);
//! SYSROOT is the physical root, `/sysroot` in a booted deployment. A sysroot marked for
//! systemd-boot gets its ESP synced (osbuild_admin::esp), one with a generated GRUB menu
//! gets it regenerated (osbuild_admin::bootmenu); any other is only flushed for its boot
//! loader (osbuild_admin::bootmenu::refresh).

use osbuild_admin::bootmenu::{refresh, Refreshed};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let sysroot = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/sysroot"));
    let what = match refresh(&sysroot) {
        Ok(Refreshed::Esp(steps)) => {
            format!("synced systemd-boot's entries on the ESP ({steps} changes)")
        }
        Ok(Refreshed::Grub) => "updated GRUB's menu".to_string(),
        Ok(Refreshed::Nothing) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osbuild-boot-menu: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("osbuild-boot-menu: {what} for {}", sysroot.display());
    ExitCode::SUCCESS
}
