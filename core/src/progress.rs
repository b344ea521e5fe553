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

    #[test]
    fn byte_counts_read_as_people_say_them() {
        assert_eq!(human_bytes(999), "999 bytes");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(human_bytes(42_000_000), "42.0 MB");
        assert_eq!(human_bytes(3_000_000_000), "3.0 GB");
    }
}
