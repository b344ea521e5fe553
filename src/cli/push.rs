//! `osbuild push` and `osbuild commit-push`: send refs to a server over SSH.

use super::CommitArgs;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Push refs.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The local archive repository.
    #[arg(long)]
    repo: PathBuf,
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    destination: ostree_commit::Destination,
    /// Refs to push (all refs of the repository when none).
    refs: Vec<String>,
    #[command(flatten)]
    ssh: PushSshArgs,
}

/// Commit, then push the commit's ref.
#[derive(Debug, clap::Args)]
pub(crate) struct CommitPushArgs {
    #[command(flatten)]
    commit: CommitArgs,
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    destination: ostree_commit::Destination,
    #[command(flatten)]
    ssh: PushSshArgs,
}

/// How a push reaches the server and what it runs there.
#[derive(Debug, clap::Args)]
pub(crate) struct PushSshArgs {
    /// Only report what the server would update (passes -n to the receiver).
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Remote receive command, tried in order until one exists (repeatable; default
    /// ostree-receive-1, then ostree-receive).
    #[arg(long = "command", value_name = "CMD")]
    commands: Vec<String>,
    /// Private key to offer before ssh-agent's and ~/.ssh/id_* (repeatable).
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    identities: Vec<PathBuf>,
    /// known_hosts file to check the server's key against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Trust a server whose key is not in known_hosts yet, and record it there.
    #[arg(long)]
    accept_new_host_key: bool,
}

impl PushSshArgs {
    fn options(self) -> ostree_commit::PushOptions {
        ostree_commit::PushOptions {
            dry_run: self.dry_run,
            commands: self.commands,
            identities: self.identities,
            known_hosts: self.known_hosts,
            accept_new_host_key: self.accept_new_host_key,
        }
    }
}

impl PushArgs {
    pub(super) fn run(self) -> Result<ExitCode> {
        push(&self.repo, &self.destination, &self.refs, self.ssh)
    }
}

impl CommitPushArgs {
    pub(super) fn run(self) -> Result<ExitCode> {
        self.commit.run()?;
        push(
            &self.commit.repo,
            &self.destination,
            &[self.commit.branch],
            self.ssh,
        )
    }
}

/// Push, report, and end with the receiver's exit status.
fn push(
    repo: &Path,
    dest: &ostree_commit::Destination,
    refs: &[String],
    ssh: PushSshArgs,
) -> Result<ExitCode> {
    let outcome = ostree_commit::push(repo, dest, refs, &ssh.options())?;
    eprintln!(
        "{} fetched {} objects ({} bytes); the receiver exited with status {}",
        dest.host, outcome.objects, outcome.bytes, outcome.exit_status
    );
    // A status beyond a byte cannot be passed on: it is still a failure.
    Ok(ExitCode::from(
        u8::try_from(outcome.exit_status).unwrap_or(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    #[test]
    fn push_parses_both_destination_forms() {
        let cli = parse(&[
            "osbuild",
            "push",
            "--repo",
            "r",
            "ssh://u@h:2222/srv/repo",
            "a",
            "b",
            "-n",
            "-i",
            "k",
        ])
        .unwrap();
        let Command::Push(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        assert_eq!(a.refs, ["a", "b"]);
        assert!(a.ssh.dry_run && a.ssh.identities.len() == 1);
        assert_eq!(a.destination.host, "h");
        assert!(parse(&["osbuild", "push", "--repo", "r", "u@h:/srv/repo"]).is_ok());
        assert!(parse(&["osbuild", "push", "--repo", "r"]).is_err());
    }

    #[test]
    fn commit_push_parses() {
        let cli = parse(&[
            "osbuild",
            "commit-push",
            "--repo",
            "r",
            "--branch",
            "b",
            "--tree",
            "t",
            "h:/srv/repo",
            "--command",
            "ostree-receive",
        ])
        .unwrap();
        let Command::CommitPush(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        assert_eq!(a.commit.branch, "b");
        assert_eq!(a.ssh.commands, ["ostree-receive"]);
    }
}
