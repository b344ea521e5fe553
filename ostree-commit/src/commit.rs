//! `osbuild commit`: write a validated tree into an archive repository through libostree.

use crate::layout;
use anyhow::{Context, Result};
use osbuild_core::fsutil::Staging;
use osbuild_core::glib::{self, prelude::*};
use osbuild_core::{gio, ostree, progress::Progress, repo};
use std::path::Path;

/// Options for one commit.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The branch (ref) to move to the new commit.
    pub branch: String,
    /// The commit message's subject line (libostree's default when unset).
    pub subject: Option<String>,
    /// Stored as the commit's `version` metadata, shown by `ostree admin status`.
    pub version: Option<String>,
}

/// The result of a commit.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The new commit's checksum.
    pub checksum: String,
    /// The commit the branch pointed at before, if any.
    pub parent: Option<String>,
    /// The kernel version the tree boots.
    pub kver: String,
}

/// Commit `tree` to `branch` in the archive repository at `repo_path`, creating the
/// repository if it does not exist, then regenerate the summary.
pub fn commit(repo_path: &Path, tree: &Path, opts: &CommitOptions) -> Result<Commit> {
    validate_ref(&opts.branch)?;
    let info = layout::validate(tree)?;

    if repo_path.exists() {
        let repo = repo::open_archive(repo_path)?;
        write(&repo, tree, opts, &info.kver)
    } else {
        // A new repository appears only once it holds the commit.
        let staging = Staging::new(repo_path)?;
        let repo = repo::create_archive(staging.path())?;
        let commit = write(&repo, tree, opts, &info.kver)?;
        drop(repo);
        staging.commit()?;
        Ok(commit)
    }
}

/// Refuse ref names that libostree would reject, with the name in the message.
fn validate_ref(branch: &str) -> Result<()> {
    if branch.is_empty() {
        anyhow::bail!("--branch must not be empty");
    }
    ostree::validate_rev(branch).map_err(|e| anyhow::anyhow!("invalid branch name {branch:?}: {e}"))
}

/// SOURCE_DATE_EPOCH when it is set, else now; seconds since 1970.
fn commit_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => epoch.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH {epoch:?} is not a number of seconds since 1970: fix or unset it")
        }),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs()),
    }
}

fn write(repo: &ostree::Repo, tree: &Path, opts: &CommitOptions, kver: &str) -> Result<Commit> {
    let cancellable = gio::Cancellable::NONE;
    let parent = repo::resolve(repo, &opts.branch)?;
    let progress = Progress::spinner(format!("Committing {} to {}", tree.display(), opts.branch));

    repo.prepare_transaction(cancellable)
        .context("starting a repository transaction")?;
    let result = (|| -> Result<String> {
        let mtree = ostree::MutableTree::new();
        // ostree.sizes in the commit: `osbuild admin upgrade --check` sums the sizes of
        // the objects a device lacks to say how much an update downloads.
        let sizes =
            ostree::RepoCommitModifier::new(ostree::RepoCommitModifierFlags::GENERATE_SIZES, None);
        repo.write_directory_to_mtree(
            &gio::File::for_path(tree),
            &mtree,
            Some(&sizes),
            cancellable,
        )
        .with_context(|| format!("writing {} into the repository", tree.display()))?;
        let root = repo
            .write_mtree(&mtree, cancellable)
            .context("writing the root directory")?
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;

        let meta = glib::VariantDict::new(None);
        if let Some(v) = &opts.version {
            meta.insert("version", v.as_str());
        }
        // The same keys `ostree commit --bootable` writes, for tools that look for them.
        meta.insert("ostree.bootable", true);
        meta.insert("ostree.linux", kver);
        // As `ostree commit` does: a client pulling a ref can check that the commit was
        // made for it, which stops a server from passing off one branch as another.
        meta.insert("ostree.ref-binding", vec![opts.branch.clone()]);
        let meta = meta.end();

        // The commit's timestamp is part of its checksum: SOURCE_DATE_EPOCH, when set,
        // makes two builds of the same tree the same commit.
        let checksum = repo
            .write_commit_with_time(
                parent.as_deref(),
                opts.subject.as_deref(),
                None,
                Some(&meta),
                &root,
                commit_time()?,
                cancellable,
            )
            .context("writing the commit object")?;
        repo.transaction_set_ref(None, &opts.branch, Some(checksum.as_str()));
        repo.commit_transaction(cancellable)
            .context("completing the repository transaction")?;
        Ok(checksum.to_string())
    })();
    let checksum = match result {
        Ok(c) => c,
        Err(e) => {
            let _ = repo.abort_transaction(cancellable);
            return Err(e);
        }
    };
    repo.regenerate_summary(None, cancellable)
        .context("regenerating the summary")?;
    progress.finish(format!("Committed {checksum} to {}", opts.branch));
    Ok(Commit {
        checksum,
        parent,
        kver: kver.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use osbuild_testing::helpers::stub_bootable_tree as tiny_tree;

    #[test]
    fn commits_create_the_repo_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        tiny_tree(&tree);
        let repo_path = dir.path().join("repo");
        let opts = CommitOptions {
            branch: "test/x86_64".into(),
            subject: Some("first".into()),
            version: Some("1".into()),
        };
        let first = commit(&repo_path, &tree, &opts).unwrap();
        assert_eq!(first.parent, None);
        assert_eq!(first.kver, "6.1.0-test");
        fs::write(tree.join("usr/lib/added"), "new").unwrap();
        let second = commit(&repo_path, &tree, &opts).unwrap();
        assert_eq!(second.parent.as_deref(), Some(first.checksum.as_str()));

        let repo = repo::open_archive(&repo_path).unwrap();
        assert_eq!(
            repo::resolve(&repo, "test/x86_64").unwrap().as_deref(),
            Some(second.checksum.as_str())
        );
        let (commit_v, _) = repo.load_commit(&second.checksum).unwrap();
        let meta = glib::VariantDict::new(Some(&commit_v.child_value(0)));
        assert_eq!(
            meta.lookup::<String>("version").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            meta.lookup::<Vec<String>>("ostree.ref-binding").unwrap(),
            Some(vec!["test/x86_64".to_string()])
        );
        assert!(repo_path.join("summary").is_file());
        // Every object's size is recorded, the added file's among them.
        let sizes = ostree::commit_get_object_sizes(&commit_v).unwrap();
        assert!(sizes.len() >= 3, "{} entries", sizes.len());
        assert!(
            sizes.iter().any(|e| e.unpacked() == 3),
            "no entry for usr/lib/added"
        );
    }

    #[test]
    fn bad_tree_leaves_no_repo() {
        let dir = tempfile::tempdir().unwrap();
        let repo_path = dir.path().join("repo");
        let opts = CommitOptions {
            branch: "b".into(),
            ..Default::default()
        };
        let err = commit(&repo_path, &dir.path().join("missing"), &opts).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!repo_path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_branch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        tiny_tree(&tree);
        let opts = CommitOptions {
            branch: "bad ref".into(),
            ..Default::default()
        };
        let err = commit(&dir.path().join("repo"), &tree, &opts).unwrap_err();
        assert!(err.to_string().contains("bad ref"), "{err}");
    }
}
