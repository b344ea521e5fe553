//! Access log lines in the combined log format (what nginx and Apache write, so existing
//! tools read them), plus the time taken in seconds:
//!
//! `127.0.0.1 - alice [06/Nov/2024:08:49:37 +0000] "GET /repo/config HTTP/1.1" 200 97 "-" "libostree/2022.7" 0.000132`
//!
//! Lines go through a bounded queue to one writer thread, so a slow standard output never
//! stalls requests; if the queue is full, lines are dropped and the count is logged.

use axum::http::{header, HeaderMap, Method, Request, Response, StatusCode};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const QUEUE: usize = 16 * 1024;

pub(crate) struct AccessLog {
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

/// What the log needs from a request, taken before the request is consumed.
pub(crate) struct RequestLine {
    peer: SocketAddr,
    head: String,
    method: Method,
    referer: String,
    agent: String,
    time: SystemTime,
}

impl RequestLine {
    pub(crate) fn of<B>(req: &Request<B>, peer: SocketAddr) -> Self {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        RequestLine {
            peer,
            head: format!("{} {} {:?}", req.method(), escape(target), req.version()),
            method: req.method().clone(),
            referer: header_text(req.headers(), header::REFERER),
            agent: header_text(req.headers(), header::USER_AGENT),
            time: SystemTime::now(),
        }
    }
}

impl AccessLog {
    pub(crate) fn stdout() -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer(rx, counter));
        if let Err(e) = spawned {
            tracing::warn!("starting the access log writer: {e}; no access log");
        }
        AccessLog { tx, dropped }
    }

    pub(crate) fn write<B>(
        &self,
        line: RequestLine,
        user: Option<&str>,
        resp: &Response<B>,
        elapsed: Duration,
    ) {
        let status = resp.status();
        // Bytes of body sent: none for HEAD and 304, otherwise the declared length.
        let bytes = if line.method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
            "0".to_string()
        } else {
            resp.headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        let text = format!(
            "{} - {} [{}] \"{}\" {} {} \"{}\" \"{}\" {:.6}\n",
            line.peer.ip(),
            user.map_or_else(|| "-".to_string(), escape),
            clf_time(line.time),
            line.head,
            status.as_u16(),
            bytes,
            line.referer,
            line.agent,
            elapsed.as_secs_f64()
        );
        match self.tx.try_send(text) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn writer(rx: Receiver<String>, dropped: Arc<AtomicU64>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    // Write errors (a closed stdout) are ignored: the queue keeps draining so that the
    // server never blocks on its log.
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        // Write whatever is queued, then flush once: one write(2) per burst, not per line.
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(out, "access log: {lost} lines dropped (output too slow)");
        }
        let _ = out.flush();
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers.get(name).map_or_else(
        || "-".to_string(),
        |v| escape(&String::from_utf8_lossy(v.as_bytes())),
    )
}

/// Quotes, backslashes and control characters escaped, so a client cannot forge lines.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// `06/Nov/2024:08:49:37 +0000`, in UTC.
fn clf_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), from Howard Hinnant's date algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_in_common_log_format() {
        assert_eq!(clf_time(UNIX_EPOCH), "01/Jan/1970:00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(clf_time(t), "06/Nov/1994:08:49:37 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_825_600);
        assert_eq!(clf_time(leap), "29/Feb/2000:12:00:00 +0000");
    }

    #[test]
    fn clients_cannot_forge_lines() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\x22b\\x5cc\\x0ad");
    }

    #[test]
    fn request_line_takes_what_the_log_needs() {
        let req = Request::builder()
            .uri("/repo/config?x=1")
            .header(header::USER_AGENT, "libostree/2022.7")
            .body(())
            .unwrap();
        let line = RequestLine::of(&req, "127.0.0.1:9".parse().unwrap());
        assert_eq!(line.head, "GET /repo/config?x=1 HTTP/1.1");
        assert_eq!(line.agent, "libostree/2022.7");
        assert_eq!(line.referer, "-");
    }
}
