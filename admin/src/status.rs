//! `osbuild status`: the deployments of a sysroot, read through libostree.

use anyhow::{Context, Result};
use osbuild_core::glib;
use osbuild_core::{gio, ostree};
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// One deployment, in the order the boot loader lists them (first boots by default).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Deployment {
    /// The stateroot it belongs to.
    pub osname: String,
    /// The deployed commit.
    pub checksum: String,
    /// Tells apart several deployments of the same commit.
    pub serial: i32,
    /// The commit's `version` metadata, if the commit is in the repo and has one.
    pub version: Option<String>,
    /// Where upgrades come from, e.g. `origin:debian/bookworm/x86_64`.
    pub refspec: Option<String>,
    /// The running system.
    pub booted: bool,
    /// Written at the next shutdown (`ostree admin deploy --stage`, `upgrade`).
    pub staged: bool,
    /// Kept when old deployments are pruned.
    pub pinned: bool,
}

/// The state of a sysroot.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Every deployment, the default first.
    pub deployments: Vec<Deployment>,
}

impl Status {
    /// The running deployment, if the sysroot is the booted one.
    pub fn booted(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.booted)
    }
}

/// Read the status of the sysroot at `path` (`/` on a device).
pub fn status(path: &Path) -> Result<Status> {
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading the OSTree sysroot at {}", path.display()))?;
    let repo = sysroot.repo();
    let booted = sysroot.booted_deployment();
    let deployments = sysroot
        .deployments()
        .into_iter()
        .map(|d| {
            let checksum = d.csum().to_string();
            let version = repo.load_commit(&checksum).ok().and_then(|(commit, _)| {
                glib::VariantDict::new(Some(&commit.child_value(0)))
                    .lookup::<String>("version")
                    .ok()
                    .flatten()
            });
            let refspec = d
                .origin()
                .and_then(|o| o.string("origin", "refspec").ok())
                .map(|s| s.to_string());
            Deployment {
                osname: d.osname().to_string(),
                checksum,
                serial: d.deployserial(),
                version,
                refspec,
                booted: booted.as_ref().is_some_and(|b| b.equal(&d)),
                staged: d.is_staged(),
                pinned: d.is_pinned(),
            }
        })
        .collect();
    Ok(Status { deployments })
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deployments.is_empty() {
            return writeln!(f, "No deployments.");
        }
        for d in &self.deployments {
            let mark = if d.booted { '*' } else { ' ' };
            let mut flags = Vec::new();
            if d.staged {
                flags.push("staged");
            }
            if d.pinned {
                flags.push("pinned");
            }
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!(" ({})", flags.join(", "))
            };
            writeln!(f, "{mark} {} {}.{}{flags}", d.osname, d.checksum, d.serial)?;
            if let Some(v) = &d.version {
                writeln!(f, "    Version: {v}")?;
            }
            if let Some(r) = &d.refspec {
                writeln!(f, "    origin refspec: {r}")?;
            }
        }
        Ok(())
    }
}
