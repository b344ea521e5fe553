//! `osbuild admin upgrade`: pull the deployment's ref and stage it (deploy it, on a
//! sysroot that is not booted), through libostree's SysrootUpgrader, as `ostree admin
//! upgrade` does; `--check` fetches only the commit object and says what would come.

use crate::status::{self, Deployment};
use anyhow::{Context, Result};
use osbuild_core::{gio, glib, ostree};
use std::path::Path;

/// What an upgrade found or did.
#[derive(Debug, Clone)]
pub enum Upgrade {
    /// The ref names the deployed commit.
    UpToDate {
        /// The deployment's refspec.
        refspec: String,
        /// The commit both name.
        checksum: String,
    },
    /// `--check`: a newer commit is on the remote; nothing was deployed.
    Available(Update),
    /// Staged: it boots after the next reboot (written at shutdown).
    Staged(Update),
    /// Deployed now and made the default (a sysroot that is not booted).
    Deployed(Update),
}

/// The commit an upgrade goes to.
#[derive(Debug, Clone)]
pub struct Update {
    /// The deployment's refspec.
    pub refspec: String,
    /// The deployed commit.
    pub from: String,
    /// The new commit.
    pub to: String,
    /// Its `version`.
    pub version: Option<String>,
    /// Its timestamp, seconds since 1970.
    pub timestamp: u64,
    /// Bytes to download: the archived size of the new commit's objects not in the
    /// local repository, from the commit's `ostree.sizes`; None when it has none.
    pub download: Option<u64>,
}

/// Upgrade the sysroot at `path` (`/` on a device): with `check`, only fetch the new
/// commit object and report.
pub fn upgrade(path: &Path, check: bool) -> Result<Upgrade> {
    let locked = crate::sysroot::open_locked(path)?;
    let sysroot = &locked.0;
    let current = current_deployment(sysroot, path)?;
    let refspec = current.refspec.clone().with_context(|| {
        format!(
            "deployment {} has no origin refspec to upgrade from: deploy it from a remote ref",
            current.checksum
        )
    })?;
    let (remote, branch) = ostree::parse_refspec(&refspec)
        .with_context(|| format!("the origin refspec {refspec:?} is not valid"))?;
    let remote = remote.with_context(|| {
        format!("the origin refspec {refspec:?} names no remote: it cannot be upgraded")
    })?;
    let repo = sysroot.repo();
    let url = repo
        .remote_get_url(&remote)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| "no URL configured".into());
    let pulling = || format!("pulling {branch} from remote {remote} ({url})");

    if check {
        repo.pull(
            &remote,
            &[branch.as_str()],
            ostree::RepoPullFlags::COMMIT_ONLY,
            None,
            gio::Cancellable::NONE,
        )
        .with_context(pulling)?;
        let to = pulled(&repo, &refspec)?;
        if to == current.checksum {
            return Ok(Upgrade::UpToDate {
                refspec,
                checksum: to,
            });
        }
        ostree::SysrootUpgrader::check_timestamps(&repo, &current.checksum, &to)
            .with_context(|| format!("{refspec} on the remote is not newer than the deployment"))?;
        return Ok(Upgrade::Available(update(&repo, refspec, &current, to)?));
    }

    let stage = sysroot.is_booted();
    let flags = if stage {
        ostree::SysrootUpgraderFlags::STAGE
    } else {
        ostree::SysrootUpgraderFlags::empty()
    };
    let upgrader = ostree::SysrootUpgrader::for_os_with_flags(
        sysroot,
        Some(&current.osname),
        flags,
        gio::Cancellable::NONE,
    )
    .context("preparing the upgrade")?;
    let changed = upgrader
        .pull(
            ostree::RepoPullFlags::NONE,
            ostree::SysrootUpgraderPullFlags::NONE,
            None,
            gio::Cancellable::NONE,
        )
        .with_context(pulling)?;
    let to = pulled(&repo, &refspec)?;
    if !changed || to == current.checksum {
        return Ok(Upgrade::UpToDate {
            refspec,
            checksum: to,
        });
    }
    let update = update(&repo, refspec, &current, to)?;
    // libostree keeps the deployment upgraded from (booted, or the default) and pinned
    // ones; the rest is pruned when the new list is written.
    let st = status::of(sysroot);
    let kept: Vec<&Deployment> = st
        .deployments
        .iter()
        .filter(|d| d.pinned || (d.checksum == current.checksum && d.serial == current.serial))
        .collect();
    crate::space::check(path, &repo, &update.to, &st.deployments, &kept)?;
    upgrader
        .deploy(gio::Cancellable::NONE)
        .with_context(|| format!("deploying {}", update.to))?;
    drop(locked);
    if stage {
        Ok(Upgrade::Staged(update))
    } else {
        crate::rollback::refresh_menu(path)?;
        Ok(Upgrade::Deployed(update))
    }
}

/// The commit `refspec` names after a pull.
fn pulled(repo: &ostree::Repo, refspec: &str) -> Result<String> {
    Ok(repo
        .resolve_rev(refspec, false)
        .with_context(|| format!("resolving {refspec}"))?
        .with_context(|| format!("{refspec} resolves to nothing after the pull"))?
        .to_string())
}

/// The deployment upgrades start from: the booted one, else the default.
fn current_deployment(sysroot: &ostree::Sysroot, path: &Path) -> Result<Deployment> {
    let st = status::of(sysroot);
    st.booted()
        .or_else(|| {
            st.deployments
                .iter()
                .find(|d| d.role != status::Role::Staged)
        })
        .cloned()
        .with_context(|| format!("{} has no deployment to upgrade", path.display()))
}

/// The facts about commit `to`, which is in the repository (at least its commit object).
fn update(repo: &ostree::Repo, refspec: String, from: &Deployment, to: String) -> Result<Update> {
    let (commit, _) = repo
        .load_commit(&to)
        .with_context(|| format!("loading commit {to}"))?;
    let version = glib::VariantDict::new(Some(&commit.child_value(0)))
        .lookup::<String>("version")
        .ok()
        .flatten();
    let timestamp = ostree::commit_get_timestamp(&commit);
    Ok(Update {
        refspec,
        from: from.checksum.clone(),
        version,
        timestamp,
        download: download_size(repo, &commit)?,
        to,
    })
}

/// The archived bytes of the commit's objects that the repository lacks, from its
/// `ostree.sizes` metadata (written by `osbuild commit`); None when it has none.
fn download_size(repo: &ostree::Repo, commit: &glib::Variant) -> Result<Option<u64>> {
    let has_sizes = glib::VariantDict::new(Some(&commit.child_value(0))).contains("ostree.sizes");
    if !has_sizes {
        return Ok(None);
    }
    let entries =
        ostree::commit_get_object_sizes(commit).context("reading the commit's ostree.sizes")?;
    let mut total = 0u64;
    for e in entries {
        let present = repo
            .has_object(e.objtype(), &e.checksum(), gio::Cancellable::NONE)
            .context("looking up an object in the local repository")?;
        if !present {
            total += e.archived();
        }
    }
    Ok(Some(total))
}
