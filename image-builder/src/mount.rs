//! A loop mount of a partition inside an image file: the one step that needs one is
//! extlinux. It is unmounted (and its loop device, made with `-o loop`, detached) however
//! the build ends: on success, on error, on drop when unwinding, and on Ctrl-C or SIGTERM,
//! which while the mount exists only set a flag: the build then undoes the mount and stops
//! with an error instead of dying with the mount in place.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// The process's handling of the signals that stop a build, installed on first use and
/// kept: outside a mount they end the process as usual (exit status 128 + the signal);
/// while a partition is mounted they only raise `interrupted`.
#[derive(Debug)]
struct Signals {
    interrupted: Arc<AtomicBool>,
    unmounted: Arc<AtomicBool>,
}

fn signals() -> Result<&'static Signals> {
    static SIGNALS: OnceLock<Result<Signals, String>> = OnceLock::new();
    SIGNALS
        .get_or_init(|| {
            let s = Signals {
                interrupted: Arc::new(AtomicBool::new(false)),
                unmounted: Arc::new(AtomicBool::new(true)),
            };
            for signal in [SIGINT, SIGTERM, SIGHUP] {
                let status = 128 + signal;
                signal_hook::flag::register_conditional_shutdown(
                    signal,
                    status,
                    Arc::clone(&s.unmounted),
                )
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&s.interrupted)))
                .map_err(|e| format!("catching signal {signal}: {e}"))?;
            }
            Ok(s)
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// A loop mount of a partition inside an image file, unmounted on drop.
#[derive(Debug)]
pub(crate) struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
    signals: &'static Signals,
}

impl LoopMount {
    pub(crate) fn new(image: &Path, offset: u64, size: u64) -> Result<Self> {
        let signals = signals()?;
        let dir = tempfile::Builder::new()
            .prefix("osbuild-mnt-")
            .tempdir()
            .context("creating a mount point")?;
        // From here on a signal is only noted, so none can leave the mount behind.
        signals.interrupted.store(false, Ordering::SeqCst);
        signals.unmounted.store(false, Ordering::SeqCst);
        let mounted = cmd::run(
            Command::new("mount")
                .arg("-o")
                .arg(format!("loop,offset={offset},sizelimit={size}"))
                .arg(image)
                .arg(dir.path()),
        );
        if let Err(e) = mounted {
            signals.unmounted.store(true, Ordering::SeqCst);
            return Err(e).context("mounting the root partition");
        }
        Ok(LoopMount {
            dir,
            mounted: true,
            signals,
        })
    }

    /// Whether a signal asked the build to stop while mounted.
    pub(crate) fn interrupted(&self) -> bool {
        self.signals.interrupted.load(Ordering::SeqCst)
    }

    pub(crate) fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Unmount now, reporting failure; the mount stays marked as mounted until umount
    /// succeeds, so that a failure here is retried on drop.
    pub(crate) fn unmount(mut self) -> Result<()> {
        umount(self.dir.path()).context("unmounting the root partition")?;
        self.mounted = false;
        self.signals.unmounted.store(true, Ordering::SeqCst);
        anyhow::ensure!(
            !self.interrupted(),
            "interrupted by a signal; the root partition was unmounted"
        );
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
        if self.mounted {
            force_unmount(self.dir.path());
        }
        // The mount is gone: signals end the process as usual again.
        self.signals.unmounted.store(true, Ordering::SeqCst);
    }
}

/// A mount point can be busy for a moment (udev, a scanner): retry, then detach it lazily
/// so that neither the mount nor its loop device outlives the builder.
fn force_unmount(dir: &Path) {
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
