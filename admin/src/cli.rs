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
                Some(n) => println!("Download: {}", crate::human_bytes(n)),
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
