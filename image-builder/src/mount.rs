//! A loop mount of a partition inside an image file: the one step that needs one is
//! extlinux. It is unmounted however the build ends: on success, on error, and on drop
//! when unwinding.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop mount of a partition inside an image file, unmounted on drop.
#[derive(Debug)]
pub(crate) struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    pub(crate) fn new(image: &Path, offset: u64, size: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("osbuild-mnt-")
            .tempdir()
            .context("creating a mount point")?;
        cmd::run(
            Command::new("mount")
                .arg("-o")
                .arg(format!("loop,offset={offset},sizelimit={size}"))
                .arg(image)
                .arg(dir.path()),
        )
        .context("mounting the root partition")?;
        Ok(LoopMount { dir, mounted: true })
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Unmount now, reporting failure; the mount stays marked as mounted until umount
    /// succeeds, so that a failure here is retried on drop.
    pub(crate) fn unmount(mut self) -> Result<()> {
        umount(self.dir.path()).context("unmounting the root partition")?;
        self.mounted = false;
        Ok(())
    }
}

/// How often a busy mount is retried before falling back to a lazy unmount.
const UMOUNT_ATTEMPTS: u32 = 5;

fn umount(dir: &Path) -> Result<(), cmd::CommandError> {
    cmd::run(Command::new("umount").arg(dir)).map(drop)
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // A mount point can be busy for a moment (udev, a scanner): retry, then detach it
        // lazily so that neither the mount nor its loop device outlives the builder.
        let dir = self.dir.path();
        for attempt in 1..=UMOUNT_ATTEMPTS {
            match umount(dir) {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    "unmounting {} (attempt {attempt} of {UMOUNT_ATTEMPTS}): {e}",
                    dir.display()
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)));
        }
        if let Err(e) = cmd::run(Command::new("umount").arg("--lazy").arg(dir)) {
            tracing::error!("could not unmount {}: {e}", dir.display());
        }
    }
}
