//! The protocol's command line: `ostree-receive-1 [-n] [-f] [-q] [-v] [--no-update] REPO
//! URL [REF…]`, as the client sends it.

use std::path::Path;

/// The command names clients run, newest protocol version first.
pub const COMMANDS: &[&str] = &["ostree-receive-1", "ostree-receive"];

/// The arguments of one receive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiveArgs {
    /// `-n`: only report what would be updated.
    pub dry_run: bool,
    /// `-f`: the client asks to move refs backwards or sideways.
    pub force: bool,
    /// `-q`: no messages for the pusher.
    pub quiet: bool,
    /// Regenerate the summary after updating refs (off with `--no-update`).
    pub update_summary: bool,
    /// The repository the client names; it must be the served one.
    pub repo: String,
    /// The pusher's tunnel, where its repository is served over HTTP.
    pub url: String,
    /// The refs to take (all refs of the pushed summary when empty).
    pub refs: Vec<String>,
}

/// Why a command line is refused: exit status 2, or for an SSH server, a refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// The command is not a receiver at all: an SSH server refuses it like a shell.
    #[error("command {program:?} is not allowed; only {} are", COMMANDS.join(" and "))]
    NotAllowed {
        /// The program the client asked for.
        program: String,
    },
    /// A receiver command with wrong arguments.
    #[error("usage: ostree-receive-1 [-n] [-f] [-q] [-v] [--no-update] REPO URL [REF…]: {0}")]
    Usage(String),
}

impl ReceiveArgs {
    /// Parse the words after the command name.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Self, UsageError> {
        let mut args = ReceiveArgs {
            update_summary: true,
            ..Default::default()
        };
        let mut positional = Vec::new();
        let mut only_positional = false;
        for w in words.iter().map(AsRef::as_ref) {
            if only_positional || !w.starts_with('-') || w == "-" {
                positional.push(w.to_string());
                continue;
            }
            match w {
                "--" => only_positional = true,
                "-n" | "--dry-run" => args.dry_run = true,
                "-f" | "--force" => args.force = true,
                "-q" | "--quiet" => args.quiet = true,
                "-v" | "--verbose" => args.quiet = false,
                "--no-update" => args.update_summary = false,
                other => return Err(UsageError::Usage(format!("unknown option {other}"))),
            }
        }
        let mut it = positional.into_iter();
        args.repo = it
            .next()
            .ok_or_else(|| UsageError::Usage("missing REPO".into()))?;
        args.url = it
            .next()
            .ok_or_else(|| UsageError::Usage("missing URL".into()))?;
        args.refs = it.collect();
        Ok(args)
    }

    /// Parse a whole command line as the client sent it (`ostree-receive-1 …`).
    pub fn parse_command(command: &str) -> Result<Self, UsageError> {
        let words = shell_words::split(command)
            .map_err(|e| UsageError::Usage(format!("cannot parse command {command:?}: {e}")))?;
        let (program, rest) = words
            .split_first()
            .ok_or_else(|| UsageError::Usage("empty command".into()))?;
        if !is_receiver(program) {
            return Err(UsageError::NotAllowed {
                program: program.clone(),
            });
        }
        Self::parse(rest)
    }
}

/// Whether a program (a name or a path) is one of the receiver [`COMMANDS`].
pub fn is_receiver(program: &str) -> bool {
    Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| COMMANDS.contains(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_arguments() {
        let a =
            ReceiveArgs::parse_command("ostree-receive-1 -n /srv/repo http://127.0.0.1:4000 a/b c")
                .unwrap();
        assert!(a.dry_run && !a.force && a.update_summary);
        assert_eq!(a.repo, "/srv/repo");
        assert_eq!(a.url, "http://127.0.0.1:4000");
        assert_eq!(a.refs, ["a/b", "c"]);
        let a = ReceiveArgs::parse_command("/usr/bin/ostree-receive --no-update -f repo http://x")
            .unwrap();
        assert!(a.force && !a.update_summary && a.refs.is_empty());
    }

    #[test]
    fn refuses_other_commands_and_bad_usage() {
        assert_eq!(
            ReceiveArgs::parse_command("bash -c id").unwrap_err(),
            UsageError::NotAllowed {
                program: "bash".into()
            }
        );
        for bad in [
            "ostree-receive-1 /repo",
            "ostree-receive-1 --evil /r http://x",
            "ostree-receive-1 'unterminated",
        ] {
            assert!(
                matches!(ReceiveArgs::parse_command(bad), Err(UsageError::Usage(_))),
                "{bad}"
            );
        }
    }
}
