//! Publishing an archive repository to S3-compatible object storage, in the order that
//! keeps every client's view consistent: an archive repo is static files, so devices pull
//! from the bucket's website endpoint (or a CDN in front of it) as from `osbuild serve`.
//!
//! The bucket is inventoried with LIST (never a HEAD per object) and only what is missing
//! is uploaded. Phase A, immutable objects, in parallel and bottom-up: content and dirmeta,
//! then dirtrees, then detached metadata, then commits, then static delta parts, then delta
//! superblocks. Phase B starts only when every upload of phase A succeeded, and writes
//! the mutable files one at a time: `config` (first publish), delta indexes, refs, the
//! summary, its signature. A client that reads the old summary finds everything it names;
//! one that reads the new one finds everything too. A delta is never rewritten under an
//! existing name (clients treat a changed superblock as a hard error); detached metadata
//! (signatures added later) may be.

mod prune;
mod publisher;

pub use prune::{parse_grace, prune, PruneOptions, Pruned, RECORD};
pub use publisher::Publisher;

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, PutOptions, PutPayload};
use osbuild_core::progress::{human_bytes, Progress, ProgressEvent, ProgressFd, PROGRESS_PROTOCOL};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Cache-Control of what never changes under its name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache-Control of what changes: refs, the summary, indexes, detached metadata.
const MUTABLE: &str = "no-cache";

/// `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BucketUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix the repository lives under, without slashes at either end; empty
    /// for the bucket's root.
    pub prefix: String,
}

impl FromStr for BucketUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{s:?} is not an s3:// URL: write s3://BUCKET[/PREFIX]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
            return Err(format!(
                "{s:?}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(BucketUrl {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl TryFrom<String> for BucketUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BucketUrl> for String {
    fn from(b: BucketUrl) -> String {
        b.to_string()
    }
}

impl std::fmt::Display for BucketUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// The bucket and prefix.
    pub to: BucketUrl,
    /// The S3 endpoint (`https://s3.example.com`); AWS's when unset.
    pub endpoint: Option<String>,
    /// The region; `AWS_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Parallel uploads in phase A.
    pub jobs: usize,
    /// Write JSON Lines progress events to this file descriptor.
    pub progress_fd: Option<i32>,
}

/// What a publish did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    /// Files uploaded.
    pub uploaded: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files already in the bucket, left alone.
    pub present: u64,
    /// Requests made: LIST pages and PUTs.
    pub requests: u64,
}

/// One file of the repository and when it goes up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// Relative to the repository, `/`-separated: also the key under the prefix.
    rel: String,
    size: u64,
    stage: Stage,
    /// Phase B's files as read at the start, under the receivers' lock: the summary that
    /// goes up is one whose objects were all there when phase A's files were listed, even
    /// if a push or a commit lands meanwhile.
    content: Option<Arc<Vec<u8>>>,
}

/// The order of publication: phase A's tiers, then phase B's files one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    /// Content and directory metadata: named by their checksum, never change.
    Content,
    /// Directory trees, which name content and dirmeta.
    Tree,
    /// Detached commit metadata (signatures): may change, goes before its commit.
    CommitMeta,
    /// Commits, which name trees.
    Commit,
    /// Static delta parts.
    DeltaPart,
    /// Static delta superblocks, which name their parts.
    Superblock,
    /// Phase B: the repository's config, uploaded once.
    Config,
    /// Phase B: indexes of the deltas to each commit.
    DeltaIndex,
    /// Phase B: refs.
    Ref,
    /// Phase B: the summary, which names refs, commits and deltas.
    Summary,
    /// Phase B: its signature, last.
    SummarySig,
}

impl Stage {
    /// Whether the file may change under its name (compared with the bucket's copy by MD5).
    fn mutable(self) -> bool {
        !matches!(
            self,
            Stage::Content | Stage::Tree | Stage::Commit | Stage::DeltaPart | Stage::Superblock
        )
    }

    fn phase_b(self) -> bool {
        self >= Stage::Config
    }

    fn cache_control(self) -> &'static str {
        if self.mutable() {
            MUTABLE
        } else {
            IMMUTABLE
        }
    }

    /// The stage of a repository file, `None` for what is not published (locks, tmp/,
    /// state/, remotes' refs).
    fn of(rel: &str) -> Option<Stage> {
        let parts: Vec<&str> = rel.split('/').collect();
        Some(match parts.as_slice() {
            ["config"] => Stage::Config,
            ["summary"] => Stage::Summary,
            ["summary.sig"] => Stage::SummarySig,
            ["objects", _, name] => match name.rsplit_once('.')?.1 {
                "filez" | "file" | "dirmeta" => Stage::Content,
                "dirtree" => Stage::Tree,
                "commitmeta" => Stage::CommitMeta,
                "commit" => Stage::Commit,
                _ => return None,
            },
            ["deltas", _, _, "superblock"] => Stage::Superblock,
            ["deltas", _, _, part] if part.chars().all(|c| c.is_ascii_digit()) => Stage::DeltaPart,
            ["delta-indexes", _, name] if name.ends_with(".index") => Stage::DeltaIndex,
            ["refs", "heads", ..] => Stage::Ref,
            _ => return None,
        })
    }
}

/// Threads that list the repository: a cold listing of `objects/` is 256 directories and
/// one stat per object (~12k for a Debian tree), 0.2 s one after another on these machines.
const LISTERS: usize = 16;

/// The files under `tops` (top-level names) of the repository, relative to it, with their
/// stage; what is not published is left out. What each top holds is listed in parallel.
fn walk(repo: &Path, tops: &[&str]) -> Result<Vec<(String, Stage, std::fs::Metadata)>> {
    let mut below = Vec::new();
    for top in tops {
        let path = repo.join(top);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {
                for entry in std::fs::read_dir(&path)
                    .with_context(|| format!("reading {}", path.display()))?
                {
                    let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                    below.push(Path::new(top).join(entry.file_name()));
                }
            }
            Ok(_) => below.push(PathBuf::from(top)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    let listed = osbuild_core::parallel::map(&below, LISTERS, |rel| walk_from(repo, rel.clone()))?;
    Ok(listed.into_iter().flatten().collect())
}

/// The publishable files at and below `start` (relative to the repository), one by one.
fn walk_from(repo: &Path, start: PathBuf) -> Result<Vec<(String, Stage, std::fs::Metadata)>> {
    let mut found = Vec::new();
    let mut stack = vec![start];
    while let Some(rel) = stack.pop() {
        let path = repo.join(&rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if meta.is_dir() {
            for entry in
                std::fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?
            {
                let entry = entry.with_context(|| format!("reading {}", path.display()))?;
                stack.push(rel.join(entry.file_name()));
            }
            continue;
        }
        let Some(rel_str) = rel.to_str() else {
            continue;
        };
        if let Some(stage) = Stage::of(rel_str) {
            found.push((rel_str.to_string(), stage, meta));
        }
    }
    Ok(found)
}

/// Every publishable file of the repository at `repo`, in publication order. Phase B's
/// files are read first, while no receive publishes; phase A's are listed after, so that
/// every object the summary read names is among them (objects land before refs).
fn scan(repo: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    {
        let _lock = crate::receive::lock::RepoLock::shared(repo);
        for (rel, stage, _) in walk(
            repo,
            &["config", "summary", "summary.sig", "refs", "delta-indexes"],
        )? {
            let path = repo.join(&rel);
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            items.push(Item {
                rel,
                size: data.len() as u64,
                stage,
                content: Some(Arc::new(data)),
            });
        }
    }
    for (rel, stage, meta) in walk(repo, &["objects", "deltas"])? {
        items.push(Item {
            rel,
            size: meta.len(),
            stage,
            content: None,
        });
    }
    items.sort_by(|a, b| (a.stage, &a.rel).cmp(&(b.stage, &b.rel)));
    Ok(items)
}

/// How far ahead of the uploads the kernel is asked to read the repository's files.
const READ_AHEAD: u64 = 64 << 20;

/// Asks the kernel to read phase A's files into the page cache in upload order, at most
/// [`READ_AHEAD`] bytes ahead of the uploads, so that each upload's read is a copy from
/// memory (measured: about a quarter less CPU for the client than reading each file in
/// tokio's blocking pool, and the two cores are what a fresh publish is bound by).
/// `uploaded` is the publish's count of bytes uploaded. Stops when dropped.
struct ReadAhead {
    stop: Arc<AtomicBool>,
}

impl ReadAhead {
    fn start(repo: &Path, items: &[Item], uploaded: Arc<AtomicU64>) -> Self {
        let files: Vec<(PathBuf, u64)> = items
            .iter()
            .filter(|i| i.content.is_none())
            .map(|i| (repo.join(&i.rel), i.size))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut hinted = 0u64;
            for (path, size) in files {
                while hinted > uploaded.load(Ordering::Relaxed) + READ_AHEAD {
                    if stopped.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                osbuild_core::fsutil::read_ahead(&path, 0);
                hinted += size;
            }
        });
        ReadAhead { stop }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the bucket holds under the prefix: key (relative to the prefix) -> (size, ETag).
type Inventory = HashMap<String, (u64, Option<String>)>;

/// The MD5 of an item as S3 ETags of single-part uploads spell it.
fn md5_hex(repo: &Path, item: &Item) -> Result<String> {
    Ok(osbuild_core::hex(Md5::digest(
        item_bytes(repo, item)?.as_slice(),
    )))
}

/// An item's bytes: as read at the start for phase B, else from its file.
fn item_bytes(repo: &Path, item: &Item) -> Result<Arc<Vec<u8>>> {
    match &item.content {
        Some(c) => Ok(c.clone()),
        None => {
            let path = repo.join(&item.rel);
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            Ok(Arc::new(data))
        }
    }
}

/// Whether `item` must be uploaded given the bucket's copy; an error for a delta whose
/// name the bucket already holds with other content.
fn needed(repo: &Path, item: &Item, have: Option<&(u64, Option<String>)>) -> Result<bool> {
    let Some((size, etag)) = have else {
        return Ok(true);
    };
    match item.stage {
        Stage::DeltaPart | Stage::Superblock if *size != item.size => bail!(
            "static delta file {} differs in the bucket ({} bytes there, {} here): a delta is never rewritten under its name, as clients would refuse it; delete the local delta (ostree static-delta delete) and publish again",
            item.rel,
            size,
            item.size
        ),
        Stage::Config => Ok(false),
        s if s.mutable() => {
            let same = *size == item.size
                && etag.as_deref().map(|e| e.trim_matches('"').to_string())
                    == Some(md5_hex(repo, item)?);
            Ok(!same)
        }
        _ => Ok(false),
    }
}

/// The S3 client, path-style (third-party stores), with credentials from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) or the profile file
/// (`~/.aws/credentials`, `AWS_PROFILE`).
fn client(opts: &S3Options) -> Result<AmazonS3> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&opts.to.bucket)
        .with_virtual_hosted_style_request(false);
    let region = opts
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region);
    if let Some(endpoint) = &opts.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    let (id, secret, token) = credentials()?;
    b = b.with_access_key_id(id).with_secret_access_key(secret);
    if let Some(t) = token {
        b = b.with_token(t);
    }
    b.build()
        .with_context(|| format!("setting up the S3 client for {}", opts.to))
}

/// Access key, secret and session token: the environment's, else the profile file's.
fn credentials() -> Result<(String, String, Option<String>)> {
    if let (Ok(id), Ok(secret)) = (
        std::env::var("AWS_ACCESS_KEY_ID"),
        std::env::var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok((id, secret, std::env::var("AWS_SESSION_TOKEN").ok()));
    }
    let file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".aws/credentials")));
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    let text = file
        .as_ref()
        .and_then(|f| std::fs::read_to_string(f).ok())
        .unwrap_or_default();
    let found = profile_keys(&text, &profile);
    match (found.get("aws_access_key_id"), found.get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok((
            id.clone(),
            secret.clone(),
            found.get("aws_session_token").cloned(),
        )),
        _ => bail!(
            "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile [{profile}] in {}",
            file.map_or("~/.aws/credentials".into(), |f| f.display().to_string())
        ),
    }
}

/// The keys of `[profile]` in an AWS credentials file (INI).
fn profile_keys(text: &str, profile: &str) -> HashMap<String, String> {
    let mut current = None;
    let mut keys = HashMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().trim_start_matches("profile ").to_string());
        } else if current.as_deref() == Some(profile) {
            if let Some((k, v)) = line.split_once('=') {
                keys.insert(k.trim().to_lowercase(), v.trim().to_string());
            }
        }
    }
    keys
}

/// What an S3 error means for the user, naming the bucket and endpoint.
fn explain(e: &object_store::Error, opts: &S3Options) -> String {
    let endpoint = opts.endpoint.as_deref().unwrap_or("AWS S3");
    let text = format!("{e}");
    let what = if text.contains("NoSuchBucket") || matches!(e, object_store::Error::NotFound { .. })
    {
        format!(
            "bucket {} does not exist at {endpoint}: create it first",
            opts.to.bucket
        )
    } else if text.contains("403")
        || text.contains("AccessDenied")
        || text.contains("InvalidAccessKeyId")
        || text.contains("SignatureDoesNotMatch")
    {
        format!(
            "{endpoint} refused the credentials for bucket {} (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the key's permissions)",
            opts.to.bucket
        )
    } else if text.contains("error sending request")
        || text.contains("Connection refused")
        || text.contains("connect")
    {
        format!("cannot reach the S3 endpoint {endpoint}")
    } else {
        format!("S3 request to {endpoint} failed")
    };
    format!("{what}: {}", text.lines().next().unwrap_or_default())
}

/// The runtime that sends a publish's or a prune's requests. One thread drives every
/// request and connection: the work per request is small, and with a thread per core each
/// request cost two cross-thread wake-ups (the request on one, its connection on another).
/// Measured on the fresh publish: a fifth less client CPU, the same time.
fn runtime(what: &str) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .with_context(|| format!("starting {what}'s runtime"))
}

/// Publish the archive repository at `repo` to the bucket.
pub fn publish(repo: &Path, opts: &S3Options) -> Result<Published> {
    // Refuses what is not an archive repository before anything is listed or sent.
    osbuild_core::repo::open_archive(repo)?;
    anyhow::ensure!(opts.jobs > 0, "--jobs 0: give at least 1 parallel upload");
    // The repository is listed while the client starts and the bucket is listed.
    let (scanned, scanning) = tokio::sync::oneshot::channel();
    let scan_repo = repo.to_path_buf();
    std::thread::spawn(move || {
        let _ = scanned.send(scan(&scan_repo));
    });
    let store = Arc::new(client(opts)?);
    let runtime = runtime("the uploader")?;
    let mut events = opts.progress_fd.map(ProgressFd::open).transpose()?;
    if let Some(ev) = &mut events {
        ev.send(&ProgressEvent::Start {
            version: PROGRESS_PROTOCOL.into(),
        });
    }
    let result = runtime.block_on(run(repo, opts, scanning, store, events.as_mut()));
    if let Some(ev) = &mut events {
        ev.send(&ProgressEvent::End {
            task: "publish".into(),
            id: opts.to.to_string(),
            ok: result.is_ok(),
            message: match &result {
                Ok(p) => format!("{} files, {} uploaded", p.uploaded, human_bytes(p.bytes)),
                Err(e) => format!("{e:#}"),
            },
        });
    }
    result
}

fn key_of(opts: &S3Options, rel: &str) -> Key {
    if opts.to.prefix.is_empty() {
        Key::from(rel)
    } else {
        Key::from(format!("{}/{rel}", opts.to.prefix))
    }
}

async fn inventory(store: &AmazonS3, opts: &S3Options, requests: &AtomicU64) -> Result<Inventory> {
    let prefix = (!opts.to.prefix.is_empty()).then(|| Key::from(opts.to.prefix.as_str()));
    let mut listed = store.list(prefix.as_ref());
    let mut have = Inventory::new();
    let mut n = 0u64;
    while let Some(meta) = listed.next().await {
        let meta = meta.map_err(|e| anyhow::anyhow!(explain(&e, opts)))?;
        n += 1;
        let key = meta.location.as_ref();
        let rel = match &prefix {
            Some(p) => key
                .strip_prefix(p.as_ref())
                .map(|k| k.trim_start_matches('/'))
                .unwrap_or(key),
            None => key,
        };
        have.insert(rel.to_string(), (meta.size, meta.e_tag.clone()));
    }
    // A LIST page holds up to 1000 keys.
    requests.fetch_add(1 + n / 1000, Ordering::Relaxed);
    Ok(have)
}

async fn upload(
    store: &AmazonS3,
    opts: &S3Options,
    repo: &Path,
    item: &Item,
    requests: &AtomicU64,
) -> Result<()> {
    // Read in place: [`ReadAhead`] has the file in the page cache by now, and handing
    // each read to tokio's blocking pool cost more in thread wake-ups than the read.
    let data = Arc::unwrap_or_clone(item_bytes(repo, item)?);
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::CacheControl, item.stage.cache_control().into());
    // Never a Content-Encoding: libostree sends no Accept-Encoding and reads the bytes as
    // they are.
    let put = PutOptions {
        attributes,
        ..PutOptions::default()
    };
    requests.fetch_add(1, Ordering::Relaxed);
    store
        .put_opts(&key_of(opts, &item.rel), PutPayload::from(data), put)
        .await
        .map_err(|e| anyhow::anyhow!("uploading {}: {}", item.rel, explain(&e, opts)))?;
    Ok(())
}

async fn run(
    repo: &Path,
    opts: &S3Options,
    scanning: tokio::sync::oneshot::Receiver<Result<Vec<Item>>>,
    store: Arc<AmazonS3>,
    mut events: Option<&mut ProgressFd>,
) -> Result<Published> {
    let requests = AtomicU64::new(0);
    let listed = inventory(&store, opts, &requests).await;
    // What is wrong with the repository is said first, as when it was listed first.
    let items = scanning
        .await
        .map_err(|_| anyhow::anyhow!("listing {}: the listing stopped", repo.display()))??;
    let have = listed?;
    let mut todo = Vec::new();
    let mut present = 0u64;
    for item in &items {
        if needed(repo, item, have.get(&item.rel))? {
            todo.push(item.clone());
        } else {
            present += 1;
        }
    }
    let total_bytes: u64 = todo.iter().map(|i| i.size).sum();
    let total = todo.len() as u64;
    let progress = Progress::counter(format!("Publishing to {}", opts.to));
    let done = AtomicU64::new(0);
    let done_bytes = Arc::new(AtomicU64::new(0));
    let _read_ahead = ReadAhead::start(repo, &todo, done_bytes.clone());
    let report = |events: &mut Option<&mut ProgressFd>| {
        let (d, b) = (
            done.load(Ordering::Relaxed),
            done_bytes.load(Ordering::Relaxed),
        );
        progress.set(b, total_bytes);
        if let Some(ev) = events {
            ev.send(&ProgressEvent::ProgressBytes {
                task: "publish".into(),
                description: format!("Publishing to {}", opts.to),
                id: opts.to.to_string(),
                bytes_cached: 0,
                bytes: b,
                bytes_total: total_bytes,
                steps_cached: 0,
                steps: d,
                steps_total: total,
            });
        }
    };
    // Phase A: tier by tier, each in parallel; a tier starts when the one below is up.
    // `todo` is sorted by stage: each run of one stage is a tier.
    for group in todo.chunk_by(|a, b| a.stage == b.stage) {
        if group[0].stage.phase_b() {
            // Phase B: one at a time, in order, and only after all of phase A.
            for item in group {
                upload(&store, opts, repo, item, &requests).await?;
                done.fetch_add(1, Ordering::Relaxed);
                done_bytes.fetch_add(item.size, Ordering::Relaxed);
                report(&mut events);
            }
            continue;
        }
        let mut uploads = stream::iter(group.iter().map(|item| {
            let store = store.clone();
            let requests = &requests;
            async move {
                upload(&store, opts, repo, item, requests).await?;
                Ok::<u64, anyhow::Error>(item.size)
            }
        }))
        .buffer_unordered(opts.jobs);
        while let Some(size) = uploads.try_next().await? {
            done.fetch_add(1, Ordering::Relaxed);
            done_bytes.fetch_add(size, Ordering::Relaxed);
            report(&mut events);
        }
    }
    progress.finish(format!(
        "Published to {}: {} files uploaded ({}), {} already there",
        opts.to,
        total,
        human_bytes(total_bytes),
        present
    ));
    Ok(Published {
        uploaded: total,
        bytes: total_bytes,
        present,
        requests: requests.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_urls() {
        let b: BucketUrl = "s3://fleet-repo/os/stable/".parse().unwrap();
        assert_eq!(
            (b.bucket.as_str(), b.prefix.as_str()),
            ("fleet-repo", "os/stable")
        );
        assert_eq!(b.to_string(), "s3://fleet-repo/os/stable");
        let b: BucketUrl = "s3://fleet-repo".parse().unwrap();
        assert_eq!(b.prefix, "");
        for bad in ["https://x/y", "s3://", "s3://Upper", "s3://a_b/c"] {
            assert!(bad.parse::<BucketUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_parallel_listing_finds_every_publishable_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path();
        let mut expected = Vec::new();
        for i in 0..300u32 {
            let rel = format!(
                "objects/{:02x}/{}.filez",
                i % 256,
                format!("{i:02x}").repeat(31)
            );
            expected.push(rel);
        }
        let c = "cd".repeat(31);
        expected.extend([
            format!("objects/ab/{c}.dirtree"),
            format!("deltas/ab/{c}/0"),
            format!("deltas/ab/{c}/superblock"),
            "config".to_string(),
        ]);
        for rel in expected
            .iter()
            .chain([&format!("objects/ab/{c}.lock"), &"tmp/x".to_string()])
        {
            let path = repo.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, rel.as_bytes()).unwrap();
        }
        let mut found: Vec<(String, u64)> = walk(repo, &["objects", "deltas", "config", "summary"])
            .unwrap()
            .into_iter()
            .map(|(rel, _, meta)| (rel, meta.len()))
            .collect();
        found.sort();
        expected.sort();
        let expected: Vec<(String, u64)> = expected
            .into_iter()
            .map(|r| {
                let n = r.len() as u64;
                (r, n)
            })
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn stages_order_what_names_after_what_is_named() {
        let c = "ab".repeat(31);
        let cases = [
            (format!("objects/ab/{c}.filez"), Some(Stage::Content)),
            (format!("objects/ab/{c}.dirmeta"), Some(Stage::Content)),
            (format!("objects/ab/{c}.dirtree"), Some(Stage::Tree)),
            (
                format!("objects/ab/{c}.commitmeta"),
                Some(Stage::CommitMeta),
            ),
            (format!("objects/ab/{c}.commit"), Some(Stage::Commit)),
            (format!("deltas/ab/{c}/0"), Some(Stage::DeltaPart)),
            (format!("deltas/ab/{c}/superblock"), Some(Stage::Superblock)),
            ("config".into(), Some(Stage::Config)),
            (
                format!("delta-indexes/ab/{c}.index"),
                Some(Stage::DeltaIndex),
            ),
            ("refs/heads/os/x86_64".into(), Some(Stage::Ref)),
            ("summary".into(), Some(Stage::Summary)),
            ("summary.sig".into(), Some(Stage::SummarySig)),
            ("refs/remotes/origin/x".into(), None),
            ("tmp/cache/x".into(), None),
            (format!("objects/ab/{c}.lock"), None),
        ];
        for (rel, stage) in &cases {
            assert_eq!(Stage::of(rel), *stage, "{rel}");
        }
        let order: Vec<Stage> = cases.iter().filter_map(|(_, s)| *s).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted, "the table above is in publication order");
        assert!(Stage::Superblock < Stage::Config && Stage::Ref < Stage::Summary);
        assert_eq!(Stage::Content.cache_control(), IMMUTABLE);
        assert_eq!(Stage::Summary.cache_control(), MUTABLE);
        assert_eq!(Stage::CommitMeta.cache_control(), MUTABLE);
    }

    #[test]
    fn a_delta_is_never_rewritten_and_mutable_files_are_compared_by_md5() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("summary"), b"new summary").unwrap();
        let summary = Item {
            rel: "summary".into(),
            size: 11,
            stage: Stage::Summary,
            content: None,
        };
        let md5 = md5_hex(dir.path(), &summary).unwrap();
        assert!(needed(dir.path(), &summary, None).unwrap());
        assert!(!needed(
            dir.path(),
            &summary,
            Some(&(11, Some(format!("\"{md5}\""))))
        )
        .unwrap());
        assert!(needed(dir.path(), &summary, Some(&(11, Some("\"0000\"".into())))).unwrap());
        let part = Item {
            rel: "deltas/ab/cd/0".into(),
            size: 10,
            stage: Stage::DeltaPart,
            content: None,
        };
        assert!(!needed(dir.path(), &part, Some(&(10, None))).unwrap());
        let err = needed(dir.path(), &part, Some(&(9, None)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("never rewritten"), "{err}");
        let object = Item {
            rel: "objects/ab/cd.filez".into(),
            size: 5,
            stage: Stage::Content,
            content: None,
        };
        assert!(!needed(dir.path(), &object, Some(&(5, None))).unwrap());
    }

    #[test]
    fn profile_files_are_read() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[profile ci]\nAWS_ACCESS_KEY_ID=C\naws_secret_access_key=D\n";
        assert_eq!(profile_keys(text, "default")["aws_access_key_id"], "A");
        assert_eq!(profile_keys(text, "ci")["aws_secret_access_key"], "D");
        assert!(profile_keys(text, "none").is_empty());
    }
}
