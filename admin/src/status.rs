//! `osbuild admin status`: the deployments of a sysroot, read through libostree.
//!
//! The JSON form is these structs; its schema is generated from them
//! ([`json_schema`]) into docs/admin-status.schema.json.

use anyhow::Result;
use osbuild_core::glib;
use osbuild_core::ostree;
use schemars::JsonSchema;
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// What a deployment is to the device.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The running system.
    Booted,
    /// Written at the next shutdown (`ostree admin upgrade`, `osbuild admin upgrade` on a
    /// booted system); boots next.
    Staged,
    /// Ahead of the booted deployment: boots next (a deploy made while running, or a
    /// rollback).
    Pending,
    /// The first one after the booted deployment: what `osbuild admin rollback` makes the
    /// default.
    Rollback,
    /// Boots by default, on a sysroot that is not the running system (an image's).
    Default,
    /// Kept, but none of the above.
    Other,
}

/// One deployment, in the order the boot loader lists them (first boots by default).
#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq, Eq)]
pub struct Deployment {
    /// The stateroot it belongs to.
    pub osname: String,
    /// The deployed commit.
    pub checksum: String,
    /// Tells apart several deployments of the same commit.
    pub serial: i32,
    /// What it is to the device.
    pub role: Role,
    /// The commit's `version` metadata, if the commit is in the repo and has one.
    pub version: Option<String>,
    /// The commit's timestamp, seconds since 1970 (UTC), if the commit is in the repo.
    pub timestamp: Option<u64>,
    /// Where upgrades come from, e.g. `origin:debian/bookworm/x86_64`.
    pub refspec: Option<String>,
    /// Kept when old deployments are pruned.
    pub pinned: bool,
}

impl Deployment {
    /// The running system.
    pub fn is_booted(&self) -> bool {
        self.role == Role::Booted
    }
}

/// The state of a sysroot.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Status {
    /// Every deployment, the one that boots next first.
    pub deployments: Vec<Deployment>,
    /// The automatic fallback's state; only on a booted device (`/`).
    pub boot: Option<BootState>,
}

/// The automatic fallback's state (crate::fallback).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct BootState {
    /// The deployment on trial and its boots left (GRUB's counter), if any.
    pub trial: crate::fallback::Trial,
    /// The last good boot and the last fallback.
    pub record: crate::fallback::Record,
}

impl Status {
    /// The running deployment, if the sysroot is the booted one.
    pub fn booted(&self) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.is_booted())
    }

    /// The deployment with `role`, if any.
    pub fn with_role(&self, role: Role) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.role == role)
    }
}

/// The JSON schema of [`Status`], as docs/admin-status.schema.json holds it.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(Status);
    // A schema built from these types always serializes.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Read the status of the sysroot at `path` (`/` on a device).
pub fn status(path: &Path) -> Result<Status> {
    let sysroot = crate::sysroot::open(path)?;
    let mut status = of(&sysroot);
    if path == Path::new("/") && sysroot.is_booted() {
        status.boot = Some(BootState {
            // Reading systemd-boot's counters mounts the ESP, which needs root.
            trial: crate::fallback::trial(Path::new(crate::sysroot::PHYSICAL_ROOT))
                .unwrap_or_default(),
            record: crate::fallback::Record::load(path)?,
        });
    }
    Ok(status)
}

/// The status of a loaded sysroot.
pub(crate) fn of(sysroot: &ostree::Sysroot) -> Status {
    let repo = sysroot.repo();
    let booted = sysroot.booted_deployment();
    let all = sysroot.deployments();
    let booted_at = booted
        .as_ref()
        .and_then(|b| all.iter().position(|d| b.equal(d)));
    let deployments = all
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let checksum = d.csum().to_string();
            let commit = repo.load_commit(&checksum).ok().map(|(c, _)| c);
            let version = commit.as_ref().and_then(|c| {
                glib::VariantDict::new(Some(&c.child_value(0)))
                    .lookup::<String>("version")
                    .ok()
                    .flatten()
            });
            let timestamp = commit.as_ref().map(ostree::commit_get_timestamp);
            let refspec = d
                .origin()
                .and_then(|o| o.string("origin", "refspec").ok())
                .map(|s| s.to_string());
            let role = if d.is_staged() {
                Role::Staged
            } else {
                match booted_at {
                    Some(b) if b == i => Role::Booted,
                    Some(b) if i < b => Role::Pending,
                    Some(b) if i == b + 1 => Role::Rollback,
                    None if i == 0 => Role::Default,
                    None if i == 1 => Role::Rollback,
                    _ => Role::Other,
                }
            };
            Deployment {
                osname: d.osname().to_string(),
                checksum,
                serial: d.deployserial(),
                role,
                version,
                timestamp,
                refspec,
                pinned: d.is_pinned(),
            }
        })
        .collect();
    Status {
        deployments,
        boot: None,
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.deployments.is_empty() {
            return writeln!(f, "No deployments.");
        }
        for d in &self.deployments {
            let mark = if d.is_booted() { '*' } else { ' ' };
            let mut flags = Vec::new();
            match d.role {
                Role::Staged => flags.push("staged"),
                Role::Pending => flags.push("pending"),
                Role::Rollback => flags.push("rollback"),
                Role::Default => flags.push("default"),
                Role::Booted | Role::Other => {}
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
            if let Some(t) = d.timestamp {
                writeln!(f, "    Timestamp: {}", crate::sysroot::utc(t))?;
            }
            if let Some(r) = &d.refspec {
                writeln!(f, "    origin refspec: {r}")?;
            }
        }
        if let Some(b) = &self.boot {
            if let (Some(d), Some(n)) = (&b.trial.deployment, b.trial.tries_left) {
                if n == 0 {
                    writeln!(
                        f,
                        "Trial: {d} used all its boots; the previous deployment boots"
                    )?;
                } else {
                    writeln!(f, "Trial: {d} has {n} boots left to pass its health checks")?;
                }
            }
            if let Some(g) = &b.record.last_good {
                writeln!(f, "Last good boot: {g}")?;
            }
            if let Some(fb) = &b.record.fallback {
                writeln!(
                    f,
                    "Automatic fallback at {}: {} failed its boots; {} booted instead",
                    crate::sysroot::utc(fb.at),
                    fb.failed,
                    fb.booted
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ holds the schema of today's structs (regenerate with
    /// `OSBUILD_BLESS=1 cargo test -p osbuild-admin`).
    #[test]
    fn the_documented_schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/admin-status.schema.json");
        let schema = json_schema();
        if std::env::var_os("OSBUILD_BLESS").is_some() {
            std::fs::write(&path, &schema).unwrap();
        }
        let documented = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            documented == schema,
            "{} is stale: run OSBUILD_BLESS=1 cargo test -p osbuild-admin",
            path.display()
        );
        assert!(schema.contains("\"rollback\""), "{schema}");
    }
}
