//! `osbuild serve --publish-to`: the served repository published to a bucket after each
//! change, by a thread of its own, so that a push through the server reaches the bucket
//! without another step and a slow or failing store never holds up serving or receiving.
//!
//! A push received over the server's SSH listener asks for a publish at once; any other
//! change (`osbuild receive` under OpenSSH, a local commit) is seen by the summary's
//! modification time, checked every few seconds. A failed publish is logged and retried
//! with a growing delay; it cannot harm the local repository, which it only reads, nor the
//! bucket, whose summary goes up last (see the module above).

use super::{publish, S3Options};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How often the summary is checked for changes made outside the server.
const POLL: Duration = Duration::from_secs(2);
/// The first delay before a failed publish is retried; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

/// A handle on the publishing thread; clones share it.
#[derive(Debug, Clone)]
pub struct Publisher {
    wanted: Arc<(Mutex<bool>, Condvar)>,
}

/// The summary's modification time and size: what says the repository changed.
fn summary_stamp(repo: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(repo.join("summary")).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Publisher {
    /// Start the thread; it publishes once at start (the bucket catches up with what
    /// landed while the server was down), then after every change.
    pub fn start(repo: PathBuf, opts: S3Options) -> Publisher {
        let publisher = Publisher {
            wanted: Arc::new((Mutex::new(true), Condvar::new())),
        };
        let wanted = publisher.wanted.clone();
        std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || run(&repo, &opts, &wanted))
            .map_err(|e| tracing::error!("starting the publishing thread: {e}"))
            .ok();
        publisher
    }

    /// Ask for a publish now (a push has landed).
    pub fn notify(&self) {
        let (lock, cvar) = &*self.wanted;
        if let Ok(mut w) = lock.lock() {
            *w = true;
            cvar.notify_one();
        }
    }
}

fn run(repo: &Path, opts: &S3Options, wanted: &(Mutex<bool>, Condvar)) {
    let (lock, cvar) = wanted;
    let mut published: Option<(SystemTime, u64)> = None;
    let mut retry: Option<(Instant, Duration)> = None;
    loop {
        let asked = {
            let Ok(guard) = lock.lock() else { return };
            let Ok((mut guard, _)) = cvar.wait_timeout_while(guard, POLL, |w| !*w) else {
                return;
            };
            std::mem::take(&mut *guard)
        };
        let stamp = summary_stamp(repo);
        let due = match retry {
            Some((at, _)) => asked || Instant::now() >= at,
            None => asked || stamp != published,
        };
        if !due {
            continue;
        }
        match publish(repo, opts) {
            Ok(p) => {
                tracing::info!(
                    "published {} to {}: {} files uploaded",
                    repo.display(),
                    opts.to,
                    p.uploaded
                );
                published = stamp;
                retry = None;
            }
            Err(e) => {
                let delay = retry.map_or(FIRST_RETRY, |(_, d)| (d * 2).min(MAX_RETRY));
                tracing::warn!(
                    "publishing {} to {} failed; retrying in {}s: {e:#}",
                    repo.display(),
                    opts.to,
                    delay.as_secs()
                );
                retry = Some((Instant::now() + delay, delay));
            }
        }
    }
}
