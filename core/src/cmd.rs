//! The one way osbuild runs an external tool, in product code and tests alike: the command
//! line is logged, and on failure the error carries the exact command (so it can be
//! replayed) and the tail of its stderr.
//!
//! - [`run`] / [`run_output`]: capture the output, fail on a non-zero exit.
//! - [`run_inherit`]: the tool's output goes to the user as it runs (progress of long tools
//!   such as mmdebstrap); its stderr is also kept, so a failure still quotes its tail.
//! - [`output`]: capture the output whatever the exit status, for callers that inspect it.
//! - [`spawn_tied`]: start a long-running child that the kernel kills when the spawning
//!   thread dies (servers, qemu), so no stray process outlives a crashed caller.
//! - [`quote_word`] / [`display`]: shell-like quoting for logs, errors and remote commands.

// This module is the one place that may call `Command::output`/`status`: everything else
// runs processes through it (clippy.toml disallows them elsewhere).
#![allow(clippy::disallowed_methods)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};

/// How many trailing bytes of a failed command's stderr go into the error.
const STDERR_TAIL: usize = 4096;

/// Why a command could not be run, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (not installed, not executable, …).
    #[error("could not start `{command}`: {source} (is it installed?)")]
    Spawn {
        /// The command line, quoted as for a shell.
        command: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, quoted as for a shell.
        command: String,
        /// Its exit status (or the signal that killed it).
        status: ExitStatus,
        /// The tail of its stderr, or "no error output".
        stderr: String,
    },
    /// Waiting for the program or reading its output failed.
    #[error("running `{command}`: {source}")]
    Io {
        /// The command line, quoted as for a shell.
        command: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
}

/// Render a command as a shell-like line for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Quote one word for a POSIX shell: words made only of safe characters stay as they are,
/// anything else is single-quoted. The one quoting function of the workspace (commands
/// sent over SSH, logged command lines).
pub fn quote_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn quote(s: &OsStr) -> String {
    quote_word(&s.to_string_lossy())
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
    let output = output(cmd)?;
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

/// Run `cmd` to completion and return its output whatever its exit status: for callers
/// that check the status and the messages themselves. Fails only if it cannot be started.
/// stdin is empty (as with `Command::output`) unless the caller set it.
pub fn output(cmd: &mut Command) -> Result<Output, CommandError> {
    let command = display(cmd);
    tracing::info!(target: "osbuild::cmd", "running: {command}");
    cmd.output()
        .map_err(|source| CommandError::Spawn { command, source })
}

/// Run `cmd` with its stdout going where ours goes and its stderr copied to ours as it
/// arrives, so a user sees a long tool's progress. The last few KiB of stderr are kept
/// for the error if it fails.
pub fn run_inherit(cmd: &mut Command) -> Result<(), CommandError> {
    let command = display(cmd);
    tracing::info!(target: "osbuild::cmd", "running: {command}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    // Tee: forward every chunk at once (progress), keep a bounded tail (the error).
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let read_result = loop {
        match pipe.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                let _ = std::io::stderr().write_all(&buf[..n]);
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_TAIL {
                    kept.drain(..kept.len() - STDERR_TAIL);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let status = child.wait().map_err(|source| CommandError::Io {
        command: command.clone(),
        source,
    })?;
    read_result.map_err(|source| CommandError::Io {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(CommandError::Failed {
            command,
            status,
            stderr: tail(&kept),
        });
    }
    tracing::debug!(target: "osbuild::cmd", "finished: {command}");
    Ok(())
}

/// Spawn `cmd` as a child that gets SIGKILL when the thread that spawns it exits (Linux
/// `PR_SET_PDEATHSIG`), so a server or VM never outlives a caller that died without
/// running destructors (SIGKILL, a test runner's timeout, abort).
///
/// The kernel ties the signal to the spawning *thread*: spawn from (and keep the child
/// on) a thread that outlives it. Stdio is as the caller set it.
pub fn spawn_tied(cmd: &mut Command) -> Result<Child, CommandError> {
    let command = display(cmd);
    tracing::info!(target: "osbuild::cmd", "starting: {command}");
    pdeathsig::kill_child_with_parent(cmd);
    cmd.spawn()
        .map_err(|source| CommandError::Spawn { command, source })
}

/// Have the kernel kill the child that `cmd` starts when the spawning thread exits, as
/// [`spawn_tied`] does, for a command another library spawns.
pub fn tie(cmd: &mut Command) {
    pdeathsig::kill_child_with_parent(cmd);
}

mod pdeathsig {
    //! The workspace denies `unsafe_code`; this is the one exception, because
    //! `CommandExt::pre_exec` is `unsafe` and a pre-exec hook is the only way to have the
    //! kernel kill a child when its parent dies without running destructors.
    #![allow(unsafe_code)]

    use std::io;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    pub(super) fn kill_child_with_parent(cmd: &mut Command) {
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec, so it must only make
        // async-signal-safe calls: prctl and getppid are plain syscalls, and the error
        // values are built without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl; then no signal will
                // ever come, so refuse to exec.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
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

    #[test]
    fn output_returns_failures_without_an_error() {
        let out = output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 4"]))
            .expect("sh starts");
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn inherited_run_keeps_the_stderr_tail_for_the_error() {
        // More stderr than the tail holds (50 lines of 100 bytes): the error quotes the
        // end, not the start.
        let script = "for i in $(seq 0 49); do printf 'line%s %098d\\n' $i 0 >&2; done; exit 5";
        let err = run_inherit(Command::new("sh").args(["-c", script])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status: 5"), "{msg}");
        assert!(msg.contains("line49 "), "{msg}");
        assert!(!msg.contains("line0 "), "{msg}");
        run_inherit(&mut Command::new("true")).expect("true succeeds");
    }

    #[test]
    fn quote_word_quotes_only_what_a_shell_would_split() {
        assert_eq!(quote_word("a-b_c./=:,+@%9"), "a-b_c./=:,+@%9");
        assert_eq!(quote_word(""), "''");
        assert_eq!(quote_word("a b"), "'a b'");
        assert_eq!(quote_word("it's"), r"'it'\''s'");
        // What the shell makes of the quoted word is the word.
        let word = "x'y $HOME \"z\"";
        let echoed =
            run(Command::new("sh").args(["-c", &format!("printf %s {}", quote_word(word))]))
                .expect("sh runs");
        assert_eq!(echoed, word);
    }

    #[test]
    fn tied_child_dies_with_its_spawning_thread() {
        let child = std::thread::spawn(|| {
            spawn_tied(Command::new("sleep").arg("60"))
                .expect("sleep starts")
                .id()
        })
        .join()
        .expect("spawning thread");
        // The thread is gone: the kernel sends SIGKILL; the zombie is ours to reap, so
        // check its state rather than its existence.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            if matches!(state, None | Some('Z' | 'X')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {child} outlived its thread"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
