//! The terminal during a push: a spinner with what the server has fetched, and the remote
//! command's output passed through line by line above it.

use indicatif::HumanBytes;
use osbuild_core::progress::Progress;
use std::io::Write;
use std::sync::Mutex;

pub(super) struct Console {
    bar: Progress,
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
}

#[derive(Clone, Copy)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

impl Console {
    pub(super) fn new(msg: &str) -> Self {
        Console {
            bar: Progress::spinner(msg),
            stdout: Mutex::default(),
            stderr: Mutex::default(),
        }
    }

    pub(super) fn set_counts(&self, host: &str, objects: u64, bytes: u64) {
        self.bar.set_message(format!(
            "{host} has fetched {objects} objects, {}",
            HumanBytes(bytes)
        ));
    }

    /// Pass remote output through, a whole line at a time so the bar never splits one.
    pub(super) fn write(&self, stream: Stream, data: &[u8]) {
        let buf = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        let mut buf = buf.lock().unwrap_or_else(|e| e.into_inner());
        buf.extend_from_slice(data);
        if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = buf.drain(..=end).collect();
            self.emit(stream, &lines);
        }
    }

    fn emit(&self, stream: Stream, bytes: &[u8]) {
        // Losing remote output because our own stdout is closed is not worth failing for.
        self.bar.suspend(|| match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(bytes).and_then(|_| out.flush());
            }
            Stream::Stderr => {
                let _ = std::io::stderr().lock().write_all(bytes);
            }
        });
    }

    /// Print what is left of unterminated lines, at the end of a remote command.
    pub(super) fn flush(&self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let buf = match stream {
                Stream::Stdout => &self.stdout,
                Stream::Stderr => &self.stderr,
            };
            let rest = std::mem::take(&mut *buf.lock().unwrap_or_else(|e| e.into_inner()));
            if !rest.is_empty() {
                self.emit(stream, &rest);
            }
        }
    }

    /// Flush and remove the bar.
    pub(super) fn finish(&self) {
        self.flush();
        self.bar.clear();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.finish();
    }
}
