//! `osbuild admin rollback`: the previous deployment becomes the default.
//!
//! libostree 2022.7 has no set-default, so this reorders the deployment list and writes
//! it back through the Sysroot API, as rpm-ostree's rollback does: the boot loader
//! entries, `/boot/loader` swap and cleanup are libostree's; the menus osbuild keeps
//! (GRUB's, systemd-boot's on the ESP) follow at once through [`crate::bootmenu::refresh`].

use crate::status::{self, Deployment, Status};
use anyhow::{Context, Result};
use osbuild_core::gio;
use std::path::Path;

/// What a rollback did.
#[derive(Debug, Clone)]
pub struct Rollback {
    /// The deployment that was the default.
    pub from: Deployment,
    /// The deployment that is the default now.
    pub to: Deployment,
    /// A staged deployment that was dropped (it would have booted next).
    pub dropped_staged: Option<Deployment>,
    /// The sysroot afterwards.
    pub status: Status,
}

/// Make the previous deployment the default of the sysroot at `path` (`/` on a device).
///
/// On a booted system "previous" is the deployment after the booted one; when a
/// deployment is pending ahead of the booted one, the booted one becomes the default
/// again (the pending deploy is undone). A staged deployment is dropped. Unbooted (an
/// image's sysroot), the second deployment becomes the first.
pub fn rollback(path: &Path) -> Result<Rollback> {
    let locked = crate::sysroot::open_locked(path)?;
    let sysroot = &locked.0;
    let before = status::of(sysroot);
    let all = sysroot.deployments();
    let dropped_staged = before
        .deployments
        .iter()
        .find(|d| d.role == status::Role::Staged)
        .cloned();
    // The list without the staged deployment: writing it unstages it.
    let (kept, kept_status): (Vec<_>, Vec<_>) = all
        .iter()
        .zip(&before.deployments)
        .filter(|(_, s)| s.role != status::Role::Staged)
        .unzip();
    let booted = kept_status.iter().position(|d| d.is_booted());
    let target = match booted {
        Some(b) if b > 0 => b,
        Some(b) => b + 1,
        None => 1,
    };
    let Some(to) = kept_status.get(target).map(|d| (*d).clone()) else {
        anyhow::bail!(
            "there is no previous deployment to roll back to: {} holds only {}",
            path.display(),
            match kept_status.first() {
                Some(d) => format!("{} ({})", d.checksum, describe(d)),
                None => "no deployment".to_string(),
            }
        );
    };
    let from = match (&dropped_staged, kept_status.first()) {
        (Some(s), _) => s.clone(),
        (None, Some(d)) => (*d).clone(),
        (None, None) => unreachable!("a target was found, so the list is not empty"),
    };
    let mut order: Vec<_> = kept.into_iter().cloned().collect();
    let chosen = order.remove(target);
    order.insert(0, chosen);
    sysroot
        .write_deployments(&order, gio::Cancellable::NONE)
        .with_context(|| format!("writing the deployments of {}", path.display()))?;
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("reloading the sysroot at {}", path.display()))?;
    let status = status::of(sysroot);
    drop(locked);
    refresh_menu(path)?;
    Ok(Rollback {
        from,
        to,
        dropped_staged,
        status,
    })
}

/// After libostree has written the entries: the boot menus osbuild keeps, now rather
/// than when the path unit gets to it (the physical root is /sysroot on a device).
/// An image's sysroot (not `/`) gets its menu at its next boot: osbuild-boot-menu runs at
/// every boot, and on the build host the image's ESP is not a device to mount.
pub(crate) fn refresh_menu(path: &Path) -> Result<()> {
    if path != Path::new("/") {
        return Ok(());
    }
    crate::bootmenu::refresh(Path::new(crate::sysroot::PHYSICAL_ROOT))
        .map(|_| ())
        .context("updating the boot menu")
}

/// `version 2, 2026-12-02 05:00:00 UTC`, or what of it is known.
pub(crate) fn describe(d: &Deployment) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &d.version {
        parts.push(format!("version {v}"));
    }
    if let Some(t) = d.timestamp {
        parts.push(crate::sysroot::utc(t));
    }
    if parts.is_empty() {
        "no version".to_string()
    } else {
        parts.join(", ")
    }
}
