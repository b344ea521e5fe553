//! `osbuild receive`: the receiver of the ostree-push protocol behind OpenSSH, as the
//! ForceCommand or installed as `ostree-receive-1`/`ostree-receive`.

use anyhow::{Context, Result};
use ostree_serve::receive::{self, ExitStatus, Policy};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Receive a push.
#[derive(Debug, clap::Args)]
pub(crate) struct ReceiveArgs {
    /// Only accept pushes to this repository.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Refuse commits without a valid GPG signature from --trusted-keyring.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false",
          default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    require_signature: bool,
    /// GPG keyring (binary or armored public keys) that signatures must come from.
    #[arg(long, value_name = "FILE")]
    trusted_keyring: Option<PathBuf>,
    /// Honour a client's --force (non-fast-forward or older commits).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_value = "false",
          default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    allow_force: bool,
    /// The protocol arguments are the words given, even none: how `ostree-receive-1` runs.
    #[arg(long, hide = true)]
    from_argv: bool,
    /// The protocol's arguments ([-n] REPO URL [REF…]); by default the command the SSH
    /// client asked for, from $SSH_ORIGINAL_COMMAND.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The command line that `ostree-receive-1 ARGS…` stands for: `osbuild receive ARGS…`.
pub(super) fn argv0_form() -> [OsString; 4] {
    ["osbuild", "receive", "--from-argv", "--"].map(OsString::from)
}

impl ReceiveArgs {
    /// Receive, ending with the protocol's exit status (2 for a usage error).
    pub(super) fn run(self) -> Result<ExitCode> {
        if self.require_signature && self.trusted_keyring.is_none() {
            anyhow::bail!("--require-signature needs --trusted-keyring FILE");
        }
        let parsed = if self.args.is_empty() && !self.from_argv {
            let original = std::env::var("SSH_ORIGINAL_COMMAND").context(
                "no protocol arguments and no SSH_ORIGINAL_COMMAND: run this as sshd's ForceCommand",
            )?;
            receive::ReceiveArgs::parse_command(&original)
        } else {
            receive::ReceiveArgs::parse(&self.args)
        };
        let args = match parsed {
            Ok(args) => args,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitStatus::Usage.into());
            }
        };
        let policy = Policy {
            require_signature: self.require_signature,
            trusted_keyring: self.trusted_keyring,
            allow_force: self.allow_force,
        };
        let status = receive::run(&args, self.repo.as_deref(), &policy, &mut std::io::stderr());
        Ok(status.into())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;

    fn receive(args: &[&str]) -> super::ReceiveArgs {
        match parse(args).unwrap().command {
            Command::Receive(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn receive_as_force_command() {
        let a = receive(&[
            "osbuild",
            "receive",
            "--repo",
            "/srv/repo",
            "--require-signature",
            "--trusted-keyring",
            "k.gpg",
            "--allow-force=false",
        ]);
        assert!(a.require_signature && !a.allow_force && !a.from_argv);
        assert!(a.args.is_empty());
        let a = receive(&[
            "osbuild",
            "receive",
            "-n",
            "/srv/repo",
            "http://127.0.0.1:1",
        ]);
        assert_eq!(a.args, ["-n", "/srv/repo", "http://127.0.0.1:1"]);
    }

    #[test]
    fn switches_read_as_in_serve() {
        for (flag, want) in [
            ("--allow-force", true),
            ("--allow-force=true", true),
            ("--allow-force=false", false),
            ("--allow-force=off", false),
        ] {
            let Command::Serve(serve) = parse(&["osbuild", "serve", flag]).unwrap().command else {
                panic!("not serve")
            };
            let receive = receive(&["osbuild", "receive", flag]);
            assert_eq!(serve.settings.allow_force, Some(want), "serve {flag}");
            assert_eq!(receive.allow_force, want, "receive {flag}");
        }
    }

    #[test]
    fn argv0_names_are_the_protocol_form() {
        for argv0 in ["ostree-receive-1", "/usr/local/bin/ostree-receive"] {
            let a = receive(&[
                argv0,
                "-n",
                "--no-update",
                "/srv/repo",
                "http://127.0.0.1:1",
            ]);
            assert!(a.from_argv && !a.allow_force && a.repo.is_none());
            assert_eq!(
                a.args,
                ["-n", "--no-update", "/srv/repo", "http://127.0.0.1:1"]
            );
            // Even --help is a protocol argument there (a usage error, status 2).
            assert_eq!(receive(&[argv0, "--help"]).args, ["--help"]);
            assert!(receive(&[argv0]).args.is_empty());
        }
        // Another name is osbuild itself.
        assert!(parse(&["/usr/bin/osbuild", "-n"]).is_err());
    }
}
