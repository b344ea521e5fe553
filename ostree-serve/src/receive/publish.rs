//! The checks before pulled commits are published (osbuild_core::repo::publish): a ref
//! only moves forward.

use anyhow::{Context, Result};
use osbuild_core::ostree;

/// Refuse anything but a fast-forward to a newer commit, unless forced.
pub(super) fn check_forward(
    repo: &ostree::Repo,
    name: &str,
    current: &str,
    new: &str,
    force: bool,
) -> Result<()> {
    let (new_commit, _) = repo
        .load_commit(new)
        .with_context(|| format!("loading commit {new}"))?;
    let (cur_commit, _) = repo
        .load_commit(current)
        .with_context(|| format!("loading commit {current}"))?;
    let mut descends = false;
    let mut parent = ostree::commit_get_parent(&new_commit);
    // Bounded: a parent chain is finite, but a client controls it.
    for _ in 0..100_000 {
        match parent {
            Some(p) if p.as_str() == current => {
                descends = true;
                break;
            }
            // A parent that was not pulled ends the chain: it cannot lead to `current`.
            Some(p) => match repo.load_commit(&p) {
                Ok((c, _)) => parent = ostree::commit_get_parent(&c),
                Err(_) => break,
            },
            None => break,
        }
    }
    if !descends && !force {
        anyhow::bail!(
            "{name}: not a fast-forward: {new} does not descend from the current head {current} \
             (another push may have won; pull, rebase your commit on it and push again)"
        );
    }
    let (t_new, t_cur) = (
        ostree::commit_get_timestamp(&new_commit),
        ostree::commit_get_timestamp(&cur_commit),
    );
    if t_new <= t_cur && !force {
        anyhow::bail!("{name}: commit {new} is not newer than the current head {current}");
    }
    Ok(())
}
