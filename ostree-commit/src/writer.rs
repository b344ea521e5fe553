//! Writing a tree's objects into an archive repository: in parallel, and only what
//! changed since the last commit of the tree.
//!
//! libostree's `write_directory_to_mtree` reads, checksums and compresses one file at a
//! time, and every commit of the same tree does all of it again. Here the tree is scanned
//! first; files whose checksum the [`ChecksumCache`] knows (and whose object the repo has)
//! are not read at all; the rest are written by one worker per core, each with a
//! repository handle and transaction of its own, through libostree's `write_content` (its
//! object format, compression and fsync, unchanged). The directories are then written on
//! the caller's handle through a `MutableTree`, so the root is the one
//! `write_directory_to_mtree` (and `ostree commit`) gives for the same tree.

use anyhow::{bail, Context, Result};
use osbuild_core::gio::prelude::*;
use osbuild_core::glib::{self, translate::IntoGlib};
use osbuild_core::{gio, ostree};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The extended attributes of a file, in libostree's canonical form: names sorted, each
/// with its trailing NUL (GVariant `a(ayay)`).
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// How far the writing has come, shared with the progress reporter.
#[derive(Debug, Default)]
pub(crate) struct WriteProgress {
    /// Files and symlinks in the tree.
    pub(crate) files_total: AtomicU64,
    /// Of those, done (written, or known from the cache).
    pub(crate) files_done: AtomicU64,
    /// Bytes of file content in the tree.
    pub(crate) bytes_total: AtomicU64,
    /// Of those, done.
    pub(crate) bytes_done: AtomicU64,
    /// Files the checksum cache answered for.
    pub(crate) files_cached: AtomicU64,
    /// Their bytes.
    pub(crate) bytes_cached: AtomicU64,
}

/// What [`write_tree`] wrote.
pub(crate) struct Written {
    /// The root directory, to commit.
    pub(crate) root: ostree::RepoFile,
    /// The commit's `ostree.sizes` metadata.
    pub(crate) sizes: glib::Variant,
    /// The updated checksum cache, to save once the commit has landed.
    pub(crate) cache: ChecksumCache,
}

/// Everything that can change a file's content object, as `lstat` and the xattrs say.
/// The ctime changes whenever the content, mode, owner or xattrs do, and no one can set
/// it back, so a file rewritten with its old size and mtime still misses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
    uid: u32,
    gid: u32,
    xattrs: u64,
}

/// File checksums by [`CacheKey`], kept beside the repository (`.NAME.osbuild-checksums`
/// next to `NAME`), so that a re-commit does not read or compress unchanged files again.
/// An entry is used only if the repository has the object it names.
#[derive(Debug, Default)]
pub(crate) struct ChecksumCache {
    path: Option<PathBuf>,
    entries: HashMap<CacheKey, String>,
    /// The keys in the order of the file: that in which a static delta from the commit
    /// last written reads its files (see [`delta_order`]).
    order: Vec<CacheKey>,
    /// Directory tree checksums of the commit last written, by [`Fingerprint`]: an
    /// unchanged directory is taken whole from the parent instead of being serialized,
    /// checksummed and looked up again (see [`mark_unchanged`]).
    dirs: HashMap<Fingerprint, String>,
}

/// A digest of everything a directory's dirtree object holds: its files' names and
/// content checksums, its subdirectories' names, fingerprints, owners, modes and xattrs
/// (their dirmeta). Equal fingerprints give equal dirtrees.
type Fingerprint = [u8; 32];

/// Cache lines of directories start with this; a file's line starts with a number.
const DIR_LINE: &str = "dir";

impl ChecksumCache {
    /// Where the cache of the repository at `repo` lives.
    pub(crate) fn path_for(repo: &Path) -> Option<PathBuf> {
        let name = repo.file_name()?.to_str()?;
        Some(repo.with_file_name(format!(".{name}.osbuild-checksums")))
    }

    /// The cache of `repo`; empty when there is none or it cannot be read (it is only a
    /// cache: a bad one costs time, never correctness).
    pub(crate) fn load(repo: &Path) -> ChecksumCache {
        let path = Self::path_for(repo);
        let mut cache = ChecksumCache {
            path,
            ..Default::default()
        };
        if let Some(text) = cache.path.as_ref().and_then(|p| fs::read_to_string(p).ok()) {
            for line in text.lines() {
                if let Some((fp, sum)) = parse_dir_line(line) {
                    cache.dirs.insert(fp, sum);
                } else if let Some((key, sum)) = parse_line(line) {
                    if cache.entries.insert(key.clone(), sum).is_none() {
                        cache.order.push(key);
                    }
                }
            }
        }
        cache
    }

    /// The distinct checksums it holds, in the order of the file.
    pub(crate) fn checksums(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.order
            .iter()
            .filter_map(|k| self.entries.get(k))
            .filter(|sum| seen.insert(sum.as_str()))
            .cloned()
            .collect()
    }

    /// Whether it knows no file.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What a static delta from the commit it was saved for reads (its directories and
    /// files, in the delta's order); `None` for an empty cache.
    pub(crate) fn delta_reads(&self) -> Option<osbuild_core::repo::DeltaReads> {
        if self.is_empty() {
            return None;
        }
        let dirtrees: HashSet<&String> = self.dirs.values().collect();
        Some(osbuild_core::repo::DeltaReads::Known {
            dirtrees: dirtrees.into_iter().cloned().collect(),
            files: self.checksums(),
        })
    }

    /// Write the cache (a temporary file renamed into place). Failing to is a warning.
    pub(crate) fn save(&self) {
        let Some(path) = &self.path else { return };
        let mut text = String::with_capacity(self.entries.len() * 160);
        for k in &self.order {
            let Some(sum) = self.entries.get(k) else {
                continue;
            };
            text.push_str(&format!(
                "{} {} {} {} {} {} {} {} {:016x} {sum}\n",
                k.dev, k.ino, k.size, k.mtime_ns, k.ctime_ns, k.mode, k.uid, k.gid, k.xattrs
            ));
        }
        for (fp, sum) in &self.dirs {
            text.push_str(&format!("{DIR_LINE} {} {sum}\n", osbuild_core::hex(fp)));
        }
        let tmp = path.with_extension("tmp");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, path)) {
            let _ = fs::remove_file(&tmp);
            tracing::warn!("could not save the checksum cache {}: {e}", path.display());
        }
    }
}

fn parse_dir_line(line: &str) -> Option<(Fingerprint, String)> {
    let mut f = line.split(' ');
    if f.next()? != DIR_LINE {
        return None;
    }
    let (fp, sum) = (f.next()?, f.next()?);
    if f.next().is_some() || sum.len() != 64 {
        return None;
    }
    let fp: Fingerprint = hex_bytes(fp).ok()?.try_into().ok()?;
    Some((fp, sum.to_string()))
}

fn parse_line(line: &str) -> Option<(CacheKey, String)> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 10 || f[9].len() != 64 {
        return None;
    }
    Some((
        CacheKey {
            dev: f[0].parse().ok()?,
            ino: f[1].parse().ok()?,
            size: f[2].parse().ok()?,
            mtime_ns: f[3].parse().ok()?,
            ctime_ns: f[4].parse().ok()?,
            mode: f[5].parse().ok()?,
            uid: f[6].parse().ok()?,
            gid: f[7].parse().ok()?,
            xattrs: u64::from_str_radix(f[8], 16).ok()?,
        },
        f[9].to_string(),
    ))
}

/// A file or symlink of the tree.
struct FileEntry {
    path: PathBuf,
    meta: fs::Metadata,
    /// The symlink's target, for a symlink.
    target: Option<String>,
    xattrs: Xattrs,
    key: CacheKey,
    /// Its content object, once known.
    checksum: Option<String>,
}

/// A directory of the tree: its own metadata and its entries, by name.
struct DirEntry {
    meta: fs::Metadata,
    xattrs: Xattrs,
    dirs: BTreeMap<String, DirEntry>,
    /// Indexes into the scan's files.
    files: BTreeMap<String, usize>,
    /// Its [`Fingerprint`], once its files' checksums are known.
    fingerprint: Fingerprint,
    /// Its dirtree, when it is the parent commit's, unchanged (and so are all the
    /// directories under it).
    unchanged: Option<String>,
}

#[derive(Default)]
struct Scan {
    files: Vec<FileEntry>,
    /// The first file seen with each (device, inode): hard links are written once.
    inodes: HashMap<(u64, u64), usize>,
    /// File index -> the index whose checksum it shares (a hard link), or itself.
    same_as: Vec<usize>,
}

fn name_of(path: &Path) -> Result<String> {
    let name = path.file_name().context("a tree entry has a name")?;
    name.to_str().map(str::to_string).with_context(|| {
        format!(
            "{}: the name is not UTF-8, which OSTree cannot store: rename it",
            path.display()
        )
    })
}

fn read_xattrs(path: &Path) -> Result<Xattrs> {
    let what = || format!("reading the extended attributes of {}", path.display());
    let len = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        // Filesystems without xattrs (some tmpfs setups) have none to keep.
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(std::io::Error::from(e)).with_context(what),
    };
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut list = vec![0u8; len];
    let n = rustix::fs::llistxattr(path, &mut list[..])
        .map_err(std::io::Error::from)
        .with_context(what)?;
    list.truncate(n);
    let mut names: Vec<&[u8]> = list.split(|b| *b == 0).filter(|n| !n.is_empty()).collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let size = rustix::fs::lgetxattr_query(path, name)
            .map_err(std::io::Error::from)
            .with_context(what)?;
        let mut value = vec![0u8; size];
        let n = rustix::fs::lgetxattr(path, name, &mut value[..])
            .map_err(std::io::Error::from)
            .with_context(what)?;
        value.truncate(n);
        let mut name = name.to_vec();
        name.push(0);
        out.push((name, value));
    }
    Ok(out)
}

fn xattrs_digest(xattrs: &Xattrs) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for (n, v) in xattrs {
        h.update((n.len() as u64).to_le_bytes());
        h.update(n);
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap_or_default())
}

fn ns(secs: i64, nsec: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nsec)
}

/// One entry of a directory, as read from disk.
struct Listed {
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
    /// For a symlink, its target; None for a file or directory.
    target: Option<String>,
    /// For a file or symlink (a directory's are in its own [`Listing`]).
    xattrs: Xattrs,
}

/// What one directory holds, in `read_dir`'s order, and its own xattrs.
struct Listing {
    xattrs: Xattrs,
    entries: Vec<Listed>,
}

/// Read one directory: its xattrs, and each entry's metadata, symlink target and xattrs.
fn list_dir(path: &Path) -> Result<Listing> {
    let mut listing = Listing {
        xattrs: read_xattrs(path)?,
        entries: Vec::new(),
    };
    let entries =
        fs::read_dir(path).with_context(|| format!("reading directory {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading directory {}", path.display()))?;
        let child = entry.path();
        let name = name_of(&child)?;
        let meta = fs::symlink_metadata(&child)
            .with_context(|| format!("reading the metadata of {}", child.display()))?;
        let kind = meta.file_type();
        let (target, xattrs) = if kind.is_dir() {
            (None, Vec::new())
        } else if kind.is_symlink() {
            let t = fs::read_link(&child)
                .with_context(|| format!("reading the symlink {}", child.display()))?;
            let t = t.to_str().map(str::to_string).with_context(|| {
                format!(
                    "{}: the symlink's target is not UTF-8: OSTree cannot store it",
                    child.display()
                )
            })?;
            (Some(t), read_xattrs(&child)?)
        } else if kind.is_file() {
            (None, read_xattrs(&child)?)
        } else {
            bail!(
                "{}: a device node, socket or FIFO cannot be committed (OSTree stores files, \
                 symlinks and directories): remove it from the tree",
                child.display()
            );
        };
        listing.entries.push(Listed {
            name,
            path: child,
            meta,
            target,
            xattrs,
        });
    }
    Ok(listing)
}

/// Every directory of a tree, as [`list_tree`] read it.
pub(crate) struct TreeListing(HashMap<PathBuf, Listing>);

/// List every directory under `tree` (itself included) with `threads` threads: a cold
/// tree costs one disk read per inode, and several at once keep the disk busy. The first
/// error stops the walk.
pub(crate) fn list_tree(tree: &Path, threads: usize) -> Result<TreeListing> {
    struct Walk {
        queue: Vec<PathBuf>,
        busy: usize,
        done: HashMap<PathBuf, Listing>,
        error: Option<anyhow::Error>,
    }
    let walk = Mutex::new(Walk {
        queue: vec![tree.to_path_buf()],
        busy: 0,
        done: HashMap::new(),
        error: None,
    });
    let wake = std::sync::Condvar::new();
    let lock = || walk.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let dir = {
                    let mut w = lock();
                    loop {
                        if w.error.is_some() {
                            return;
                        }
                        if let Some(d) = w.queue.pop() {
                            w.busy += 1;
                            break d;
                        }
                        // Nothing queued and no one listing: the walk is over.
                        if w.busy == 0 {
                            wake.notify_all();
                            return;
                        }
                        w = wake.wait(w).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let listed = list_dir(&dir);
                let mut w = lock();
                w.busy -= 1;
                match listed {
                    Ok(listing) => {
                        w.queue.extend(
                            listing
                                .entries
                                .iter()
                                .filter(|e| e.meta.is_dir())
                                .map(|e| e.path.clone()),
                        );
                        w.done.insert(dir, listing);
                    }
                    Err(e) => {
                        w.error.get_or_insert(e);
                    }
                }
                wake.notify_all();
            });
        }
    });
    let w = walk.into_inner().unwrap_or_else(|e| e.into_inner());
    match w.error {
        Some(e) => Err(e),
        None => Ok(TreeListing(w.done)),
    }
}

/// Build the tree of `path` from the listings, numbering its files in `scan`.
fn scan_dir(
    path: &Path,
    meta: fs::Metadata,
    listings: &mut HashMap<PathBuf, Listing>,
    scan: &mut Scan,
) -> Result<DirEntry> {
    let listing = listings
        .remove(path)
        .with_context(|| format!("directory {} was not listed", path.display()))?;
    let mut dir = DirEntry {
        xattrs: listing.xattrs,
        meta,
        dirs: BTreeMap::new(),
        files: BTreeMap::new(),
        fingerprint: [0; 32],
        unchanged: None,
    };
    for e in listing.entries {
        if e.meta.is_dir() {
            let sub = scan_dir(&e.path, e.meta, listings, scan)?;
            dir.dirs.insert(e.name, sub);
            continue;
        }
        let meta = e.meta;
        let key = CacheKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            xattrs: xattrs_digest(&e.xattrs),
        };
        let index = scan.files.len();
        let first = *scan.inodes.entry((key.dev, key.ino)).or_insert(index);
        scan.same_as.push(first);
        scan.files.push(FileEntry {
            path: e.path,
            meta,
            target: e.target,
            xattrs: e.xattrs,
            key,
            checksum: None,
        });
        dir.files.insert(e.name, index);
    }
    Ok(dir)
}

/// Fingerprint every directory under `dir` (itself included), bottom up, and mark those
/// whose fingerprint `known` maps to a dirtree of the parent commit, with every directory
/// under them marked too: those are the parent's, whole. The parent is complete, so its
/// dirtrees are all in the repository.
fn mark_unchanged(
    dir: &mut DirEntry,
    scan: &Scan,
    known: &HashMap<Fingerprint, String>,
    parent: &ParentSizes,
) -> Result<()> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(b"osbuild dirtree 1");
    put(&(dir.files.len() as u64).to_le_bytes());
    for (name, &index) in &dir.files {
        put(name.as_bytes());
        let sum = scan.files[index].checksum.as_deref();
        put(sum.context("a file's checksum is known")?.as_bytes());
    }
    let mut all_unchanged = true;
    put(&(dir.dirs.len() as u64).to_le_bytes());
    for (name, sub) in dir.dirs.iter_mut() {
        mark_unchanged(sub, scan, known, parent)?;
        all_unchanged &= sub.unchanged.is_some();
        put(name.as_bytes());
        put(&sub.fingerprint);
        put(&sub.meta.uid().to_le_bytes());
        put(&sub.meta.gid().to_le_bytes());
        put(&sub.meta.mode().to_le_bytes());
        put(&(sub.xattrs.len() as u64).to_le_bytes());
        for (n, v) in &sub.xattrs {
            put(n);
            put(v);
        }
    }
    dir.fingerprint = h.finalize().into();
    dir.unchanged = known
        .get(&dir.fingerprint)
        .filter(|sum| all_unchanged && parent.dirtrees.contains_key(*sum))
        .cloned();
    Ok(())
}

/// The fingerprints and dirtrees of `dir` and every directory under it, all unchanged.
fn unchanged_below(dir: &DirEntry, out: &mut Vec<(Fingerprint, String)>) {
    if let Some(sum) = &dir.unchanged {
        out.push((dir.fingerprint, sum.clone()));
    }
    for sub in dir.dirs.values() {
        unchanged_below(sub, out);
    }
}

/// The keys of the tree's files in the order a static delta from its commit reads their
/// objects (libostree's walk: a directory's files by name, then its subdirectories by
/// name, depth first). Saved in this order, the cache tells the next commit in which
/// order to read the parent's objects ahead of the delta, which then finds each one
/// already read instead of waiting for the last of them.
fn delta_order(root: &DirEntry, scan: &Scan) -> Vec<CacheKey> {
    fn walk(dir: &DirEntry, scan: &Scan, seen: &mut HashSet<usize>, out: &mut Vec<CacheKey>) {
        for &index in dir.files.values() {
            let first = scan.same_as[index];
            if seen.insert(first) {
                out.push(scan.files[first].key.clone());
            }
        }
        for sub in dir.dirs.values() {
            walk(sub, scan, seen, out);
        }
    }
    let mut out = Vec::with_capacity(scan.files.len());
    walk(root, scan, &mut HashSet::new(), &mut out);
    out
}

fn xattrs_variant(xattrs: &Xattrs) -> glib::Variant {
    xattrs.to_variant()
}

/// The stat fields libostree's object headers use, as a `GFileInfo`.
fn file_info(meta: &fs::Metadata, target: Option<&str>) -> gio::FileInfo {
    let info = gio::FileInfo::new();
    info.set_attribute_uint32("unix::uid", meta.uid());
    info.set_attribute_uint32("unix::gid", meta.gid());
    info.set_attribute_uint32("unix::mode", meta.mode());
    match target {
        Some(t) => {
            info.set_file_type(gio::FileType::SymbolicLink);
            info.set_symlink_target(t);
            info.set_size(0);
        }
        None if meta.is_dir() => info.set_file_type(gio::FileType::Directory),
        None => {
            info.set_file_type(gio::FileType::Regular);
            info.set_size(meta.size() as i64);
        }
    }
    info
}

/// Write one file's content object; returns its checksum.
fn write_file(repo: &ostree::Repo, f: &FileEntry) -> Result<String> {
    let cancellable = gio::Cancellable::NONE;
    let info = file_info(&f.meta, f.target.as_deref());
    let input: gio::InputStream = match f.target {
        Some(_) => gio::MemoryInputStream::new().upcast(),
        None => gio::File::for_path(&f.path)
            .read(cancellable)
            .with_context(|| format!("opening {} to commit it", f.path.display()))?
            .upcast(),
    };
    let (stream, len) = ostree::raw_file_to_content_stream(
        &input,
        &info,
        Some(&xattrs_variant(&f.xattrs)),
        cancellable,
    )
    .with_context(|| format!("reading {}", f.path.display()))?;
    let sum = repo
        .write_content(None, &stream, len, cancellable)
        .with_context(|| format!("writing {} into the repository", f.path.display()))?;
    Ok(sum.to_hex())
}

/// Write file `index` of `scan` and count it as done.
fn write_counted(
    repo: &ostree::Repo,
    scan: &Scan,
    index: usize,
    progress: &WriteProgress,
) -> Result<String> {
    let f = &scan.files[index];
    let sum = write_file(repo, f)?;
    progress.files_done.fetch_add(1, Ordering::Relaxed);
    progress
        .bytes_done
        .fetch_add(f.meta.size(), Ordering::Relaxed);
    Ok(sum)
}

/// Up to this many bytes of new files are written one after another on the caller's
/// handle: compressing them takes less than starting parallel writers would.
const SERIAL_WRITE_BYTES: u64 = 1 << 20;

/// Write `files` (indexes into `scan.files`) with `jobs` workers, each on its own handle
/// of the repository at `repo_path` and in its own transaction, committed when it ends.
fn write_files(
    repo_path: &Path,
    scan: &Scan,
    todo: &[usize],
    jobs: usize,
    progress: &WriteProgress,
) -> Result<Vec<(usize, String)>> {
    // No more workers than files: each worker's transaction ends with an fsync of every
    // object directory, also when it wrote nothing.
    let cancellable = gio::Cancellable::NONE;
    osbuild_core::parallel::share(
        todo,
        jobs,
        || {
            let repo = osbuild_core::repo::open_archive(repo_path)?;
            repo.prepare_transaction(cancellable)
                .context("starting a repository transaction")?;
            Ok(repo)
        },
        |repo, &index| Ok((index, write_counted(repo, scan, index, progress)?)),
        |repo, ok| {
            if ok {
                repo.commit_transaction(cancellable)
                    .context("completing the transaction of the tree's files")?;
            } else {
                let _ = repo.abort_transaction(cancellable);
            }
            Ok(())
        },
    )
}

/// Unsigned LEB128, as libostree writes the sizes in `ostree.sizes`.
fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

/// One `ostree.sizes` entry: the checksum's bytes, archived and unpacked sizes, type.
fn size_entry(
    checksum: &str,
    archived: u64,
    unpacked: u64,
    objtype: ostree::ObjectType,
) -> Result<Vec<u8>> {
    let mut buf = hex_bytes(checksum)?;
    push_varint(&mut buf, archived);
    push_varint(&mut buf, unpacked);
    buf.push(objtype.into_glib() as u8);
    Ok(buf)
}

/// An `ostree.sizes` entry as [`size_entry`] (and libostree) writes it: checksum,
/// archived and unpacked size, object type (a file's when absent, as in older commits).
fn read_size_entry(b: &[u8]) -> Option<(String, u64, u64, ostree::ObjectType)> {
    let (sum, mut rest) = (b.get(..32)?, b.get(32..)?);
    let archived = read_varint(&mut rest)?;
    let unpacked = read_varint(&mut rest)?;
    let objtype = match rest {
        [] => ostree::ObjectType::File,
        // The types a commit's tree holds; others are not looked up.
        [t] => [
            ostree::ObjectType::File,
            ostree::ObjectType::DirTree,
            ostree::ObjectType::DirMeta,
        ]
        .into_iter()
        .find(|o| o.into_glib() == i32::from(*t))?,
        _ => return None,
    };
    Some((osbuild_core::hex(sum), archived, unpacked, objtype))
}

/// Unsigned LEB128 from the front of `b`, which moves past it.
fn read_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *b = &b[i + 1..];
            return Some(v);
        }
    }
    None
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("{hex:?} is not a SHA-256 checksum");
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("hex"))
        .collect()
}

/// The object sizes the parent commit recorded (`ostree.sizes`), as (archived, unpacked)
/// bytes by checksum. A complete commit's objects are all in the repository (what
/// `ostree fsck` checks), so these need neither a lookup nor a read.
#[derive(Debug, Default)]
pub(crate) struct ParentSizes {
    files: HashMap<String, (u64, u64)>,
    dirtrees: HashMap<String, (u64, u64)>,
}

impl ParentSizes {
    /// Those of `parent`; none if it is partial (objects may be missing) or records none.
    pub(crate) fn of(repo: &ostree::Repo, parent: Option<&str>) -> ParentSizes {
        let mut out = ParentSizes::default();
        let Some((commit, state)) = parent.and_then(|p| repo.load_commit(p).ok()) else {
            return out;
        };
        if state.contains(ostree::RepoCommitState::PARTIAL) {
            return out;
        }
        // Read here rather than through `commit_get_object_sizes`, whose entries, copied
        // into Rust one by one, took 30-40 ms of a 1 s re-commit.
        let sizes = glib::VariantDict::new(Some(&commit.child_value(0)))
            .lookup_value("ostree.sizes", Some(glib::VariantTy::BYTE_STRING_ARRAY));
        for entry in sizes.iter().flat_map(|s| s.iter()) {
            let Some((sum, archived, unpacked, objtype)) =
                entry.fixed_array::<u8>().ok().and_then(read_size_entry)
            else {
                continue;
            };
            let map = match objtype {
                ostree::ObjectType::File => &mut out.files,
                ostree::ObjectType::DirTree => &mut out.dirtrees,
                _ => continue,
            };
            map.insert(sum, (archived, unpacked));
        }
        out
    }
}

/// Write the objects of `tree` into `repo` (an archive repository at `repo_path`, in a
/// transaction the caller prepared for the directories) with `jobs` parallel writers,
/// skipping the files `cache` knows. `listing` waits for the tree's [`list_tree`], which
/// the caller started early.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_tree(
    repo_path: &Path,
    repo: &ostree::Repo,
    tree: &Path,
    listing: impl FnOnce() -> Result<TreeListing>,
    jobs: usize,
    progress: &WriteProgress,
    mut cache: ChecksumCache,
    parent: &ParentSizes,
) -> Result<Written> {
    let cancellable = gio::Cancellable::NONE;
    let root_meta = fs::symlink_metadata(tree)
        .with_context(|| format!("reading the metadata of {}", tree.display()))?;
    let started = std::time::Instant::now();
    let mut scan = Scan::default();
    let TreeListing(mut listings) = listing()?;
    let mut root = scan_dir(tree, root_meta, &mut listings, &mut scan)?;
    tracing::debug!(
        "scanned {} files in {:?}",
        scan.files.len(),
        started.elapsed()
    );

    // Known files first: no reading, only a check that the repo has the object.
    let mut todo = Vec::new();
    let mut archived_sizes: HashMap<String, u64> = HashMap::new();
    for index in 0..scan.files.len() {
        let f = &scan.files[index];
        progress.files_total.fetch_add(1, Ordering::Relaxed);
        progress
            .bytes_total
            .fetch_add(f.meta.size(), Ordering::Relaxed);
        let size = f.meta.size();
        if scan.same_as[index] != index {
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            progress.bytes_done.fetch_add(size, Ordering::Relaxed);
            continue;
        }
        // The object's size doubles as the check that the repo has it: the parent
        // commit's record, else one stat.
        let known = cache.entries.get(&f.key).and_then(|sum| {
            let archived = match parent.files.get(sum) {
                Some(&(archived, _)) => Some(archived),
                None => repo
                    .query_object_storage_size(ostree::ObjectType::File, sum, cancellable)
                    .ok(),
            };
            archived.map(|a| (sum.clone(), a))
        });
        match known {
            Some((sum, archived)) => {
                archived_sizes.insert(sum.clone(), archived);
                scan.files[index].checksum = Some(sum);
                progress.files_cached.fetch_add(1, Ordering::Relaxed);
                progress.bytes_cached.fetch_add(size, Ordering::Relaxed);
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(size, Ordering::Relaxed);
            }
            None => todo.push(index),
        }
    }
    tracing::debug!(
        "{} files to write after {:?}",
        todo.len(),
        started.elapsed()
    );
    // Big files first, so that no worker is left with one at the end.
    todo.sort_by_key(|&i| std::cmp::Reverse(scan.files[i].meta.size()));
    let todo_bytes: u64 = todo.iter().map(|&i| scan.files[i].meta.size()).sum();
    let written = if todo_bytes <= SERIAL_WRITE_BYTES {
        // A few small files (the usual re-commit): written here, in the caller's
        // transaction, rather than by workers each opening a repository handle and
        // ending a transaction of its own (a syncfs and an fsync per object directory).
        todo.iter()
            .map(|&index| Ok((index, write_counted(repo, &scan, index, progress)?)))
            .collect::<Result<Vec<_>>>()?
    } else {
        write_files(repo_path, &scan, &todo, jobs, progress)?
    };
    for (index, sum) in written {
        scan.files[index].checksum = Some(sum);
    }
    // Hard links share the first link's object; every file is done now.
    let mut entries = HashMap::with_capacity(scan.files.len());
    for index in 0..scan.files.len() {
        let first = scan.same_as[index];
        let sum = scan.files[first]
            .checksum
            .clone()
            .with_context(|| format!("no checksum for {}", scan.files[first].path.display()))?;
        entries.insert(scan.files[index].key.clone(), sum.clone());
        scan.files[index].checksum = Some(sum);
    }
    progress.files_done.store(
        progress.files_total.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    progress.bytes_done.store(
        progress.bytes_total.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    cache.entries = entries;
    cache.order = delta_order(&root, &scan);
    mark_unchanged(&mut root, &scan, &cache.dirs, parent)?;

    tracing::debug!("files written after {:?}", started.elapsed());
    // The directories, through libostree's MutableTree; those unchanged since the parent
    // are the parent's, taken whole (libostree neither loads nor writes them again).
    let mut sizes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut dirmetas: HashMap<(u32, u32, u32, u64), String> = HashMap::new();
    let mtree = ostree::MutableTree::new();
    let mut subtrees = Vec::new();
    let mut unchanged = Vec::new();
    fill(
        repo,
        &root,
        &mtree,
        &scan,
        &mut dirmetas,
        &mut Filled {
            subtrees: &mut subtrees,
            unchanged: &mut unchanged,
        },
        &mut sizes,
    )?;
    let root_file = repo
        .write_mtree(&mtree, cancellable)
        .context("writing the tree's directories")?
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
    subtrees.push((root.fingerprint, mtree));
    tracing::debug!(
        "directories written after {:?} ({} unchanged)",
        started.elapsed(),
        unchanged.len()
    );
    let mut dirtrees: Vec<(Fingerprint, String)> = subtrees
        .iter()
        .map(|(fp, t)| (*fp, t.contents_checksum().to_string()))
        .collect();
    dirtrees.extend(unchanged);
    cache.dirs = dirtrees
        .iter()
        .filter(|(_, sum)| !sum.is_empty())
        .cloned()
        .collect();
    for (_, sum) in dirtrees {
        if sum.is_empty() || sizes.contains_key(&sum) {
            continue;
        }
        if let Some(&(archived, unpacked)) = parent.dirtrees.get(&sum) {
            sizes.insert(
                sum.clone(),
                size_entry(&sum, archived, unpacked, ostree::ObjectType::DirTree)?,
            );
            continue;
        }
        let len = repo
            .load_variant(ostree::ObjectType::DirTree, &sum)
            .with_context(|| format!("reading back the directory object {sum}"))?
            .size() as u64;
        sizes.insert(
            sum.clone(),
            size_entry(&sum, len, len, ostree::ObjectType::DirTree)?,
        );
    }
    for f in &scan.files {
        let sum = f.checksum.as_deref().unwrap_or_default();
        if sizes.contains_key(sum) {
            continue;
        }
        let archived = match archived_sizes.get(sum) {
            Some(&a) => a,
            None => repo
                .query_object_storage_size(ostree::ObjectType::File, sum, cancellable)
                .with_context(|| format!("the size of {}'s object {sum}", f.path.display()))?,
        };
        let unpacked = if f.target.is_some() { 0 } else { f.meta.size() };
        sizes.insert(
            sum.to_string(),
            size_entry(sum, archived, unpacked, ostree::ObjectType::File)?,
        );
    }
    // `aay`, each entry built from its bytes at once (`Vec<u8>::to_variant` makes a
    // variant per byte, which took a quarter of a second here).
    let sizes = glib::Variant::array_from_iter_with_type(
        glib::VariantTy::BYTE_STRING,
        sizes
            .values()
            .map(|e| glib::Variant::array_from_fixed_array(e.as_slice())),
    );
    tracing::debug!("sizes gathered after {:?}", started.elapsed());
    Ok(Written {
        root: root_file,
        sizes,
        cache,
    })
}

/// Fill `mtree` from `dir`: its files' checksums, its subdirectories, and its dirmeta
/// object (written once per distinct owner, mode and xattrs). True when `dir` is the
/// parent's, unchanged, and `mtree` was made its dirtree instead.
fn fill(
    repo: &ostree::Repo,
    dir: &DirEntry,
    mtree: &ostree::MutableTree,
    scan: &Scan,
    dirmetas: &mut HashMap<(u32, u32, u32, u64), String>,
    filled: &mut Filled,
    sizes: &mut BTreeMap<String, Vec<u8>>,
) -> Result<bool> {
    let key = (
        dir.meta.uid(),
        dir.meta.gid(),
        dir.meta.mode(),
        xattrs_digest(&dir.xattrs),
    );
    let meta_sum = match dirmetas.get(&key) {
        Some(s) => s.clone(),
        None => {
            let v = ostree::create_directory_metadata(
                &file_info(&dir.meta, None),
                Some(&xattrs_variant(&dir.xattrs)),
            );
            let sum = repo
                .write_metadata(
                    ostree::ObjectType::DirMeta,
                    None,
                    &v,
                    gio::Cancellable::NONE,
                )
                .context("writing a directory's metadata")?
                .to_hex();
            let len = v.size() as u64;
            sizes.insert(
                sum.clone(),
                size_entry(&sum, len, len, ostree::ObjectType::DirMeta)?,
            );
            dirmetas.insert(key, sum.clone());
            sum
        }
    };
    if let Some(sum) = &dir.unchanged {
        if mtree.fill_empty_from_dirtree(repo, sum, &meta_sum) {
            unchanged_below(dir, filled.unchanged);
            return Ok(true);
        }
    }
    mtree.set_metadata_checksum(&meta_sum);
    for (name, &index) in &dir.files {
        let sum = scan.files[index].checksum.as_deref().unwrap_or_default();
        mtree
            .replace_file(name, sum)
            .with_context(|| format!("adding {name} to its directory"))?;
    }
    for (name, sub) in &dir.dirs {
        let child = mtree
            .ensure_dir(name)
            .with_context(|| format!("adding the directory {name}"))?;
        if !fill(repo, sub, &child, scan, dirmetas, filled, sizes)? {
            filled.subtrees.push((sub.fingerprint, child));
        }
    }
    Ok(false)
}

/// What [`fill`] did with each directory: filled it (its tree, written later by
/// `write_mtree`), or took it whole from the parent (its dirtree, and those under it).
struct Filled<'a> {
    subtrees: &'a mut Vec<(Fingerprint, ostree::MutableTree)>,
    unchanged: &'a mut Vec<(Fingerprint, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_leb128() {
        let mut b = Vec::new();
        let values = [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX];
        for v in values {
            push_varint(&mut b, v);
        }
        assert_eq!(
            b[..12],
            [0, 1, 0x7f, 0x80, 0x01, 0xac, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f]
        );
        let mut rest = b.as_slice();
        for v in values {
            assert_eq!(read_varint(&mut rest), Some(v));
        }
        assert!(rest.is_empty());
        assert_eq!(read_varint(&mut [0x80u8].as_slice()), None);
    }

    #[test]
    fn size_entries_read_back_as_libostree_reads_them() {
        let sum = "ab".repeat(32);
        for (t, archived, unpacked) in [
            (ostree::ObjectType::File, 123_456_789, 987_654_321),
            (ostree::ObjectType::DirTree, 300, 300),
            (ostree::ObjectType::DirMeta, 0, 0),
        ] {
            let entry = size_entry(&sum, archived, unpacked, t).unwrap();
            assert_eq!(
                read_size_entry(&entry),
                Some((sum.clone(), archived, unpacked, t))
            );
            let theirs = glib::Variant::array_from_iter_with_type(
                glib::VariantTy::BYTE_STRING,
                [glib::Variant::array_from_fixed_array(entry.as_slice())],
            );
            let meta = glib::VariantDict::new(None);
            meta.insert_value("ostree.sizes", &theirs);
            let commit = glib::Variant::tuple_from_iter([meta.end()]);
            let parsed = ostree::commit_get_object_sizes(&commit).unwrap();
            assert_eq!(parsed[0].checksum().as_str(), sum);
            assert_eq!(
                (
                    parsed[0].archived(),
                    parsed[0].unpacked(),
                    parsed[0].objtype()
                ),
                (archived, unpacked, t)
            );
        }
        // An entry of an older commit has no type: a file's.
        let mut old = hex_bytes(&sum).unwrap();
        old.extend([5, 6]);
        assert_eq!(
            read_size_entry(&old),
            Some((sum.clone(), 5, 6, ostree::ObjectType::File))
        );
        assert_eq!(read_size_entry(&old[..31]), None);
    }

    #[test]
    fn delta_order_is_libostree_walk_order() {
        // libostree's commit walk: a directory's files by name, then its directories by
        // name, depth first; a hard link's object once, where it is first met.
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for d in ["d", "c", "c/sub"] {
            fs::create_dir(t.join(d)).unwrap();
        }
        for f in ["b", "a", "d/z", "c/y", "c/sub/x", "c/w"] {
            fs::write(t.join(f), f).unwrap();
        }
        fs::hard_link(t.join("a"), t.join("d/link-to-a")).unwrap();
        let TreeListing(mut listings) = list_tree(t, 2).unwrap();
        let mut scan = Scan::default();
        let root = scan_dir(
            t,
            fs::symlink_metadata(t).unwrap(),
            &mut listings,
            &mut scan,
        )
        .unwrap();
        let ino = |f: &str| fs::symlink_metadata(t.join(f)).unwrap().ino();
        let got: Vec<u64> = delta_order(&root, &scan).iter().map(|k| k.ino).collect();
        let want: Vec<u64> = ["a", "b", "c/w", "c/y", "c/sub/x", "d/z"]
            .iter()
            .map(|f| ino(f))
            .collect();
        assert_eq!(got, want);
    }

    /// The tree at `t`, scanned, its files' checksums made up from their content, and
    /// marked against the parent directories `known` and `parent` name.
    fn marked(t: &Path, known: &HashMap<Fingerprint, String>, parent: &ParentSizes) -> DirEntry {
        let TreeListing(mut listings) = list_tree(t, 2).unwrap();
        let mut scan = Scan::default();
        let meta = fs::symlink_metadata(t).unwrap();
        let mut root = scan_dir(t, meta, &mut listings, &mut scan).unwrap();
        for f in &mut scan.files {
            let data = fs::read(&f.path).unwrap();
            f.checksum = Some(osbuild_core::hex(<sha2::Sha256 as sha2::Digest>::digest(
                &data,
            )));
        }
        mark_unchanged(&mut root, &scan, known, parent).unwrap();
        root
    }

    /// Every directory's fingerprint, each given a made-up dirtree checksum, as a
    /// parent commit would hold them.
    fn as_parent(root: &DirEntry) -> (HashMap<Fingerprint, String>, ParentSizes) {
        fn walk(d: &DirEntry, known: &mut HashMap<Fingerprint, String>) {
            known.insert(d.fingerprint, osbuild_core::hex(d.fingerprint));
            d.dirs.values().for_each(|s| walk(s, known));
        }
        let mut known = HashMap::new();
        walk(root, &mut known);
        let mut parent = ParentSizes::default();
        for sum in known.values() {
            parent.dirtrees.insert(sum.clone(), (0, 0));
        }
        (known, parent)
    }

    fn unchanged(root: &DirEntry, path: &str) -> bool {
        let mut d = root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            d = &d.dirs[part];
        }
        d.unchanged.is_some()
    }

    #[test]
    fn only_the_directories_a_change_reaches_are_filled_again() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for d in ["a/deep/er", "a/side", "b"] {
            fs::create_dir_all(t.join(d)).unwrap();
        }
        for f in ["a/deep/er/f", "a/side/g", "b/h", "top"] {
            fs::write(t.join(f), f).unwrap();
        }
        let (known, parent) = as_parent(&marked(t, &HashMap::new(), &ParentSizes::default()));

        // Nothing changed: all of it is the parent's, the root too.
        let root = marked(t, &known, &parent);
        for path in ["", "a", "a/deep", "a/deep/er", "a/side", "b"] {
            assert!(unchanged(&root, path), "{path:?}");
        }

        // A file deep down: it and its ancestors are filled again, nothing else.
        fs::write(t.join("a/deep/er/f"), "other").unwrap();
        let root = marked(t, &known, &parent);
        for (path, want) in [
            ("", false),
            ("a", false),
            ("a/deep", false),
            ("a/deep/er", false),
            ("a/side", true),
            ("b", true),
        ] {
            assert_eq!(unchanged(&root, path), want, "{path:?}");
        }
        fs::write(t.join("a/deep/er/f"), "a/deep/er/f").unwrap();

        // A directory's mode is in its parent's dirtree (which names its dirmeta).
        fs::set_permissions(t.join("a/side"), fs::Permissions::from_mode(0o700)).unwrap();
        let root = marked(t, &known, &parent);
        for (path, want) in [
            ("", false),
            ("a", false),
            ("a/side", true),
            ("a/deep", true),
        ] {
            assert_eq!(unchanged(&root, path), want, "{path:?}");
        }

        // A dirtree the parent commit lacks (pruned, or another commit's) is not trusted.
        let root = marked(t, &known, &ParentSizes::default());
        assert!(!unchanged(&root, "b"));
    }

    #[test]
    fn cache_lines_round_trip_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let mut cache = ChecksumCache::load(&repo);
        let key = CacheKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: -4,
            ctime_ns: 5_000_000_000_123,
            mode: 0o100644,
            uid: 0,
            gid: 7,
            xattrs: u64::MAX,
        };
        cache.entries.insert(key.clone(), "a".repeat(64));
        cache.order.push(key.clone());
        cache.save();
        let path = ChecksumCache::path_for(&repo).unwrap();
        assert_eq!(path, dir.path().join(".repo.osbuild-checksums"));
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("garbage\n1 2 3\n");
        fs::write(&path, text).unwrap();
        let back = ChecksumCache::load(&repo);
        assert_eq!(back.entries.len(), 1);
        assert_eq!(back.checksums(), vec!["a".repeat(64)]);
        assert_eq!(
            back.entries.get(&key).map(String::as_str),
            Some("a".repeat(64).as_str())
        );
    }
}
