//! Static file serving of the repository: GET and HEAD of regular files inside it, with
//! validators, conditional requests, single byte ranges and cache headers; nothing else.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The hot-file cache: immutable files (objects/, deltas/) up to this size can be kept in
/// memory. When a fleet pulls the same new commit, the same small objects are asked for
/// again and again; serving them from memory saves the open, stat, read and close of each
/// request (bench/serve.sh measures it: `--cache-size 0` against the default).
const HOT_FILE_MAX: u64 = 64 * 1024;
/// Cached files leave after this long, to make room for what is asked for now and so that
/// a pruned or repaired object does not outlive its file for long.
const HOT_TTL: Duration = Duration::from_secs(30);
/// Shards of the cache, each with its own lock.
const MAX_SHARDS: usize = 8;

struct Repo {
    /// Canonical path of the repository, for the fallback resolver.
    root: PathBuf,
    /// The repository directory, which every file is opened beneath.
    dir: OwnedFd,
    /// Whether the kernel has openat2 (Linux 5.6+) and lets us use it.
    beneath: bool,
    hot: HotCache,
}

/// How the router serves files.
#[derive(Debug, Clone)]
pub(crate) struct RouterOptions {
    /// Memory for the hot-file cache, in bytes; 0 turns it off.
    pub(crate) cache_bytes: usize,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            cache_bytes: crate::ServeConfig::default().cache_size() << 20,
        }
    }
}

/// The router that serves the repository at `repo` under `/repo/`, with the default
/// options. Shared by `osbuild serve` and the push tunnel. Other methods on `/repo/…` get
/// 405, other paths 404.
pub fn router(repo: &Path) -> Result<Router> {
    router_with(repo, &RouterOptions::default())
}

/// [`router`] with options.
pub(crate) fn router_with(repo: &Path, opts: &RouterOptions) -> Result<Router> {
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
    let state = Arc::new(Repo {
        root,
        dir,
        beneath,
        hot: HotCache::new(opts.cache_bytes),
    });
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

/// Whether a path names a content-addressed file that never changes once written.
fn is_immutable(rel: &str) -> bool {
    rel.starts_with("objects/") || rel.starts_with("deltas/")
}

fn cache_control(rel: &str) -> HeaderValue {
    HeaderValue::from_static(if is_immutable(rel) {
        IMMUTABLE
    } else {
        REVALIDATE
    })
}

fn content_type(rel: &str) -> HeaderValue {
    HeaderValue::from_static(if rel == "config" || rel.starts_with("refs/") {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    })
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

/// The validators of one file, as header values ready to send.
#[derive(Clone)]
struct Validators {
    etag: HeaderValue,
    mtime: SystemTime,
    last_modified: HeaderValue,
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
            // Hex digits, quotes and a dash: always a valid header value.
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\"")),
            mtime,
            last_modified: HeaderValue::from_str(&httpdate::fmt_http_date(mtime))
                .unwrap_or(HeaderValue::from_static("")),
        }
    }

    /// Whether a conditional GET can be answered with 304. If-None-Match wins over
    /// If-Modified-Since, as RFC 9110 says.
    fn not_modified(&self, headers: &HeaderMap) -> bool {
        if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
            let etag = self.etag.as_bytes();
            return inm.as_bytes().split(|&b| b == b',').any(|tag| {
                let tag = tag.trim_ascii();
                tag == b"*" || tag.strip_prefix(b"W/").unwrap_or(tag) == etag
            });
        }
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| self.mtime <= since)
    }

    /// Whether an If-Range (if any) still matches, so the Range may be honoured.
    fn range_allowed(&self, headers: &HeaderMap) -> bool {
        match headers.get(header::IF_RANGE) {
            None => true,
            Some(v) if v.as_bytes().starts_with(b"\"") => v == self.etag,
            Some(v) => v == self.last_modified,
        }
    }
}

/// A file in memory with its validators.
struct HotFile {
    body: Bytes,
    validators: Validators,
    loaded: Instant,
}

/// A bounded map of small immutable files, split in shards so that threads rarely wait
/// on each other. Files are admitted while there is room and leave when their time is
/// up: when more files are asked for in turn than fit (a pull of a large tree), a fixed
/// part of them is served from memory, where evicting the oldest to admit the newest
/// would serve none.
struct HotCache {
    shards: Vec<Mutex<HotShard>>,
    shard_budget: usize,
}

#[derive(Default)]
struct HotShard {
    files: HashMap<Box<str>, Arc<HotFile>>,
    /// Keys in the order they were (re)loaded, with that time: the oldest at the front.
    order: VecDeque<(Box<str>, Instant)>,
    bytes: usize,
}

impl HotCache {
    fn new(budget: usize) -> Self {
        // Fewer shards for small budgets, so that each still holds a few files.
        let shards = (budget / (4 << 20)).clamp(1, MAX_SHARDS);
        HotCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            shard_budget: budget / shards,
        }
    }

    fn shard(&self, rel: &str) -> std::sync::MutexGuard<'_, HotShard> {
        // Object names are hex checksums: their last bytes spread evenly.
        let h = rel
            .bytes()
            .rev()
            .take(8)
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        // A panic while holding a shard cannot leave it inconsistent in a harmful way.
        self.shards[h % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, rel: &str) -> Option<Arc<HotFile>> {
        if self.shard_budget == 0 {
            return None;
        }
        let hot = self.shard(rel).files.get(rel).cloned()?;
        (hot.loaded.elapsed() < HOT_TTL).then_some(hot)
    }

    /// Keep `hot` if there is room once expired files are dropped.
    fn insert(&self, rel: &str, hot: Arc<HotFile>) {
        let size = hot.body.len() + rel.len();
        if size > self.shard_budget {
            return;
        }
        let now = Instant::now();
        let mut shard = self.shard(rel);
        let shard = &mut *shard;
        // A reload of an expired file replaces it.
        if let Some(old) = shard.files.remove(rel) {
            shard.bytes -= old.body.len() + rel.len();
        }
        while shard.bytes + size > self.shard_budget {
            let Some((key, loaded)) = shard.order.front() else {
                break;
            };
            let current = shard.files.get(key).is_some_and(|f| f.loaded == *loaded);
            if current && now.duration_since(*loaded) < HOT_TTL {
                // Full of files still in their time: this one is not kept.
                return;
            }
            if current {
                if let Some(old) = shard.files.remove(key) {
                    shard.bytes -= old.body.len() + key.len();
                }
            }
            shard.order.pop_front();
        }
        shard.order.push_back((rel.into(), hot.loaded));
        shard.files.insert(rel.into(), hot);
        shard.bytes += size;
        // Queue entries of replaced files are skipped above; bound them all the same.
        if shard.order.len() > 2 * shard.files.len() + 64 {
            let files = &shard.files;
            shard
                .order
                .retain(|(k, t)| files.get(k).is_some_and(|f| f.loaded == *t));
        }
    }
}

/// Where the bytes of a response come from.
enum Content {
    Memory(Bytes),
    /// An open file and its length.
    File(std::fs::File, u64),
}

async fn serve_file(State(repo): State<Arc<Repo>>, req: Request) -> Response {
    // The body is never read (GET and HEAD); the parts are what a response depends on.
    let (req, _) = req.into_parts();
    let rel = match relative_path(req.uri.path()) {
        Ok(rel) => rel,
        Err(status) => return status.into_response(),
    };
    let immutable = is_immutable(&rel);
    if immutable {
        if let Some(hot) = repo.hot.get(&rel) {
            return respond(
                &req,
                &rel,
                &hot.validators,
                Content::Memory(hot.body.clone()),
            )
            .await;
        }
    }
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
    let validators = Validators::of(&meta);
    if immutable && meta.len() <= HOT_FILE_MAX {
        let mut buf = vec![0u8; meta.len() as usize];
        if let Err(e) = file.read_exact_at(&mut buf, 0) {
            tracing::warn!("reading {rel}: {e}");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        let body = Bytes::from(buf);
        repo.hot.insert(
            &rel,
            Arc::new(HotFile {
                body: body.clone(),
                validators: validators.clone(),
                loaded: Instant::now(),
            }),
        );
        return respond(&req, &rel, &validators, Content::Memory(body)).await;
    }
    respond(&req, &rel, &validators, Content::File(file, meta.len())).await
}

/// The response to a GET or HEAD of one file: 304, 416, 206 or 200.
async fn respond(
    req: &axum::http::request::Parts,
    rel: &str,
    v: &Validators,
    content: Content,
) -> Response {
    let headers = &req.headers;
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::ETAG, v.etag.clone());
    h.insert(header::LAST_MODIFIED, v.last_modified.clone());
    h.insert(header::CACHE_CONTROL, cache_control(rel));
    if v.not_modified(headers) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        return resp;
    }

    let len = match &content {
        Content::Memory(b) => b.len() as u64,
        Content::File(_, len) => *len,
    };
    let range = match headers.get(header::RANGE).map(|r| r.to_str()) {
        Some(Ok(r)) if v.range_allowed(headers) => parse_range(r, len),
        _ => RangeRequest::Full,
    };
    let (start, count) = match range {
        RangeRequest::Full => (0, len),
        RangeRequest::Partial(start, end) => {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, cr);
            }
            (start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, cr);
            }
            return resp;
        }
    };

    if req.method != Method::HEAD {
        *resp.body_mut() = match content {
            Content::Memory(b) => Body::from(b.slice(start as usize..(start + count) as usize)),
            Content::File(file, _) if count <= INLINE_READ_MAX => {
                let mut buf = vec![0u8; count as usize];
                if let Err(e) = file.read_exact_at(&mut buf, start) {
                    tracing::warn!("reading {rel}: {e}");
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                Body::from(buf)
            }
            Content::File(file, _) => stream_body(file, start, count).await,
        };
    }
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, content_type(rel));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Set last, so it is exactly the length whether or not a body follows (HEAD).
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
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
                hot: HotCache::new(1024),
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
        let etag = v.etag.to_str().unwrap().to_string();
        let modified = v.last_modified.to_str().unwrap().to_string();
        let h = |name: header::HeaderName, value: &str| {
            let mut m = HeaderMap::new();
            m.insert(name, HeaderValue::from_str(value).unwrap());
            m
        };
        assert!(!v.not_modified(&HeaderMap::new()));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, &etag)));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, &format!("\"a\", W/{}", etag))));
        assert!(v.not_modified(&h(header::IF_NONE_MATCH, "*")));
        assert!(!v.not_modified(&h(header::IF_NONE_MATCH, "\"other\"")));
        assert!(v.not_modified(&h(header::IF_MODIFIED_SINCE, &modified)));
        assert!(!v.not_modified(&h(
            header::IF_MODIFIED_SINCE,
            "Thu, 01 Jan 1970 00:00:00 GMT"
        )));
        assert!(v.range_allowed(&h(header::IF_RANGE, &etag)));
        assert!(v.range_allowed(&h(header::IF_RANGE, &modified)));
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

    fn hot(len: usize) -> Arc<HotFile> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        Arc::new(HotFile {
            body: Bytes::from(vec![0u8; len]),
            validators: Validators::of(&std::fs::metadata(&f).unwrap()),
            loaded: Instant::now(),
        })
    }

    #[test]
    fn hot_cache_admits_while_there_is_room() {
        let cache = HotCache::new(1000);
        assert_eq!(cache.shards.len(), 1);
        let key = |i: usize| format!("objects/{i:02x}/{i:062x}.filez");
        for i in 0..10 {
            cache.insert(&key(i), hot(300));
        }
        {
            let shard = cache.shards[0].lock().unwrap();
            assert!(shard.bytes <= 1000, "{}", shard.bytes);
            assert_eq!(shard.files.len(), 2);
        }
        // The first files stay (still in their time); later ones were not admitted.
        assert!(cache.get(&key(0)).is_some());
        assert!(cache.get(&key(1)).is_some());
        assert!(cache.get(&key(9)).is_none());
        // Re-inserting a key does not count it twice.
        let cache = HotCache::new(1000);
        for _ in 0..10 {
            cache.insert("objects/aa/bb.filez", hot(100));
        }
        let shard = cache.shards[0].lock().unwrap();
        assert_eq!(shard.bytes, 100 + "objects/aa/bb.filez".len());
        assert!(shard.order.len() <= 2 * shard.files.len() + 64);
    }

    #[test]
    fn expired_files_make_room() {
        let cache = HotCache::new(1000);
        let mut old = hot(300);
        Arc::get_mut(&mut old).unwrap().loaded = Instant::now() - HOT_TTL;
        cache.insert("objects/aa/old.filez", old.clone());
        cache.insert("objects/aa/old2.filez", old);
        assert!(cache.get("objects/aa/old.filez").is_none(), "expired");
        cache.insert("objects/aa/new.filez", hot(300));
        cache.insert("objects/aa/new2.filez", hot(300));
        assert!(cache.get("objects/aa/new.filez").is_some());
        assert!(cache.get("objects/aa/new2.filez").is_some());
        assert!(cache.shards[0].lock().unwrap().bytes <= 1000);
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = HotCache::new(0);
        cache.insert("objects/aa/bb.filez", hot(1));
        assert!(cache.get("objects/aa/bb.filez").is_none());
    }
}
