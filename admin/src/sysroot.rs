//! The one way the device side opens and locks a sysroot.

use anyhow::{Context, Result};
use osbuild_core::{gio, ostree};
use std::path::Path;
use std::time::{Duration, Instant};

/// The physical root of a booted device, where `/boot` and the ESP marker are.
pub(crate) const PHYSICAL_ROOT: &str = "/sysroot";

/// The sysroot at `path` (`/` on a device), loaded.
pub(crate) fn open(path: &Path) -> Result<ostree::Sysroot> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading the OSTree sysroot at {}", path.display()))?;
    Ok(sysroot)
}

/// The sysroot at `path`, loaded and locked against other writers (`ostree admin`,
/// finalize-staged) until dropped; fails at once when someone else holds the lock.
pub(crate) fn open_locked(path: &Path) -> Result<Locked> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    // A sysroot mounted read-only (sysroot.readonly) is made writable for this process.
    if path == Path::new("/") {
        sysroot
            .initialize_with_mount_namespace(gio::Cancellable::NONE)
            .context("preparing to write to /sysroot")?;
    }
    let locked = sysroot
        .try_lock()
        .with_context(|| format!("locking the sysroot at {}", path.display()))?;
    anyhow::ensure!(
        locked,
        "the sysroot at {} is locked by another operation (ostree admin, an upgrade, \
         finalize-staged): wait for it to finish and try again",
        path.display()
    );
    let locked = Locked(sysroot);
    locked
        .0
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading the OSTree sysroot at {}", path.display()))?;
    Ok(locked)
}

/// A loaded sysroot holding libostree's lock; unlocked when dropped.
pub(crate) struct Locked(pub(crate) ostree::Sysroot);

impl Drop for Locked {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// libostree's lock on a sysroot, waited for; released when dropped.
pub(crate) struct WaitedLock(Option<ostree::Sysroot>);

impl WaitedLock {
    /// Wait up to `limit` for the lock; without it (a deploy that hangs, a read-only
    /// sysroot) the caller goes on, with the reason printed.
    pub(crate) fn acquire(path: &Path, limit: Duration) -> WaitedLock {
        let s = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
        let start = Instant::now();
        loop {
            match s.try_lock() {
                Ok(true) => return WaitedLock(Some(s)),
                Ok(false) if start.elapsed() < limit => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Ok(false) => {
                    eprintln!(
                        "{} stayed locked for {}s; going on without the lock",
                        path.display(),
                        limit.as_secs()
                    );
                    return WaitedLock(None);
                }
                Err(e) => {
                    eprintln!(
                        "cannot lock {}: {e}; going on without the lock",
                        path.display()
                    );
                    return WaitedLock(None);
                }
            }
        }
    }
}

impl Drop for WaitedLock {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.unlock();
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a commit timestamp.
pub(crate) fn utc(secs: u64) -> String {
    osbuild_core::time::utc(i64::try_from(secs).unwrap_or(i64::MAX))
}
