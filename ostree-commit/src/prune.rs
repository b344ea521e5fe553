//! `osbuild prune` and `osbuild commit --keep N`: keep the last N commits of each branch
//! and the static deltas between them; delete older commits, deltas and the objects
//! nothing kept reaches. Then the summary (re-signed when signing is configured).
//!
//! libostree 2022.7's Rust bindings lack `prune_from_reachable`, so the old commits are
//! deleted first and `prune` then removes what no remaining commit reaches; a commit that
//! any other branch still needs is never deleted. Deltas are deleted with the `ostree`
//! CLI (libostree has no public call for one delta).

use anyhow::{Context, Result};
use osbuild_core::{cmd, gio, ostree, repo};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Commits deleted.
    pub commits: usize,
    /// Objects deleted (commits' trees and files no kept commit reaches).
    pub objects: u32,
    /// Bytes freed by those objects.
    pub bytes: u64,
    /// Static deltas deleted.
    pub deltas: usize,
}

impl std::fmt::Display for Pruned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Pruned {} commits, {} objects ({}) and {} static deltas",
            self.commits,
            self.objects,
            osbuild_core::progress::human_bytes(self.bytes),
            self.deltas
        )
    }
}

/// Keep the last `keep` commits of `only` (or of every branch), in the archive repository
/// at `repo_path`; re-sign the summary with `sign` when given.
pub fn prune(
    repo_path: &Path,
    keep: usize,
    only: Option<&str>,
    sign: Option<&crate::Sign>,
) -> Result<Pruned> {
    anyhow::ensure!(
        keep >= 1,
        "--keep 0 would delete every commit, the branch heads too: keep at least 1"
    );
    let repo = repo::open_archive(repo_path)?;
    let refs = repo
        .list_refs(None, gio::Cancellable::NONE)
        .context("listing the repository's refs")?;
    if let Some(r) = only {
        anyhow::ensure!(
            refs.contains_key(r),
            "no ref {r} in {}: `ostree refs --repo {}` lists them",
            repo_path.display(),
            repo_path.display()
        );
    }
    let mut needed = BTreeSet::new();
    let mut doomed = BTreeSet::new();
    for (name, head) in &refs {
        let chain = repo::history(&repo, head);
        let cut = if only.is_none_or(|o| o == name) {
            keep.min(chain.len())
        } else {
            chain.len()
        };
        needed.extend(chain[..cut].iter().cloned());
        doomed.extend(chain[cut..].iter().cloned());
    }
    let doomed: Vec<String> = doomed.difference(&needed).cloned().collect();
    let delta_names = || {
        repo.list_static_delta_names(gio::Cancellable::NONE)
            .context("listing static deltas")
    };
    let deltas_before = delta_names()?.len();
    for c in &doomed {
        repo.delete_object(ostree::ObjectType::Commit, c, gio::Cancellable::NONE)
            .with_context(|| format!("deleting commit {c}"))?;
    }
    // Every remaining commit's own tree (depth 0): what the deleted ones alone reached goes.
    let (_, objects, bytes) = repo
        .prune(ostree::RepoPruneFlags::NONE, 0, gio::Cancellable::NONE)
        .context("pruning unreachable objects")?;
    // Deltas to or from a commit that is gone (libostree's prune takes those to one).
    for name in delta_names()? {
        let (from, to) = repo::delta_ends(&name);
        let gone = |c: &str| repo.load_commit(c).is_err();
        if gone(to) || from.is_some_and(gone) {
            cmd::run(
                Command::new("ostree")
                    .args(["static-delta", "delete"])
                    .arg(format!("--repo={}", repo_path.display()))
                    .arg(name.as_str()),
            )
            .with_context(|| format!("deleting static delta {name}"))?;
        }
    }
    let deltas = deltas_before.saturating_sub(delta_names()?.len());
    repo::write_summary(
        &repo,
        sign.map(|s| (s.key_ids.clone(), s.homedir.clone()))
            .as_ref(),
    )?;
    Ok(Pruned {
        commits: doomed.len(),
        objects: u32::try_from(objects).unwrap_or(0),
        bytes,
        deltas,
    })
}
