//! The device build of `osbuild`, installed as /usr/bin/osbuild in every tree: the
//! `admin` verbs, linked only against what a device has (libostree and GLib).

use clap::Parser;
use std::process::ExitCode;

/// Inspect, upgrade and roll back this OSTree system.
#[derive(Debug, Parser)]
#[command(name = "osbuild")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Inspect, upgrade and roll back the deployments.
    Admin(osbuild_admin::cli::AdminArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Admin(args) = cli.command;
    match args.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
