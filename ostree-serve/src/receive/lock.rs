//! The per-repository publication lock: one receive at a time moves refs and writes the
//! summary.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

/// Held while refs and the summary are published; released on drop.
#[derive(Debug)]
pub(crate) struct RepoLock(File);

/// The lock file, beside the repository's own.
const LOCK_FILE: &str = ".osbuild-publish.lock";

impl RepoLock {
    /// Wait for and take the lock of the repository at `repo`.
    pub(super) fn acquire(repo: &Path) -> Result<Self> {
        let path = repo.join(LOCK_FILE);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(RepoLock(f))
    }

    /// For a reader that needs refs, summary and signature from one publication: wait
    /// until no receive is publishing and hold it off. `None` when no receive ever ran
    /// here (no lock file) or the file cannot be opened (a read-only repository, where no
    /// receive can publish either).
    pub(crate) fn shared(repo: &Path) -> Option<Self> {
        let f = File::open(repo.join(LOCK_FILE)).ok()?;
        f.lock_shared().ok()?;
        Some(RepoLock(f))
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; this only makes it prompt.
        if let Err(e) = self.0.unlock() {
            tracing::warn!("releasing the publication lock: {e}");
        }
    }
}
