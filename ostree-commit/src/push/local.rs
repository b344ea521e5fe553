//! The local repository before a push: the refs must exist, and the summary must list
//! them as they are, because the receiver learns the refs only from the summary.

use anyhow::{bail, Context, Result};
use osbuild_core::{gio, ostree, repo};
use std::collections::BTreeMap;
use std::path::Path;

/// Check `refs` exist in the archive repo at `path` (all of its refs when empty), and
/// regenerate the summary if it is missing or does not match the refs. Returns the refs
/// with their commits.
pub(super) fn prepare(path: &Path, refs: &[String]) -> Result<BTreeMap<String, String>> {
    let repo = repo::open_archive(path)?;
    let local = local_refs(&repo)?;
    let missing: Vec<&str> = refs
        .iter()
        .filter(|r| !local.contains_key(r.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} {} not found in {}",
            if missing.len() == 1 { "ref" } else { "refs" },
            missing.join(", "),
            path.display()
        );
    }
    if local.is_empty() {
        bail!("{} has no refs to push", path.display());
    }

    let summary = path.join("summary");
    let fresh = match std::fs::read(&summary) {
        Ok(data) => repo::summary_refs(&data).as_ref() == Some(&local),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", summary.display())),
    };
    if !fresh {
        tracing::info!("regenerating {}", summary.display());
        repo.regenerate_summary(None, gio::Cancellable::NONE)
            .with_context(|| format!("regenerating the summary of {}", path.display()))?;
    }

    Ok(if refs.is_empty() {
        local
    } else {
        local
            .into_iter()
            .filter(|(r, _)| refs.contains(r))
            .collect()
    })
}

/// The repo's own refs (not remotes' or mirrors'), as the summary lists them.
fn local_refs(repo: &ostree::Repo) -> Result<BTreeMap<String, String>> {
    let flags = ostree::RepoListRefsExtFlags::EXCLUDE_REMOTES
        | ostree::RepoListRefsExtFlags::EXCLUDE_MIRRORS;
    Ok(repo
        .list_refs_ext(None, flags, gio::Cancellable::NONE)
        .context("listing the refs")?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit::{commit, CommitOptions};
    use std::fs;

    use osbuild_testing::helpers::stub_bootable_tree as tree;

    #[test]
    fn missing_refs_are_named_and_stale_summaries_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("tree");
        tree(&t);
        let r = dir.path().join("repo");
        let opts = |b: &str| CommitOptions {
            branch: b.into(),
            ..Default::default()
        };
        let a = commit(&r, &t, &opts("a")).unwrap();

        let err = prepare(&r, &["a".into(), "x/y".into(), "z".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("refs x/y, z not found in"), "{err}");
        assert!(err.contains(&r.display().to_string()), "{err}");

        // A ref moved behind the summary's back (as `ostree commit` without
        // --update-summary does) is noticed by content, not by time.
        let summary = r.join("summary");
        fs::write(r.join("refs/heads/b"), format!("{}\n", a.checksum)).unwrap();
        let before = fs::read(&summary).unwrap();
        assert_eq!(repo::summary_refs(&before).unwrap().len(), 1);
        let got = prepare(&r, &["b".into()]).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![("b".to_string(), a.checksum.clone())]
        );
        let after = fs::read(&summary).unwrap();
        assert_eq!(repo::summary_refs(&after).unwrap().len(), 2);

        // Up to date: left alone.
        let mtime = fs::metadata(&summary).unwrap().modified().unwrap();
        prepare(&r, &[]).unwrap();
        assert_eq!(fs::metadata(&summary).unwrap().modified().unwrap(), mtime);

        // Missing or garbage: rewritten.
        fs::write(&summary, b"garbage").unwrap();
        prepare(&r, &[]).unwrap();
        assert_eq!(
            repo::summary_refs(&fs::read(&summary).unwrap()),
            repo::summary_refs(&after)
        );
        fs::remove_file(&summary).unwrap();
        assert_eq!(prepare(&r, &[]).unwrap().len(), 2);
        assert!(summary.is_file());
    }
}
