//! The per-repository publication lock: one receive at a time moves refs and writes the
//! summary.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

/// Held while refs and the summary are published; released on drop.
#[derive(Debug)]
pub(super) struct RepoLock(File);

impl RepoLock {
    /// Wait for and take the lock of the repository at `repo`.
    pub(super) fn acquire(repo: &Path) -> Result<Self> {
        let path = repo.join(".osbuild-publish.lock");
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
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; this only makes it prompt.
        if let Err(e) = self.0.unlock() {
            tracing::warn!("releasing the publication lock: {e}");
        }
    }
}
