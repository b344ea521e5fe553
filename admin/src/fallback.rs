//! Automatic fallback after a bad update.
//!
//! When a deploy makes a new deployment the default, it goes on trial: GRUB's menu
//! (crate::bootmenu) counts its boots down in the environment block, and after
//! [`configured_tries`] boots that never got marked good it boots the previous
//! deployment. A boot is good when every health check passes (crate::health);
//! `osbuild-boot-good.service` then ends the trial ([`mark_good`]), or, on a fallback
//! boot, makes the running deployment the default and records why ([`Record`]). A
//! health check that fails on a deployment on trial reboots it, which takes a try.
//!
//! syslinux cannot count: there a failed health check on a deployment that never passed
//! them rolls back from userspace and reboots; a failure before userspace is not caught.
//!
//! A device never loops between two bad deployments: once a fallback has booted, the
//! counter stays at 0 and GRUB keeps booting the fallback, which is then kept even when
//! its own checks fail (status says so).

use crate::{grubenv, status};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The environment variable holding the tries left.
pub const TRIES_VAR: &str = "osbuild_tries";
/// The environment variable naming the deployment on trial (`CHECKSUM.SERIAL`).
pub const TRYING_VAR: &str = "osbuild_trying";
/// Tries when nothing is configured.
pub const DEFAULT_TRIES: u32 = 3;
/// The most tries GRUB's countdown handles.
pub const MAX_TRIES: u32 = 9;
/// Where the tries may be configured (a number), the device's file first.
pub const TRIES_FILES: [&str; 2] = ["etc/osbuild/boot-tries", "usr/lib/osbuild/boot-tries"];
/// What the device remembers across deployments (in /var, which they share).
pub const RECORD: &str = "var/lib/osbuild/boot.json";

/// The device's memory of its boots.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
pub struct Record {
    /// The last deployment (`CHECKSUM.SERIAL`) whose boot passed its health checks.
    pub last_good: Option<String>,
    /// The last automatic fallback, if any.
    pub fallback: Option<Fallback>,
}

/// An automatic fallback.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq, Eq)]
pub struct Fallback {
    /// The deployment that failed its tries.
    pub failed: String,
    /// The deployment that booted instead and became the default.
    pub booted: String,
    /// When, seconds since 1970.
    pub at: u64,
}

impl Record {
    /// The record under `root` (`/` on a device); empty when there is none.
    pub fn load(root: &Path) -> Result<Record> {
        let path = root.join(RECORD);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("reading {}: not osbuild's boot record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn save(&self, root: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).context("writing the boot record")?;
        crate::durable::replace(&root.join(RECORD), |f| {
            std::io::Write::write_all(f, text.as_bytes())
        })
    }
}

/// `CHECKSUM.SERIAL`, as ostree names deployment directories.
pub fn id(d: &status::Deployment) -> String {
    format!("{}.{}", d.checksum, d.serial)
}

/// The tries configured under `root`.
pub fn configured_tries(root: &Path) -> u32 {
    TRIES_FILES
        .iter()
        .find_map(|f| std::fs::read_to_string(root.join(f)).ok())
        .and_then(|t| t.trim().parse().ok())
        .map_or(DEFAULT_TRIES, |n: u32| n.clamp(1, MAX_TRIES))
}

/// The running deployment's `CHECKSUM.SERIAL`: the deployment directory under the
/// physical `sysroot` that is `/` (libostree's own test; the `ostree=` link of the kernel
/// command line may already be gone after a finalized deploy). None off a device.
pub fn booted_id(sysroot: &Path) -> Option<String> {
    let root = std::fs::metadata("/").ok()?;
    let stateroots = std::fs::read_dir(sysroot.join("ostree/deploy")).ok()?;
    for os in stateroots.flatten() {
        let Ok(deploys) = std::fs::read_dir(os.path().join("deploy")) else {
            continue;
        };
        for d in deploys.flatten() {
            let Ok(meta) = std::fs::metadata(d.path()) else {
                continue;
            };
            if meta.is_dir() && meta.dev() == root.dev() && meta.ino() == root.ino() {
                return Some(d.file_name().to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// The default (first, unstaged) deployment of the sysroot.
fn default_id(sysroot: &Path) -> Result<Option<String>> {
    let st = status::status(sysroot)?;
    Ok(st
        .deployments
        .iter()
        .find(|d| d.role != status::Role::Staged)
        .map(id))
}

/// After GRUB's menu is regenerated on a device: put a new default deployment on trial.
/// Not on the build host (an image's first deployment starts trusted), not when the
/// default is the running deployment, and not again while it is already on trial (a
/// fallback boot must not restart its count).
pub(crate) fn arm(sysroot: &Path) -> Result<()> {
    let Some(booted) = booted_id(sysroot) else {
        return Ok(());
    };
    let Some(default) = default_id(sysroot)? else {
        return Ok(());
    };
    let env_path = grubenv::path(sysroot);
    let mut env = grubenv::read(&env_path)?;
    if default == booted || env.get(TRYING_VAR) == Some(&default) {
        return Ok(());
    }
    let tries = configured_tries(Path::new("/"));
    env.insert(TRIES_VAR.into(), tries.to_string());
    env.insert(TRYING_VAR.into(), default.clone());
    grubenv::write(&env_path, &env)?;
    eprintln!("osbuild-boot-menu: {default} is on trial for {tries} boots");
    Ok(())
}

/// The counter's state, for status.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema, PartialEq, Eq)]
pub struct Trial {
    /// The deployment on trial (`CHECKSUM.SERIAL`).
    pub deployment: Option<String>,
    /// Its boots left before the fallback.
    pub tries_left: Option<u32>,
}

/// The trial on the physical `sysroot`: in systemd-boot's entry names on the ESP (mounted
/// for the call) when it boots systemd-boot, else in GRUB's environment block.
///
/// Several counted entries mean a deployment was staged while the one before it was still
/// on trial (its boot not yet marked good): the default's is the trial, as GRUB's block
/// holds only the newest.
pub fn trial(sysroot: &Path) -> Result<Trial> {
    let on_esp = crate::esp::with_esp(sysroot, |esp| {
        let mut counted = Vec::new();
        for name in std::fs::read_dir(esp.join("loader/entries"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = name.file_name().to_string_lossy().into_owned();
            let (base, left) = crate::esp::split_counter(&name);
            if let (Some(left), Some(deployment)) = (left, deployment_of_entry(&base)) {
                counted.push(Trial {
                    deployment: Some(deployment),
                    tries_left: Some(left),
                });
            }
        }
        if counted.len() > 1 {
            let default = default_id(sysroot)?;
            if let Some(i) = counted.iter().position(|t| t.deployment == default) {
                return Ok(counted.swap_remove(i));
            }
        }
        Ok(counted.into_iter().next().unwrap_or_default())
    })?;
    if let Some(t) = on_esp {
        return Ok(t);
    }
    let env = grubenv::read(&grubenv::path(sysroot))?;
    Ok(Trial {
        deployment: env.get(TRYING_VAR).filter(|v| !v.is_empty()).cloned(),
        tries_left: env
            .get(TRYING_VAR)
            .filter(|v| !v.is_empty())
            .and_then(|_| env.get(TRIES_VAR).and_then(|t| t.parse().ok())),
    })
}

/// `COMMIT.SERIAL` of an ESP entry named `osbuild-OS-COMMIT-SERIAL.conf`.
fn deployment_of_entry(base: &str) -> Option<String> {
    let stem = base.strip_suffix(".conf")?;
    let (rest, serial) = stem.rsplit_once('-')?;
    let (_, commit) = rest.rsplit_once('-')?;
    (commit.len() == 64 && serial.chars().all(|c| c.is_ascii_digit()))
        .then(|| format!("{commit}.{serial}"))
}

/// End any trial: GRUB's counter is cleared; on systemd-boot every counted entry loses its
/// counter (the good one is blessed; a failed one becomes a plain rollback entry).
fn end_trial(sysroot: &Path) -> Result<()> {
    let blessed = crate::esp::with_esp(sysroot, |esp| {
        let st = status::status(sysroot)?;
        for d in &st.deployments {
            crate::esp::bless(esp, &id(d))?;
        }
        Ok(())
    })?;
    if blessed.is_some() {
        return Ok(());
    }
    let path = grubenv::path(sysroot);
    let mut env = grubenv::read(&path)?;
    if env.remove(TRYING_VAR).is_some() | env.remove(TRIES_VAR).is_some() {
        grubenv::write(&path, &env)?;
        crate::durable::flush_for_bootloader(&sysroot.join("boot"))?;
    }
    Ok(())
}

/// The physical root of a booted device.
fn physical() -> PathBuf {
    PathBuf::from(crate::sysroot::PHYSICAL_ROOT)
}

/// What [`mark_good`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marked {
    /// The running deployment passed; any trial of it ended.
    Good(String),
    /// The running deployment is a fallback: it is the default now.
    FellBack(Fallback),
}

/// `osbuild admin boot-good`, after the health checks passed (boot-complete.target).
pub fn mark_good() -> Result<Marked> {
    let sysroot = physical();
    let booted = booted_id(&sysroot).context("this is not a booted OSTree system")?;
    let trial = trial(&sysroot)?;
    let mut record = Record::load(Path::new("/"))?;
    let result = match trial.deployment {
        Some(failed) if failed != booted => {
            // GRUB ran out of tries and booted the previous deployment: keep it.
            let default = default_id(&sysroot)?;
            if default.as_deref() != Some(booted.as_str()) {
                crate::rollback(Path::new("/")).context("making the fallback the default")?;
            }
            let fb = Fallback {
                failed,
                booted: booted.clone(),
                at: now(),
            };
            record.fallback = Some(fb.clone());
            Marked::FellBack(fb)
        }
        _ => Marked::Good(booted.clone()),
    };
    end_trial(&sysroot)?;
    record.last_good = Some(booted);
    record.save(Path::new("/"))?;
    Ok(result)
}

/// What a failed health check led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// The deployment is on trial: reboot, which takes a try.
    Reboot,
    /// syslinux (no counting): the previous deployment is the default now; reboot.
    RolledBack,
    /// Nothing to do: it passed before, or it is the fallback, or there is no other.
    Stay(String),
}

/// Decide and do what a failed health check calls for (the caller reboots).
pub fn on_failure() -> Result<OnFailure> {
    let sysroot = physical();
    let booted = booted_id(&sysroot).context("this is not a booted OSTree system")?;
    let trial = trial(&sysroot)?;
    if let Some(on_trial) = &trial.deployment {
        return Ok(if *on_trial == booted {
            OnFailure::Reboot
        } else {
            OnFailure::Stay(format!(
                "{booted} is the fallback from {on_trial}, which failed its tries: staying on it"
            ))
        });
    }
    let record = Record::load(Path::new("/"))?;
    if record.last_good.as_deref() == Some(booted.as_str()) {
        return Ok(OnFailure::Stay(format!(
            "{booted} passed its health checks before: not rolling back"
        )));
    }
    let menu_counts = std::fs::read_to_string(crate::bootmenu::grub_cfg_path(&sysroot))
        .is_ok_and(|t| t.starts_with(crate::bootmenu::MARKER))
        || crate::esp::marked_partuuid(&sysroot)?.is_some();
    if menu_counts {
        // A GRUB or systemd-boot device whose deployment is not on trial: it was there
        // before osbuild counted (or was rolled back to by hand); leave it.
        return Ok(OnFailure::Stay(format!("{booted} is not on trial")));
    }
    let st = status::status(Path::new("/"))?;
    if st.with_role(status::Role::Rollback).is_none() {
        return Ok(OnFailure::Stay(format!(
            "{booted} has no previous deployment to roll back to"
        )));
    }
    crate::rollback(Path::new("/")).context("rolling back after failed health checks")?;
    Ok(OnFailure::RolledBack)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_entry_names_give_their_deployment() {
        let c = "a".repeat(64);
        assert_eq!(
            deployment_of_entry(&format!("osbuild-debian-{c}-1.conf")),
            Some(format!("{c}.1"))
        );
        assert_eq!(deployment_of_entry("osbuild-debian-abc-1.conf"), None);
        assert_eq!(deployment_of_entry("other.conf"), None);
    }

    #[test]
    fn tries_are_configured_and_bounded() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(configured_tries(root.path()), DEFAULT_TRIES);
        let usr = root.path().join(TRIES_FILES[1]);
        std::fs::create_dir_all(usr.parent().unwrap()).unwrap();
        std::fs::write(&usr, "2\n").unwrap();
        assert_eq!(configured_tries(root.path()), 2);
        let etc = root.path().join(TRIES_FILES[0]);
        std::fs::create_dir_all(etc.parent().unwrap()).unwrap();
        std::fs::write(&etc, "50\n").unwrap();
        assert_eq!(configured_tries(root.path()), MAX_TRIES);
    }

    #[test]
    fn the_record_round_trips() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(root.path()).unwrap(), Record::default());
        let r = Record {
            last_good: Some("abc.0".into()),
            fallback: Some(Fallback {
                failed: "def.0".into(),
                booted: "abc.0".into(),
                at: 5,
            }),
        };
        r.save(root.path()).unwrap();
        assert_eq!(Record::load(root.path()).unwrap(), r);
    }

    #[test]
    fn the_trial_is_read_from_grubs_block() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(trial(root.path()).unwrap(), Trial::default());
        let vars = [
            (TRIES_VAR.to_string(), "2".to_string()),
            (TRYING_VAR.to_string(), "abc.0".to_string()),
        ]
        .into_iter()
        .collect();
        grubenv::write(&grubenv::path(root.path()), &vars).unwrap();
        assert_eq!(
            trial(root.path()).unwrap(),
            Trial {
                deployment: Some("abc.0".into()),
                tries_left: Some(2)
            }
        );
    }
}
