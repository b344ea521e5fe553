//! `osbuild admin …`: the device verbs' command line, shared by the `osbuild` binary and
//! the device build installed as /usr/bin/osbuild in every tree.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::path::PathBuf;
use std::process::Command;

use crate::{Role, Upgrade};

/// Inspect, upgrade and roll back the deployments of an OSTree system.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
    /// The sysroot to act on: `/` is the booted system; another path is an image's
    /// sysroot (mounted).
    #[arg(long, default_value = "/", global = true)]
    sysroot: PathBuf,
}

/// The device verbs.
#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Show the booted, staged, pending and rollback deployments.
    Status {
        /// Print JSON (schema: docs/admin-status.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Pull the deployment's ref and stage the new commit for the next boot.
    Upgrade {
        /// Fetch only the new commit's metadata: say whether there is an update and how
        /// much it downloads; deploy nothing.
        #[arg(long)]
        check: bool,
        /// Reboot into the new commit once it is staged.
        #[arg(long, conflicts_with = "check")]
        reboot: bool,
    },
    /// Make the previous deployment the default (and drop a staged one).
    Rollback {
        /// Reboot into it.
        #[arg(long)]
        reboot: bool,
    },
    /// Write the staged deployment now, as the shutdown service does (libostree 2022.7
    /// offers this only through `ostree admin finalize-staged`, which it runs).
    FinalizeStaged,
    /// Run the health checks (/usr/lib/osbuild/health.d, /etc/osbuild/health.d); on a
    /// failure, reboot a deployment on trial, or roll back where the boot loader cannot
    /// count (syslinux). Run at every boot by osbuild-health.service.
    HealthCheck,
    /// Mark this boot good after the health checks passed: end the trial of the running
    /// deployment, or keep the fallback. Run by osbuild-boot-good.service.
    BootGood,
}

impl AdminArgs {
    /// Run the verb.
    pub fn run(&self) -> Result<()> {
        let sysroot = &self.sysroot;
        match &self.command {
            AdminCommand::Status { json } => {
                let status = crate::status(sysroot)?;
                if *json {
                    let text = serde_json::to_string_pretty(&status)
                        .context("writing the status as JSON")?;
                    println!("{text}");
                } else {
                    print!("{status}");
                }
            }
            AdminCommand::Upgrade { check, reboot } => {
                let done = crate::upgrade(sysroot, *check)?;
                let changed = report(&done);
                if *reboot && changed {
                    reboot_now()?;
                }
            }
            AdminCommand::Rollback { reboot } => {
                let r = crate::rollback(sysroot)?;
                if let Some(s) = &r.dropped_staged {
                    println!("Dropped the staged deployment {}", s.checksum);
                }
                println!(
                    "Rolled back: {} ({}) is the default; {} ({}) is kept as the rollback",
                    r.to.checksum,
                    crate::rollback::describe(&r.to),
                    r.from.checksum,
                    crate::rollback::describe(&r.from),
                );
                if r.status.with_role(Role::Pending).is_some() {
                    println!("It boots at the next reboot.");
                }
                if *reboot {
                    reboot_now()?;
                }
            }
            AdminCommand::HealthCheck => health_check()?,
            AdminCommand::BootGood => match crate::fallback::mark_good()? {
                crate::fallback::Marked::Good(id) => println!("Boot of {id} marked good"),
                crate::fallback::Marked::FellBack(fb) => println!(
                    "Automatic fallback: {} failed its boots; {} booted instead and is the default now",
                    fb.failed, fb.booted
                ),
            },
            AdminCommand::FinalizeStaged => {
                cmd::run(
                    Command::new("ostree")
                        .args(["admin", "finalize-staged", "--sysroot"])
                        .arg(sysroot),
                )
                .context("finalizing the staged deployment")?;
            }
        }
        Ok(())
    }
}

/// Run the checks; on a failure, do what crate::fallback decides, then fail.
fn health_check() -> Result<()> {
    let results = crate::health::run(std::path::Path::new("/"))?;
    let failed: Vec<_> = results.iter().filter(|c| !c.passed).collect();
    for c in &results {
        let verdict = if c.passed { "passed" } else { "FAILED" };
        println!("health check {}: {verdict} {}", c.path.display(), c.detail);
    }
    if failed.is_empty() {
        println!("All {} health checks passed", results.len());
        return Ok(());
    }
    let action = crate::fallback::on_failure()?;
    let names: Vec<String> = failed
        .iter()
        .map(|c| c.path.display().to_string())
        .collect();
    let said = match &action {
        crate::fallback::OnFailure::Reboot => "rebooting: this deployment is on trial".to_string(),
        crate::fallback::OnFailure::RolledBack => {
            "rolled back to the previous deployment; rebooting into it".to_string()
        }
        crate::fallback::OnFailure::Stay(why) => format!("staying: {why}"),
    };
    console(&format!(
        "health checks failed ({}); {said}",
        names.join(", ")
    ));
    if !matches!(action, crate::fallback::OnFailure::Stay(_)) {
        reboot_now()?;
    }
    anyhow::bail!("health checks failed: {}", names.join(", "))
}

/// Say it on stdout (the journal) and in the kernel log, which the console shows: a
/// device that reboots itself says why where someone watching it looks.
fn console(message: &str) {
    println!("{message}");
    if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let line = format!("osbuild-health: {message}\n");
        let _ = std::io::Write::write_all(&mut kmsg, line.as_bytes());
    }
}

/// Print what an upgrade did; true when something new will boot.
fn report(done: &Upgrade) -> bool {
    let about = |u: &crate::Update| {
        let mut s = u.to.clone();
        if let Some(v) = &u.version {
            s.push_str(&format!(" (version {v}"));
            s.push_str(&format!(", {})", crate::sysroot::utc(u.timestamp)));
        } else {
            s.push_str(&format!(" ({})", crate::sysroot::utc(u.timestamp)));
        }
        s
    };
    match done {
        Upgrade::UpToDate { refspec, checksum } => {
            println!("No update: {refspec} is {checksum}, the deployed commit.");
            false
        }
        Upgrade::Available(u) => {
            println!("Update available on {}: {}", u.refspec, about(u));
            match u.download {
                Some(n) => println!("Download: {}", osbuild_core::progress::human_bytes(n)),
                None => println!("Download: unknown (the commit records no ostree.sizes)"),
            }
            false
        }
        Upgrade::Staged(u) => {
            println!("Staged {}; it boots at the next reboot.", about(u));
            true
        }
        Upgrade::Deployed(u) => {
            println!("Deployed {} as the default.", about(u));
            true
        }
    }
}

/// Reboot through the init system (systemd or OpenRC both provide `reboot`).
fn reboot_now() -> Result<()> {
    cmd::run(&mut Command::new("reboot")).context("rebooting")?;
    Ok(())
}
