//! Static file serving of the repository: GET and HEAD of regular files inside it, with
//! validators, conditional requests, single byte ranges and cache headers; nothing else.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Files up to this size are read in one go on the request's own thread; larger ones are
/// streamed from the blocking pool. Repository objects are mostly a few KiB, and handing
/// each to another thread would cost more than the read.
const INLINE_READ_MAX: u64 = 128 * 1024;
/// Read size when streaming large files (deltas, big objects).
const STREAM_CHUNK: usize = 256 * 1024;

/// Content-addressed files never change, so clients may keep them forever.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Files that move with every commit: clients must revalidate (cheap, with the ETag).
const REVALIDATE: &str = "no-cache";

struct Repo {
    /// Canonical path of the repository, for the fallback resolver.
    root: PathBuf,
    /// The repository directory, which every file is opened beneath.
    dir: OwnedFd,
    /// Whether the kernel has openat2 (Linux 5.6+) and lets us use it.
    beneath: bool,
}

/// The router that serves the repository at `repo` under `/repo/`. Shared by `osbuild
/// serve` and the push tunnel. Other methods on `/repo/…` get 405, other paths 404.
pub fn router(repo: &Path) -> Result<Router> {
    let root = repo
        .canonicalize()
        .with_context(|| format!("resolving repository path {}", repo.display()))?;
    let dir = rustix::fs::open(
        &root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening repository directory {}", root.display()))?;
    let beneath = rustix::fs::openat2(
        &dir,
        ".",
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH,
    )
    .is_ok();
    if !beneath {
        tracing::warn!("openat2 is unavailable: resolving paths with realpath instead");
    }
    let state = Arc::new(Repo { root, dir, beneath });
    Ok(Router::new()
        .route("/repo/{*path}", get(serve_file).head(serve_file))
        .with_state(state))
}

impl Repo {
    /// Open a file named by a checked relative path, never leaving the repository: the
    /// kernel refuses any resolution (`..` or a symlink) that would step outside it.
    fn open(&self, rel: &str) -> Result<std::fs::File, StatusCode> {
        // NONBLOCK so that a FIFO cannot hang the open; it has no effect on regular files.
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
        if self.beneath {
            let fd = rustix::fs::openat2(
                &self.dir,
                rel,
                flags,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
            )
            .map_err(|_| StatusCode::NOT_FOUND)?;
            return Ok(std::fs::File::from(fd));
        }
        let real = self
            .root
            .join(rel)
            .canonicalize()
            .map_err(|_| StatusCode::NOT_FOUND)?;
        if !real.starts_with(&self.root) {
            return Err(StatusCode::NOT_FOUND);
        }
        let fd =
            rustix::fs::open(&real, flags, Mode::empty()).map_err(|_| StatusCode::NOT_FOUND)?;
        Ok(std::fs::File::from(fd))
    }
}

/// The repository-relative path of a `/repo/…` URL path, or the status refusing it.
/// Traversal, absolute paths, NUL, backslashes and encoded slashes are refused outright
/// rather than normalised: no client of a repository sends them.
fn relative_path(url_path: &str) -> Result<String, StatusCode> {
    let raw = url_path
        .strip_prefix("/repo/")
        .ok_or(StatusCode::NOT_FOUND)?;
    if raw.contains("%2f") || raw.contains("%2F") {
        return Err(StatusCode::BAD_REQUEST);
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| StatusCode::BAD_REQUEST)?;
    if decoded.contains(['\0', '\\']) {
        return Err(StatusCode::BAD_REQUEST);
    }
    // A trailing slash names a directory, which is never listed.
    let path = decoded.strip_suffix('/').unwrap_or(&decoded);
    if path.is_empty() {
        return Err(StatusCode::NOT_FOUND);
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(path.to_string())
}

fn cache_control(rel: &str) -> &'static str {
    if rel.starts_with("objects/") || rel.starts_with("deltas/") {
        IMMUTABLE
    } else {
        REVALIDATE
    }
}

fn content_type(rel: &str) -> &'static str {
    if rel == "config" || rel.starts_with("refs/") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

/// What a Range header asks for, against a file of known length.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// No usable range: send the whole file.
    Full,
    /// Bytes `start..=end`.
    Partial(u64, u64),
    /// A well-formed range that lies outside the file: 416.
    Unsatisfiable,
}

/// Parse a single `bytes=` range. Several ranges or malformed ones are ignored (the whole
/// file is sent), which RFC 9110 allows, and ostree never asks for them.
fn parse_range(value: &str, len: u64) -> RangeRequest {
    let Some(spec) = value
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| value[6..].trim())
    else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeRequest::Full,
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if len == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial(len.saturating_sub(n), len - 1),
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, end.min(len - 1))
            }
        }
    }
}

/// The validators of one file.
struct Validators {
    etag: String,
    mtime: SystemTime,
    last_modified: String,
}

impl Validators {
    fn of(meta: &std::fs::Metadata) -> Self {
        // Inode and nanosecond mtime as well as size: a summary rewritten within the same
        // second with the same length must still get a new ETag.
        let etag = format!(
            "\"{:x}-{:x}{:09x}-{:x}\"",
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.size()
        );
        let mtime = UNIX_EPOCH + Duration::from_secs(meta.mtime().max(0) as u64);
        Validators {
            etag,
            mtime,
            last_modified: httpdate::fmt_http_date(mtime),
        }
    }

    /// Whether a conditional GET can be answered with 304. If-None-Match wins over
    /// If-Modified-Since, as RFC 9110 says.
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
            let Ok(inm) = inm.to_str() else {
                return false;
            };
            return inm
                .split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| self.mtime <= since)
    }

    /// Whether an If-Range (if any) still matches, so the Range may be honoured.
    fn range_allowed(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::IF_RANGE).map(|v| v.to_str()) {
            None => true,
            Some(Ok(v)) if v.starts_with('"') => v == self.etag,
            Some(Ok(v)) => v == self.last_modified,
            Some(Err(_)) => false,
        }
    }
}

async fn serve_file(State(repo): State<Arc<Repo>>, req: Request) -> Response {
    let rel = match relative_path(req.uri().path()) {
        Ok(rel) => rel,
        Err(status) => return status.into_response(),
    };
    // Opening and stat-ing a file in the page cache take microseconds: done in place, like
    // nginx does, instead of a round trip through the blocking pool.
    let file = match repo.open(&rel) {
        Ok(f) => f,
        Err(status) => return status.into_response(),
    };
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let v = Validators::of(&meta);
    let headers = req.headers();

    let mut builder = Response::builder()
        .header(header::ETAG, &v.etag)
        .header(header::LAST_MODIFIED, &v.last_modified)
        .header(header::CACHE_CONTROL, cache_control(&rel));
    if v.not_modified(headers) {
        return builder
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }

    let len = meta.len();
    let range = match headers.get(header::RANGE).map(|r| r.to_str()) {
        Some(Ok(r)) if v.range_allowed(headers) => parse_range(r, len),
        _ => RangeRequest::Full,
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Partial(start, end) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            return builder
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
    };

    let body = if req.method() == Method::HEAD {
        Body::empty()
    } else if count <= INLINE_READ_MAX {
        let mut buf = vec![0u8; count as usize];
        if let Err(e) = file.read_exact_at(&mut buf, start) {
            tracing::warn!("reading {rel}: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Body::from(buf)
    } else {
        stream_body(file, start, count).await
    };
    let mut resp = builder
        .status(status)
        .header(header::CONTENT_TYPE, content_type(&rel))
        .header(header::ACCEPT_RANGES, "bytes")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    // After building, so the header is exactly the length whether or not a body follows
    // (HEAD).
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    resp
}

/// Stream `count` bytes from `start` through the blocking pool.
async fn stream_body(file: std::fs::File, start: u64, count: u64) -> Body {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            tracing::warn!("seeking: {e}");
            return Body::empty();
        }
    }
    Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file.take(count),
        STREAM_CHUNK,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_are_refused() {
        let bad = StatusCode::BAD_REQUEST;
        assert_eq!(relative_path("/repo/config"), Ok("config".into()));
        assert_eq!(
            relative_path("/repo/objects/ab/cd.filez"),
            Ok("objects/ab/cd.filez".into())
        );
        assert_eq!(relative_path("/repo/objects/"), Ok("objects".into()));
        assert_eq!(relative_path("/repo/"), Err(StatusCode::NOT_FOUND));
        assert_eq!(relative_path("/other/config"), Err(StatusCode::NOT_FOUND));
        for p in [
            "/repo/../etc/passwd",
            "/repo/objects/../../x",
            "/repo/%2e%2e/etc/passwd",
            "/repo/%2E%2E%2Fetc",
            "/repo/objects%2fab",
            "/repo//etc/passwd",
            "/repo/%2Fetc/passwd",
            "/repo/./config",
            "/repo/config%00",
            "/repo/a\\b",
            "/repo/a%5cb",
            "/repo/%ff",
        ] {
            assert_eq!(relative_path(p), Err(bad), "{p}");
        }
    }

    #[test]
    fn open_stays_beneath_the_repo() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("refs")).unwrap();
        std::fs::write(root.join("config"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        std::os::unix::fs::symlink("../config", root.join("refs/in")).unwrap();
        let dirfd =
            rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for beneath in [true, false] {
            let repo = Repo {
                root: root.clone(),
                dir: dirfd.try_clone().unwrap(),
                beneath,
            };
            assert!(repo.open("config").is_ok());
            assert!(
                repo.open("refs/in").is_ok(),
                "a symlink inside the repo is followed"
            );
            assert_eq!(repo.open("out/passwd").err(), Some(StatusCode::NOT_FOUND));
            assert_eq!(repo.open("missing").err(), Some(StatusCode::NOT_FOUND));
        }
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Partial(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Partial(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Partial(90, 99));
        assert_eq!(parse_range("bytes=-1000", 100), Partial(0, 99));
        assert_eq!(parse_range("BYTES=5-5", 100), Partial(5, 5));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=+1-2", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x", 100), Full);
        assert_eq!(parse_range("byt", 100), Full);
    }

    #[test]
    fn conditionals() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let v = Validators::of(&std::fs::metadata(&f).unwrap());
        let h = |name: header::HeaderName, value: &str| {
            let mut m = HeaderMap::new();
            m.insert(name, HeaderValue::from_str(value).unwrap());
            m
        };
        assert!(!v.not_modified(&HeaderMap::new()));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, &v.etag)));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, &format!("\"a\", W/{}", v.etag))));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, "*")));
        assert!(!v.not_modified(&h(header::IF_NONE_MATCH, "\"other\"")));
        assert!(v.not_modified(&h(header::IF_MODIFIED_SINCE, &v.last_modified)));
        assert!(!v.not_modified(&h(
            header::IF_MODIFIED_SINCE,
            "Thu, 01 Jan 1970 00:00:00 GMT"
        )));
        assert!(v.range_allowed(&h(header::IF_RANGE, &v.etag)));
        assert!(v.range_allowed(&h(header::IF_RANGE, &v.last_modified)));
        assert!(!v.range_allowed(&h(header::IF_RANGE, "\"stale\"")));
    }

    #[test]
    fn cache_classes() {
        assert_eq!(cache_control("objects/ab/cd.filez"), IMMUTABLE);
        assert_eq!(cache_control("deltas/ab/cd/superblock"), IMMUTABLE);
        for p in ["summary", "summary.sig", "config", "refs/heads/x"] {
            assert_eq!(cache_control(p), REVALIDATE, "{p}");
        }
    }
}
