//! The one way to open or create an OSTree repository.

use anyhow::{Context, Result};
use ostree::gio;
use std::path::Path;

/// Open an existing repository, naming the path if it is not one.
pub fn open(path: &Path) -> Result<ostree::Repo> {
    if !path.join("config").is_file() || !path.join("objects").is_dir() {
        anyhow::bail!(
            "{} is not an OSTree repository (no config or objects/); create one with `osbuild commit`",
            path.display()
        );
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repository {}", path.display()))?;
    Ok(repo)
}

/// Open a repository and require archive mode, the only mode that can be served over HTTP.
pub fn open_archive(path: &Path) -> Result<ostree::Repo> {
    let repo = open(path)?;
    if repo.mode() != ostree::RepoMode::Archive {
        anyhow::bail!(
            "{} is a {:?}-mode repository; serving and committing need archive mode",
            path.display(),
            repo.mode()
        );
    }
    Ok(repo)
}

/// Create a new archive-mode repository at `path`, which must not exist yet.
pub fn create_archive(path: &Path) -> Result<ostree::Repo> {
    std::fs::create_dir(path)
        .with_context(|| format!("creating repository directory {}", path.display()))?;
    let repo = ostree::Repo::new_for_path(path);
    repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
        .with_context(|| format!("creating archive repository {}", path.display()))?;
    Ok(repo)
}

/// Resolve a ref to its commit checksum, if the ref exists.
pub fn resolve(repo: &ostree::Repo, refspec: &str) -> Result<Option<String>> {
    Ok(repo
        .resolve_rev(refspec, true)
        .with_context(|| format!("resolving ref {refspec}"))?
        .map(|s| s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        create_archive(&path).unwrap();
        let repo = open_archive(&path).unwrap();
        assert_eq!(resolve(&repo, "nothing").unwrap(), None);
    }

    #[test]
    fn open_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("not an OSTree repository"), "{err}");
    }
}
