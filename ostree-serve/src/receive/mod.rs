//! Receiving pushed commits: the `ostree-receive` side of the ostree-push protocol.
//!
//! Unlike ostree-push's receiver, which re-commits what it pulled, this keeps the client's
//! commit checksums (and so its detached signatures). A ref only moves forward: the new
//! commit must descend from the current head and be newer. Publication runs under one lock
//! per repository, in the order objects, static delta, ref, summary, so that a client never
//! sees a ref or summary naming something that is missing.

mod args;
pub(crate) mod lock;
mod publish;
mod pull;
mod status;

pub use args::{is_receiver, ReceiveArgs, UsageError, COMMANDS};
pub use status::ExitStatus;

use anyhow::{Context, Result};
use osbuild_core::ostree;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the server allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Refuse commits without a valid GPG signature from `trusted_keyring`.
    pub require_signature: bool,
    /// The keyring (binary or armored public keys) that signatures must come from.
    pub trusted_keyring: Option<PathBuf>,
    /// Honour a client's `--force` (non-fast-forward or older commits).
    pub allow_force: bool,
}

/// One ref a receive moves (osbuild_core's, shared with `osbuild commit`).
pub use osbuild_core::repo::RefMove as RefUpdate;

/// Receive the pushed refs from `args.url` into the archive repository at `repo_path`.
/// Messages for the pusher go to `log`.
pub fn receive(
    repo_path: &Path,
    args: &ReceiveArgs,
    policy: &Policy,
    log: &mut dyn Write,
) -> Result<Vec<RefUpdate>> {
    let repo = osbuild_core::repo::open_archive(repo_path)?;
    if args.force && !policy.allow_force {
        anyhow::bail!("--force is not allowed by this server");
    }
    let remote_refs = pull::remote_refs(&args.url, &args.refs, pull::TIMEOUTS)?;
    let mut wanted = BTreeMap::new();
    for (name, rev) in remote_refs {
        let current = osbuild_core::repo::resolve(&repo, &name)?;
        if current.as_deref() == Some(rev.as_str()) && !args.force {
            say(log, args, &format!("{name}: already at {rev}"));
            continue;
        }
        wanted.insert(name, (current, rev));
    }
    if wanted.is_empty() {
        say(log, args, "No refs need updating");
        return Ok(Vec::new());
    }

    // Objects first. Each pull is a libostree transaction: nothing is visible until it
    // completes, and an interrupted one leaves only libostree's staging directory, which
    // the next pull resumes from. Pulling by checksum writes no ref.
    let revs: Vec<String> = wanted.values().map(|(_, r)| r.clone()).collect();
    // Inside the repo's tmp/, where libostree expires whatever a killed receiver left.
    let tmp = repo_path.join("tmp");
    let remotes = tempfile::Builder::new()
        .prefix("osbuild-receive-")
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a temporary remote directory in {}", tmp.display()))?;
    let pull_repo = pull::open_with_push_remote(repo_path, remotes.path(), &args.url, policy)?;
    // The ancestry check needs the commit objects between the current head and the pushed
    // one: only commit objects, not their trees.
    // Signatures are required of the pushed commits, not of every ancestor.
    pull::pull(
        &pull_repo,
        &revs,
        ostree::RepoPullFlags::COMMIT_ONLY,
        -1,
        Some(false),
    )
    .and_then(|()| pull::pull(&pull_repo, &revs, ostree::RepoPullFlags::NONE, 0, None))
    .with_context(|| format!("pulling {} from {}", revs.join(" "), args.url))?;
    if policy.require_signature {
        for rev in &revs {
            pull::verify_signature(&repo, rev, policy.trusted_keyring.as_deref())?;
        }
    }

    let _lock = lock::RepoLock::acquire(repo_path)?;
    // Heads may have moved while we pulled: check against what is current now.
    let mut updates = Vec::new();
    for (name, (_, rev)) in &wanted {
        let current = osbuild_core::repo::resolve(&repo, name)?;
        if let Some(cur) = &current {
            if cur == rev {
                continue;
            }
            publish::check_forward(&repo, name, cur, rev, args.force)?;
        }
        updates.push(RefUpdate {
            name: name.clone(),
            old: current,
            new: rev.clone(),
        });
    }
    for u in &updates {
        say(
            log,
            args,
            &format!(
                "{}{}: {} -> {}",
                if args.dry_run { "would update " } else { "" },
                u.name,
                u.old.as_deref().unwrap_or("(new)"),
                u.new
            ),
        );
    }
    if args.dry_run {
        return Ok(updates);
    }
    let opts = osbuild_core::repo::PublishOptions {
        summary: args.update_summary,
        ..Default::default()
    };
    osbuild_core::repo::publish(&repo, &updates, &opts, &mut |msg| say(log, args, msg))?;
    Ok(updates)
}

fn say(log: &mut dyn Write, args: &ReceiveArgs, msg: &str) {
    if !args.quiet {
        // The pusher may have gone away; the receive goes on regardless.
        let _ = writeln!(log, "{msg}");
    }
}

/// Refuse a push that names another repository than the served one.
pub(crate) fn check_served(requested: &str, served: &Path) -> Result<()> {
    let same = match (Path::new(requested).canonicalize(), served.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        anyhow::bail!(
            "repository {requested} is not served here; push to {}",
            served.display()
        );
    }
    Ok(())
}

/// Run one receive as a command does (`osbuild receive`, `ostree-receive-1`), its
/// arguments already parsed: check the repository against `served` when the server
/// restricts it, report to `log`, and return the protocol's exit status.
pub fn run(
    args: &ReceiveArgs,
    served: Option<&Path>,
    policy: &Policy,
    log: &mut dyn Write,
) -> ExitStatus {
    let result = served
        .map_or(Ok(()), |served| check_served(&args.repo, served))
        .and_then(|()| receive(Path::new(&args.repo), args, policy, log));
    match result {
        Ok(_) => ExitStatus::Ok,
        Err(e) => {
            // The pusher may have gone away; the status still tells.
            let _ = writeln!(log, "error: {e:#}");
            ExitStatus::Error
        }
    }
}
