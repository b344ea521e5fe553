//! `osbuild-grow-root`: grow the root partition and filesystem to fill the disk (see
//! osbuild_admin::growroot). Runs on the device at every boot; nothing to do is success.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            eprintln!("osbuild-grow-root: reading /proc/self/mountinfo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(root) = osbuild_admin::growroot::mounted_device(&mountinfo, "/sysroot")
        .or_else(|| osbuild_admin::growroot::mounted_device(&mountinfo, "/"))
    else {
        eprintln!(
            "osbuild-grow-root: the root filesystem is not on a block device; nothing to grow"
        );
        return ExitCode::SUCCESS;
    };
    match osbuild_admin::growroot::grow(&root) {
        Ok(Some(bytes)) => {
            eprintln!(
                "osbuild-grow-root: grew {} to {} MiB",
                root.display(),
                bytes >> 20
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osbuild-grow-root: {e:#}");
            ExitCode::FAILURE
        }
    }
}
