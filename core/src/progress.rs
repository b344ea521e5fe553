//! The one progress reporter: indicatif bars on a terminal, plain log lines otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// A progress display for one step of work.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn target() -> ProgressDrawTarget {
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(5)
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    /// A spinner with a message, for work of unknown size.
    pub fn spinner(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        eprintln!("{msg}...");
        let bar = ProgressBar::with_draw_target(None, Self::target());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(msg);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    /// A bar counting items towards a known or growing total.
    pub fn counter(msg: impl Into<String>) -> Self {
        let msg = msg.into();
        eprintln!("{msg}...");
        let bar = ProgressBar::with_draw_target(Some(0), Self::target());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(msg);
        Progress { bar }
    }

    /// Show `done` of `total`.
    pub fn set(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
    }

    /// Replace the text beside the bar.
    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    /// Run `f` with the display hidden, so that what `f` prints is not broken by it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Remove the display without a summary line.
    pub fn clear(&self) {
        self.bar.finish_and_clear();
    }

    /// Finish, leaving one summary line on stderr.
    pub fn finish(self, summary: impl AsRef<str>) {
        self.bar.finish_and_clear();
        eprintln!("{}", summary.as_ref());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}

/// The protocol of `--progress-fd`, as bootc's: one JSON object per line.
pub const PROGRESS_PROTOCOL: &str = "org.osbuild.progress/v1";

/// One line of `--progress-fd` (JSON Lines, `type` names the event; the shape of bootc's
/// progress events, so tools that read those read these). docs/progress.schema.json is
/// generated from it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum ProgressEvent {
    /// The first event.
    Start {
        /// The protocol's name and version ([`PROGRESS_PROTOCOL`]).
        version: String,
    },
    /// Work measured in bytes (and objects, as steps), done of a known total.
    ProgressBytes {
        /// What is being done: `commit`.
        task: String,
        /// For people.
        description: String,
        /// What it is done to (a branch).
        id: String,
        /// Bytes that needed no work (known from the cache).
        bytes_cached: u64,
        /// Bytes done, cached included.
        bytes: u64,
        /// Bytes in all.
        bytes_total: u64,
        /// Objects that needed no work.
        steps_cached: u64,
        /// Objects done, cached included.
        steps: u64,
        /// Objects in all.
        steps_total: u64,
    },
    /// The last event.
    End {
        /// As in ProgressBytes.
        task: String,
        /// As in ProgressBytes.
        id: String,
        /// Whether the task succeeded.
        ok: bool,
        /// The result (a commit checksum) or the error.
        message: String,
    },
}

/// The JSON schema of [`ProgressEvent`], as docs/progress.schema.json holds it.
pub fn progress_schema() -> String {
    let schema = schemars::schema_for!(ProgressEvent);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// Writes [`ProgressEvent`]s to a file descriptor the caller opened (`--progress-fd N`),
/// at most 5 progress events a second; Start and End are always written.
#[derive(Debug)]
pub struct ProgressFd {
    out: std::fs::File,
    last: Option<std::time::Instant>,
}

impl ProgressFd {
    /// Open descriptor `fd` of this process for writing (through /proc, so no unsafe
    /// code adopts it), and write the Start event.
    pub fn open(fd: i32) -> anyhow::Result<ProgressFd> {
        use anyhow::Context;
        let out = std::fs::OpenOptions::new()
            .append(true)
            .open(format!("/proc/self/fd/{fd}"))
            .with_context(|| {
                format!("--progress-fd {fd}: not a descriptor open for writing in this process")
            })?;
        let mut p = ProgressFd { out, last: None };
        p.write(&ProgressEvent::Start {
            version: PROGRESS_PROTOCOL.into(),
        });
        Ok(p)
    }

    /// Write `event`, unless it is progress and the last one was under 200 ms ago. A
    /// reader that went away does not stop the work.
    pub fn send(&mut self, event: &ProgressEvent) {
        if let ProgressEvent::ProgressBytes { .. } = event {
            let now = std::time::Instant::now();
            if self
                .last
                .is_some_and(|l| now.duration_since(l) < Duration::from_millis(200))
            {
                return;
            }
            self.last = Some(now);
        }
        self.write(event);
    }

    /// Write the last progress event of a task, however soon after the one before: a
    /// reader's last word on the task must say where it ended.
    pub fn send_last(&mut self, event: &ProgressEvent) {
        self.last = Some(std::time::Instant::now());
        self.write(event);
    }

    fn write(&mut self, event: &ProgressEvent) {
        use std::io::Write;
        if let Ok(mut line) = serde_json::to_string(event) {
            line.push('\n');
            let _ = self.out.write_all(line.as_bytes());
        }
    }
}

/// `1.2 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} bytes");
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        v /= 1000.0;
        unit = u;
        if v < 1000.0 {
            break;
        }
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/ holds the schema of today's events (regenerate with
    /// `OSBUILD_BLESS=1 cargo test -p osbuild-core`).
    #[test]
    fn the_documented_progress_schema_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/progress.schema.json");
        let schema = progress_schema();
        if std::env::var_os("OSBUILD_BLESS").is_some() {
            std::fs::write(&path, &schema).unwrap();
        }
        let documented = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            documented == schema,
            "{} is stale: run OSBUILD_BLESS=1 cargo test -p osbuild-core",
            path.display()
        );
    }

    #[test]
    fn events_are_json_lines_in_bootcs_shape_and_progress_is_throttled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let file = std::fs::File::create(&path).unwrap();
        use std::os::fd::AsRawFd;
        let mut p = ProgressFd::open(file.as_raw_fd()).unwrap();
        let step = |n| ProgressEvent::ProgressBytes {
            task: "commit".into(),
            description: "d".into(),
            id: "b".into(),
            bytes_cached: 0,
            bytes: n,
            bytes_total: 10,
            steps_cached: 0,
            steps: n,
            steps_total: 10,
        };
        for n in 0..10 {
            p.send(&step(n));
        }
        p.send(&ProgressEvent::End {
            task: "commit".into(),
            id: "b".into(),
            ok: true,
            message: "c".into(),
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Start, one progress (the rest came within 200 ms), End.
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["type"], "Start");
        assert_eq!(lines[0]["version"], PROGRESS_PROTOCOL);
        assert_eq!(lines[1]["type"], "ProgressBytes");
        assert_eq!(lines[1]["bytesTotal"], 10);
        assert_eq!(lines[2]["type"], "End");
        assert!(ProgressFd::open(9999).is_err());
    }

    #[test]
    fn byte_counts_read_as_people_say_them() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(42_000_000), "42.0 MB");
        assert_eq!(human_bytes(3_000_000_000), "3.0 GB");
    }
}
