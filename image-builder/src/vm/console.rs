//! The serial console: a background reader that logs raw bytes to a file and
//! keeps a cleaned, searchable copy in memory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// Output received so far, shared between the reader thread and the `Vm`.
#[derive(Default)]
pub(super) struct State {
    /// Serial output with terminal control sequences removed (see [`Cleaner`]).
    pub(super) text: Vec<u8>,
    /// Set once the socket reached EOF (qemu exited) or failed.
    pub(super) closed: bool,
    /// Why reading stopped, if it was not a clean EOF.
    pub(super) read_error: Option<String>,
    /// First failure writing the log file; reading goes on regardless.
    pub(super) log_error: Option<String>,
}

#[derive(Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    /// Locks the state; a panic elsewhere must not hide the output from the test.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits at most `timeout` for new output or for the console to close.
    pub(super) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn notify(&self) {
        self.changed.notify_all();
    }
}

/// Starts the thread that drains the console socket until qemu closes it.
pub(super) fn spawn_reader(
    stream: UnixStream,
    log: File,
    shared: Arc<Shared>,
) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vm-serial-reader".into())
        .spawn(move || read_loop(stream, log, &shared))
        .context("spawning the serial console reader thread")
}

fn read_loop(mut stream: UnixStream, mut log: File, shared: &Shared) {
    let mut cleaner = Cleaner::default();
    let mut buf = [0u8; 8192];
    let read_error = loop {
        match stream.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => {
                let chunk = &buf[..n];
                // Log before publishing, so the file is complete whenever a
                // test looks at it after seeing text in memory.
                let log_result = log.write_all(chunk);
                let mut state = shared.lock();
                if let Err(e) = log_result {
                    state.log_error.get_or_insert_with(|| e.to_string());
                }
                cleaner.feed(chunk, &mut state.text);
                drop(state);
                shared.notify();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Some(e.to_string()),
        }
    };
    let mut state = shared.lock();
    state.closed = true;
    state.read_error = read_error;
    drop(state);
    shared.notify();
}

/// Streaming filter that drops terminal escape sequences and control characters.
///
/// Firmware and systemd colour their output (`\e[0;32m  OK  \e[0m`) and redraw
/// with `\r`/backspace, which would otherwise split the text tests search for.
/// Sequences may be cut across reads, hence the explicit state.
#[derive(Default)]
pub(super) struct Cleaner {
    state: EscState,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum EscState {
    #[default]
    Text,
    /// After ESC.
    Esc,
    /// After ESC and intermediate bytes such as `(` in `ESC ( B`.
    EscIntermediate,
    /// Inside a CSI sequence (`ESC [ ... final`).
    Csi,
    /// Inside a string sequence (OSC, DCS, ...) ended by BEL or `ESC \`.
    Str,
    /// After ESC inside a string sequence.
    StrEsc,
}

impl Cleaner {
    pub(super) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match self.state {
                EscState::Text => match b {
                    0x1b => EscState::Esc,
                    b'\n' | b'\t' => {
                        out.push(b);
                        EscState::Text
                    }
                    // Other C0 controls (\r, backspace, bell, ...) and DEL.
                    0x00..=0x1f | 0x7f => EscState::Text,
                    _ => {
                        out.push(b);
                        EscState::Text
                    }
                },
                EscState::Esc => match b {
                    b'[' => EscState::Csi,
                    b']' | b'P' | b'X' | b'^' | b'_' => EscState::Str,
                    0x20..=0x2f => EscState::EscIntermediate,
                    0x1b => EscState::Esc,
                    _ => EscState::Text,
                },
                EscState::EscIntermediate => match b {
                    0x20..=0x2f => EscState::EscIntermediate,
                    _ => EscState::Text,
                },
                EscState::Csi => match b {
                    0x40..=0x7e => EscState::Text,
                    0x1b => EscState::Esc,
                    _ => EscState::Csi,
                },
                EscState::Str => match b {
                    0x07 => EscState::Text,
                    0x1b => EscState::StrEsc,
                    _ => EscState::Str,
                },
                EscState::StrEsc => match b {
                    b'\\' => EscState::Text,
                    0x1b => EscState::StrEsc,
                    _ => EscState::Str,
                },
            };
        }
    }
}

/// Where a needle was found: the full line around it and where the cursor goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Found {
    /// Where the needle starts; searching again from here finds it again.
    pub(super) pos: usize,
    pub(super) line: String,
    /// Whether the line ends in `\n` yet.
    pub(super) terminated: bool,
    pub(super) next_cursor: usize,
}

/// Finds `needle` in `text[from..]`; returns its whole line (which may start
/// before `from`) and the position just past that line.
///
/// If the line is not terminated yet (a prompt such as `login: `), the cursor
/// goes to the end of the text received so far.
pub(super) fn find_line(text: &[u8], from: usize, needle: &[u8]) -> Option<Found> {
    let from = from.min(text.len());
    let pos = from + find(&text[from..], needle)?;
    let start = text[..pos]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let match_end = pos + needle.len();
    let (end, terminated, next_cursor) = match text[match_end..].iter().position(|&b| b == b'\n') {
        Some(i) => (match_end + i, true, match_end + i + 1),
        None => (text.len(), false, text.len()),
    };
    let line = String::from_utf8_lossy(&text[start..end])
        .trim_end()
        .to_owned();
    Some(Found {
        pos,
        line,
        terminated,
        next_cursor,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The last `n` lines of `text`, for error messages.
pub(super) fn tail(text: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(chunks: &[&[u8]]) -> String {
        let mut cleaner = Cleaner::default();
        let mut out = Vec::new();
        for chunk in chunks {
            cleaner.feed(chunk, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn cleaner_strips_seabios_and_systemd_sequences() {
        assert_eq!(
            clean(&[b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n"]),
            "SeaBIOS (version 1.16.2)\n"
        );
        assert_eq!(
            clean(&[
                b"[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mMulti-User\x1b[0m.\r\n"
            ]),
            "[  OK  ] Reached target Multi-User.\n"
        );
        assert_eq!(clean(&[b"line...\x08 \x08\x08 \x08done"]), "line...  done");
        assert_eq!(clean(&[b"\x1b]0;title\x07a\x1b]2;t\x1b\\b\x1b(Bc"]), "abc");
    }

    #[test]
    fn cleaner_handles_sequences_split_across_reads() {
        assert_eq!(
            clean(&[b"ab\x1b", b"[0;3", b"2mc", b"d\x1b]0;x", b"\x1b", b"\\e"]),
            "abcde"
        );
    }

    #[test]
    fn cleaner_keeps_utf8() {
        assert_eq!(clean(&["Grüße ✓\n".as_bytes()]), "Grüße ✓\n");
    }

    #[test]
    fn find_line_returns_whole_line_and_advances() {
        let text = b"first line\nBooting from Hard Disk...\nlogin: ";
        let found = find_line(text, 0, b"from Hard").unwrap();
        assert_eq!(found.line, "Booting from Hard Disk...");
        assert!(found.terminated);
        assert_eq!(found.pos, 19);
        assert_eq!(&text[found.next_cursor..], b"login: ");

        // A match before the cursor is not found again.
        assert_eq!(find_line(text, found.next_cursor, b"first"), None);

        // An unterminated line moves the cursor to the end of the text.
        let prompt = find_line(text, found.next_cursor, b"login:").unwrap();
        assert_eq!(prompt.line, "login:");
        assert!(!prompt.terminated);
        assert_eq!(prompt.next_cursor, text.len());
    }

    #[test]
    fn find_line_includes_text_before_cursor_on_the_same_line() {
        let text = b"iPXE> echo x\n";
        let found = find_line(text, 6, b"echo").unwrap();
        assert_eq!(found.line, "iPXE> echo x");
        assert_eq!(found.next_cursor, text.len());
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail(b"a\nb\nc\nd\n", 2), "c\nd");
        assert_eq!(tail(b"a", 40), "a");
        assert_eq!(tail(b"", 40), "");
    }
}
