//! The one way osbuild runs an external tool: the command line is logged, and on failure
//! the error carries the exact command (so it can be replayed) and the tail of its stderr.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

/// How many trailing bytes of a failed command's stderr go into the error.
const STDERR_TAIL: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start `{command}`: {source} (is it installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Render a command as a shell-like line for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        "no error output".to_string()
    } else {
        text.to_string()
    }
}

/// Run `cmd` to completion, capturing stdout and stderr. Returns stdout as text.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let output = run_output(cmd)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Run `cmd` to completion and return its whole output; fails on a non-zero exit.
#[allow(clippy::disallowed_methods)] // the one place that runs a process
pub fn run_output(cmd: &mut Command) -> Result<Output, CommandError> {
    let command = display(cmd);
    tracing::info!(target: "osbuild::cmd", "running: {command}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(CommandError::Failed {
            command,
            status: output.status,
            stderr: tail(&output.stderr),
        });
    }
    tracing::debug!(target: "osbuild::cmd", "finished: {command}");
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c 'echo boom >&2; exit 3'"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run(&mut Command::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/tool"));
    }

    #[test]
    fn stdout_is_returned() {
        assert_eq!(run(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
