//! Making pulled commits visible: the checks that a ref only moves forward, then a static
//! delta, the refs and the summary, in that order, so that a client never sees a ref or a
//! summary naming something missing.

use super::RefUpdate;
use anyhow::{Context, Result};
use osbuild_core::glib;
use osbuild_core::{gio, ostree};

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

/// Publish `updates`: deltas from the old heads (best effort, reported through `warn`),
/// the refs, then the summary.
pub(super) fn publish(
    repo: &ostree::Repo,
    updates: &[RefUpdate],
    update_summary: bool,
    warn: &mut dyn FnMut(&str),
) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    for u in updates {
        if let Some(old) = &u.old {
            // A delta from the old head lets devices upgrade with one download; failing to
            // make one is not a reason to refuse the push.
            let params = glib::VariantDict::new(None);
            params.insert("inline-parts", true);
            if let Err(e) = repo.static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(old),
                &u.new,
                None,
                Some(&params.end()),
                cancellable,
            ) {
                warn(&format!("warning: no static delta {old}-{}: {e}", u.new));
            }
        }
    }
    for u in updates {
        repo.set_ref_immediate(None, &u.name, Some(&u.new), cancellable)
            .with_context(|| format!("updating ref {} to {}", u.name, u.new))?;
    }
    if update_summary && !updates.is_empty() {
        // libostree writes the summary to a temporary file and renames it into place.
        repo.regenerate_summary(None, cancellable)
            .context("regenerating the summary")?;
    }
    Ok(())
}
