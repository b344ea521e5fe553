//! Filesystem helpers: "write to a temp path, rename at the end", and read-ahead hints.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A directory or file next to its final path that is removed on drop unless committed.
/// Living in the same directory makes the final rename atomic.
#[derive(Debug)]
pub struct Staging {
    temp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Staging {
    /// Reserve a staging path beside `dest`. Fails if `dest`'s parent does not exist.
    pub fn new(dest: &Path) -> Result<Self> {
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            anyhow::bail!(
                "the directory {} for {} does not exist; create it first",
                parent.display(),
                dest.display()
            );
        }
        let name = dest
            .file_name()
            .with_context(|| format!("{} has no file name", dest.display()))?
            .to_string_lossy()
            .into_owned();
        let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if temp.exists() {
            remove_all(&temp)?;
        }
        Ok(Staging {
            temp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        &self.temp
    }

    /// Atomically move the finished result into place.
    pub fn commit(mut self) -> Result<PathBuf> {
        std::fs::rename(&self.temp, &self.dest).with_context(|| {
            format!(
                "moving {} into place at {}",
                self.temp.display(),
                self.dest.display()
            )
        })?;
        self.done = true;
        Ok(self.dest.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done && self.temp.exists() {
            if let Err(e) = remove_all(&self.temp) {
                tracing::warn!("could not remove {}: {e:#}", self.temp.display());
            }
        }
    }
}

/// Create the directory `path` goes in, and its parents.
pub fn create_parent(path: &Path) -> Result<()> {
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

/// Remove a file or a directory tree.
pub fn remove_all(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
    .with_context(|| format!("removing {}", path.display()))
}

/// Ask the kernel to read the first `len` bytes of the file at `path` (all of it when
/// `len` is 0) into the page cache, without waiting for the disk. A hint: a file that
/// cannot be opened is skipped, and whoever reads it later gets the error.
pub fn read_ahead(path: &Path, len: u64) {
    if let Ok(file) = std::fs::File::open(path) {
        let _ = rustix::fs::fadvise(
            &file,
            0,
            std::num::NonZeroU64::new(len),
            rustix::fs::Advice::WillNeed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_staging_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        {
            let s = Staging::new(&dest).unwrap();
            std::fs::create_dir(s.path()).unwrap();
            std::fs::write(s.path().join("f"), "x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn committed_staging_is_renamed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let s = Staging::new(&dest).unwrap();
        std::fs::write(s.path(), "x").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "x");
    }

    #[test]
    fn missing_parent_is_named() {
        let err = Staging::new(Path::new("/nonexistent-dir/out.img"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent-dir"), "{err}");
    }
}
