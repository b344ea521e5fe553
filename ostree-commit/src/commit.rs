//! `osbuild commit`: write a validated tree into an archive repository through libostree.

use crate::layout;
use crate::writer::{self, ChecksumCache, WriteProgress};
use anyhow::{Context, Result};
use osbuild_core::fsutil::Staging;
use osbuild_core::glib::{self, prelude::*};
use osbuild_core::progress::{Progress, ProgressEvent, ProgressFd};
use osbuild_core::{gio, ostree, repo};
use std::collections::HashMap;
use std::path::Path;

/// Options for one commit.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// The branch (ref) to move to the new commit.
    pub branch: String,
    /// The commit message's subject line (libostree's default when unset).
    pub subject: Option<String>,
    /// Stored as the commit's `version` metadata, shown by `ostree admin status`.
    pub version: Option<String>,
    /// The commit's timestamp, seconds since 1970 [default: `SOURCE_DATE_EPOCH`, else now].
    pub timestamp: Option<u64>,
    /// The SHA-256 of the manifest the tree was built from, recorded in the commit.
    pub manifest_digest: Option<String>,
    /// The container image the tree was made from, recorded in the commit.
    pub image: Option<crate::ImageOrigin>,
    /// The digest of everything the tree was made from (see
    /// [`crate::Bootstrap::inputs_digest`]), recorded so that the same inputs are known
    /// to be unchanged before anything is fetched.
    pub inputs_digest: Option<String>,
    /// Commit even when the tree equals the parent's.
    pub allow_unchanged: bool,
    /// Sign the commit (inside the transaction, so it never appears unsigned) and the
    /// summary.
    pub sign: Option<crate::Sign>,
    /// More commits to make a static delta from (besides the parent).
    pub delta_from: Vec<String>,
    /// Write JSON Lines progress events to this file descriptor.
    pub progress_fd: Option<i32>,
}

/// A static delta a commit made, beside what it saves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The commit it starts from.
    pub from: String,
    /// Its size.
    pub bytes: u64,
    /// The archived size of the new commit's objects that `from` lacks (from the commits'
    /// `ostree.sizes`): what a device would fetch object by object. None when a commit has
    /// no sizes.
    pub changed_bytes: Option<u64>,
}

/// The result of a commit.
#[derive(Debug, Clone)]
pub struct Commit {
    /// The new commit's checksum.
    pub checksum: String,
    /// The commit the branch pointed at before, if any.
    pub parent: Option<String>,
    /// The kernel version the tree boots.
    pub kver: String,
    /// The tree equals the parent's, so no commit was made: `checksum` is the parent.
    pub unchanged: bool,
    /// The static deltas made to it.
    pub deltas: Vec<Delta>,
}

/// Commit `tree` to `branch` in the archive repository at `repo_path`, creating the
/// repository if it does not exist, then regenerate the summary.
pub fn commit(repo_path: &Path, tree: &Path, opts: &CommitOptions) -> Result<Commit> {
    let mut events = opts.progress_fd.map(ProgressFd::open).transpose()?;
    let result = (|| {
        validate_ref(&opts.branch)?;
        let info = layout::validate(tree)?;
        tracing::debug!("layout checked");
        std::thread::scope(|s| {
            // The tree is listed (one cold read per inode) while the cache loads and the
            // repository opens.
            let listing = s.spawn(|| writer::list_tree(tree, 8));
            let listing = || {
                listing
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("listing {} panicked", tree.display())))
            };
            // The checksum cache loads beside too, and starts reading ahead what the
            // static delta from the commit it was saved for will read.
            let cache = s.spawn(|| {
                let cache = ChecksumCache::load(repo_path);
                tracing::debug!("checksum cache loaded");
                if let Some(reads) = cache.delta_reads() {
                    repo::prefetch_for_delta(repo_path, reads);
                }
                cache
            });
            let cache = || cache.join().unwrap_or_default();
            let (repo, path, staging) = if repo_path.exists() {
                (
                    repo::open_archive(repo_path)?,
                    repo_path.to_path_buf(),
                    None,
                )
            } else {
                // A new repository appears only once it holds the commit.
                let staging = Staging::new(repo_path)?;
                let repo = repo::create_archive(staging.path())?;
                (repo, staging.path().to_path_buf(), Some(staging))
            };
            tracing::debug!("repository opened");
            let (kver, events) = (&info.kver, events.as_mut());
            let commit = write(&repo, &path, tree, listing, opts, kver, cache, events);
            // Closed before a failed new repository's staging directory is removed.
            drop(repo);
            let commit = commit?;
            if let Some(staging) = staging {
                staging.commit()?;
            }
            Ok(commit)
        })
    })();
    if let Some(events) = &mut events {
        events.send(&ProgressEvent::End {
            task: "commit".into(),
            id: opts.branch.clone(),
            ok: result.is_ok(),
            message: match &result {
                Ok(c) => c.checksum.clone(),
                Err(e) => format!("{e:#}"),
            },
        });
    }
    result
}

/// Run `work` while the bar shows `counts` (bytes of file content done of the total),
/// refreshed five times a second from a thread of its own.
/// The same counts go to `events` (`--progress-fd`), if any.
fn report<T>(
    progress: &Progress,
    counts: &WriteProgress,
    mut events: Option<&mut ProgressFd>,
    branch: &str,
    work: impl FnOnce() -> T,
) -> T {
    // Dropped when the work ends, which wakes the reporter at once.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::sync::atomic::Ordering::Relaxed;
            let mut last = false;
            loop {
                let (bytes, bytes_total) = (
                    counts.bytes_done.load(Relaxed),
                    counts.bytes_total.load(Relaxed),
                );
                let (steps, steps_total) = (
                    counts.files_done.load(Relaxed),
                    counts.files_total.load(Relaxed),
                );
                if let Some(events) = events.as_deref_mut() {
                    let event = ProgressEvent::ProgressBytes {
                        task: "commit".into(),
                        description: format!("Committing to {branch}"),
                        id: branch.to_string(),
                        bytes_cached: counts.bytes_cached.load(Relaxed),
                        bytes,
                        bytes_total,
                        steps_cached: counts.files_cached.load(Relaxed),
                        steps,
                        steps_total,
                    };
                    if last {
                        events.send_last(&event);
                    } else {
                        events.send(&event);
                    }
                }
                if last {
                    break;
                }
                progress.set(bytes, bytes_total);
                progress.set_message(format!(
                    "{steps}/{steps_total} files, {} unchanged",
                    counts.files_cached.load(Relaxed)
                ));
                // One more round after the work ends, so the last event says 100%.
                last = !matches!(
                    stopped.recv_timeout(std::time::Duration::from_millis(200)),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                );
            }
        });
        let out = work();
        drop(stop);
        out
    })
}

/// Refuse ref names that libostree would reject, with the name in the message.
fn validate_ref(branch: &str) -> Result<()> {
    if branch.is_empty() {
        anyhow::bail!("--branch must not be empty");
    }
    ostree::validate_rev(branch).map_err(|e| anyhow::anyhow!("invalid branch name {branch:?}: {e}"))
}

/// SOURCE_DATE_EPOCH when it is set, else now; seconds since 1970.
fn commit_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => epoch.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH {epoch:?} is not a number of seconds since 1970: fix or unset it")
        }),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs()),
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    repo: &ostree::Repo,
    repo_path: &Path,
    tree: &Path,
    listing: impl FnOnce() -> Result<writer::TreeListing>,
    opts: &CommitOptions,
    kver: &str,
    cache: impl FnOnce() -> ChecksumCache,
    events: Option<&mut ProgressFd>,
) -> Result<Commit> {
    let cancellable = gio::Cancellable::NONE;
    let parent = repo::resolve(repo, &opts.branch)?;
    let mut delta_from = Vec::new();
    for rev in &opts.delta_from {
        let missing = || format!("--delta-from {rev}: no such ref or commit in the repository");
        let c = repo::resolve(repo, rev)?.with_context(missing)?;
        repo.load_commit(&c).with_context(missing)?;
        delta_from.push(c);
    }
    // A key that cannot sign is found before the tree is written, not after.
    if let Some(sign) = &opts.sign {
        for key in &sign.key_ids {
            if let Some(problem) = key_problem(key, sign.homedir.as_deref()) {
                anyhow::bail!(
                    "cannot sign with GPG key {key} (GPG home {}): {problem}",
                    sign.homedir
                        .as_deref()
                        .map_or("the default".to_string(), |h| h.display().to_string())
                );
            }
        }
    }
    let progress = Progress::counter(format!("Committing {} to {}", tree.display(), opts.branch));
    let counts = WriteProgress::default();
    let jobs = std::thread::available_parallelism().map_or(1, usize::from);

    let parent_sizes = writer::ParentSizes::of(repo, parent.as_deref());
    tracing::debug!("parent's sizes read");
    repo.prepare_transaction(cancellable)
        .context("starting a repository transaction")?;
    tracing::debug!("transaction started");
    let mut saved_cache = None;
    let result = (|| -> Result<Option<String>> {
        let written = report(&progress, &counts, events, &opts.branch, || {
            // The static delta from the parent reads all of the parent's directories
            // and the header of each of its files: read them from now on, beside the
            // scan of the tree, so that they are in the page cache when the delta is made
            // (a cold re-commit spent most of its time waiting for them). A cache
            // started that as it loaded; without one, the parent's tree says what to read.
            let cache = cache();
            if let (Some(parent), true) = (&parent, cache.is_empty()) {
                repo::prefetch_for_delta(repo_path, repo::DeltaReads::Walk(parent.clone()));
            }
            writer::write_tree(
                repo_path,
                repo,
                tree,
                listing,
                jobs,
                &counts,
                cache,
                &parent_sizes,
            )
        })
        .with_context(|| format!("writing {} into the repository", tree.display()))?;
        let root = written.root;
        saved_cache = Some(written.cache);

        if let (Some(parent), false) = (&parent, opts.allow_unchanged) {
            if same_root(repo, parent, &root)? {
                return Ok(None);
            }
        }
        // The trees and files land first, in a transaction of their own, and the commit
        // object in a second one: libostree moves a transaction's objects into place in no
        // particular order, so a commit killed in one transaction could leave a commit
        // object whose trees never arrived, which `ostree fsck` rejects. Killed now, only
        // unreferenced objects remain, which prune removes.
        repo.commit_transaction(cancellable)
            .context("completing the transaction of the tree's objects")?;
        repo.prepare_transaction(cancellable)
            .context("starting the commit's transaction")?;

        let meta = glib::VariantDict::new(None);
        if let Some(v) = &opts.version {
            meta.insert("version", v.as_str());
        }
        // What made it: `ostree show` prints these.
        meta.insert("osbuild.version", env!("CARGO_PKG_VERSION"));
        if let Some(d) = &opts.manifest_digest {
            meta.insert("osbuild.manifest-sha256", d.as_str());
        }
        if let Some(image) = &opts.image {
            meta.insert(IMAGE_KEY, image.reference.as_str());
            meta.insert(IMAGE_DIGEST_KEY, image.digest.as_str());
        }
        if let Some(d) = &opts.inputs_digest {
            meta.insert(INPUTS_KEY, d.as_str());
        }
        // The same keys `ostree commit --bootable` writes, for tools that look for them.
        meta.insert("ostree.bootable", true);
        meta.insert("ostree.linux", kver);
        // As `ostree commit` does: a client pulling a ref can check that the commit was
        // made for it, which stops a server from passing off one branch as another.
        meta.insert("ostree.ref-binding", vec![opts.branch.clone()]);
        // What `ostree commit --generate-sizes` records: `osbuild admin upgrade --check`
        // sums the sizes of the objects a device lacks to say how much an update downloads.
        meta.insert_value("ostree.sizes", &written.sizes);
        let meta = meta.end();

        // The commit's timestamp is part of its checksum: SOURCE_DATE_EPOCH, when set,
        // makes two builds of the same tree the same commit.
        let checksum = repo
            .write_commit_with_time(
                parent.as_deref(),
                opts.subject.as_deref(),
                None,
                Some(&meta),
                &root,
                match opts.timestamp {
                    Some(t) => t,
                    None => commit_time()?,
                },
                cancellable,
            )
            .context("writing the commit object")?;
        // Signed in the transaction: the signature lands with the commit, before the ref.
        if let Some(sign) = &opts.sign {
            for key in &sign.key_ids {
                sign_commit(repo, &checksum, key, sign.homedir.as_deref())?;
            }
        }
        // The ref moves after the deltas (osbuild_core::repo::publish).
        repo.commit_transaction(cancellable)
            .context("completing the repository transaction")?;
        Ok(Some(checksum.to_string()))
    })();
    let checksum = match result {
        Ok(Some(c)) => c,
        Ok(None) => {
            let _ = repo.abort_transaction(cancellable);
            let parent = parent.unwrap_or_default();
            if let Some(cache) = &saved_cache {
                cache.save();
            }
            progress.finish(format!("unchanged: {parent}"));
            return Ok(Commit {
                checksum: parent.clone(),
                parent: Some(parent),
                kver: kver.to_string(),
                unchanged: true,
                deltas: Vec::new(),
            });
        }
        Err(e) => {
            let _ = repo.abort_transaction(cancellable);
            return Err(e);
        }
    };
    let moves = [repo::RefMove {
        name: opts.branch.clone(),
        old: parent.clone(),
        new: checksum.clone(),
    }];
    let publish = repo::PublishOptions {
        delta_from,
        summary: true,
        sign_summary: opts
            .sign
            .as_ref()
            .map(|s| (s.key_ids.clone(), s.homedir.clone())),
    };
    let published = std::time::Instant::now();
    let (made, changed) = std::thread::scope(|s| {
        // Saved once the commit's objects have landed (its entries name objects the repo
        // now has), beside the deltas, which take one core.
        if let Some(cache) = &saved_cache {
            s.spawn(|| cache.save());
        }
        // What each delta's report compares it with, also beside them.
        let changed = s.spawn(|| {
            let Ok(repo) = repo::open_archive(repo_path) else {
                return HashMap::new();
            };
            let froms = parent.iter().chain(&publish.delta_from);
            froms
                .map(|from| (from.clone(), changed_bytes(&repo, from, &checksum)))
                .collect::<HashMap<_, _>>()
        });
        let made = repo::publish(repo, &moves, &publish, &mut |m| eprintln!("{m}"));
        (made, changed.join().unwrap_or_default())
    });
    tracing::debug!("deltas, ref and summary in {:?}", published.elapsed());
    progress.finish(format!("Committed {checksum} to {}", opts.branch));
    let deltas = made?
        .into_iter()
        .map(|d| Delta {
            changed_bytes: changed.get(&d.from).copied().flatten(),
            from: d.from,
            bytes: d.bytes,
        })
        .collect();
    Ok(Commit {
        checksum,
        parent,
        kver: kver.to_string(),
        unchanged: false,
        deltas,
    })
}

impl Commit {
    /// One line per static delta: its size beside the changed objects' size.
    pub fn delta_report(&self) -> Vec<String> {
        use osbuild_core::progress::human_bytes;
        self.deltas
            .iter()
            .map(|d| {
                format!(
                    "static delta {} -> {}: {} (the changed objects: {})",
                    d.from,
                    self.checksum,
                    human_bytes(d.bytes),
                    d.changed_bytes.map_or("unknown".to_string(), human_bytes),
                )
            })
            .collect()
    }
}

/// The archived bytes of `to`'s objects that `from` does not have, by their `ostree.sizes`.
fn changed_bytes(repo: &ostree::Repo, from: &str, to: &str) -> Option<u64> {
    let sizes = |c: &str| {
        let (v, _) = repo.load_commit(c).ok()?;
        ostree::commit_get_object_sizes(&v).ok()
    };
    let old: std::collections::BTreeSet<String> = sizes(from)?
        .iter()
        .map(|e| e.checksum().to_string())
        .collect();
    Some(
        sizes(to)?
            .iter()
            .filter(|e| !old.contains(e.checksum().as_str()))
            .map(|e| e.archived())
            .sum(),
    )
}

/// The commit metadata naming the container image a tree was made from, and its
/// manifest digest (as ostree-rs-ext's `ostree.manifest-digest`).
pub const IMAGE_KEY: &str = "osbuild.image";
/// See [`IMAGE_KEY`].
pub const IMAGE_DIGEST_KEY: &str = "osbuild.image-digest";
/// The commit metadata holding [`CommitOptions::inputs_digest`].
const INPUTS_KEY: &str = "osbuild.inputs-sha256";

/// The head of `branch` in the repository at `repo_path` when it was made from exactly
/// `inputs` (a [`crate::Bootstrap::inputs_digest`]): committing again would change nothing.
pub fn unchanged_inputs(repo_path: &Path, branch: &str, inputs: &str) -> Result<Option<String>> {
    if !repo_path.exists() {
        return Ok(None);
    }
    let repo = repo::open_archive(repo_path)?;
    let Some(head) = repo::resolve(&repo, branch)? else {
        return Ok(None);
    };
    let (commit, _) = repo
        .load_commit(&head)
        .with_context(|| format!("reading commit {head}, the head of {branch}"))?;
    let meta = glib::VariantDict::new(Some(&commit.child_value(0)));
    let recorded: Option<String> = meta.lookup(INPUTS_KEY).ok().flatten();
    Ok((recorded.as_deref() == Some(inputs)).then_some(head))
}

/// Whether `root` is the root directory of commit `parent` (same content and metadata).
fn same_root(repo: &ostree::Repo, parent: &str, root: &ostree::RepoFile) -> Result<bool> {
    let (parent_root, _) = repo
        .read_commit(parent, gio::Cancellable::NONE)
        .with_context(|| format!("reading the parent commit {parent}"))?;
    let parent_root = parent_root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow::anyhow!("libostree returned a root that is not a RepoFile"))?;
    Ok(
        parent_root.tree_get_contents_checksum() == root.tree_get_contents_checksum()
            && parent_root.tree_get_metadata_checksum() == root.tree_get_metadata_checksum(),
    )
}

/// Sign commit `checksum` with GPG key `key` (an existing signature by it is kept).
fn sign_commit(
    repo: &ostree::Repo,
    checksum: &str,
    key: &str,
    homedir: Option<&Path>,
) -> Result<()> {
    let home = homedir.map(|h| h.to_string_lossy().into_owned());
    match repo.sign_commit(checksum, key, home.as_deref(), gio::Cancellable::NONE) {
        Ok(()) => Ok(()),
        Err(e) if e.matches(gio::IOErrorEnum::Exists) => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "signing commit {checksum} with GPG key {key} (GPG home {}): {e}; {}",
            homedir.map_or("the default".to_string(), |h| h.display().to_string()),
            key_problem(key, homedir).unwrap_or_else(|| "check that the key's secret part is \
                in that home and that it has not expired (gpg --homedir HOME \
                --list-secret-keys)"
                .to_string())
        )),
    }
}

/// Why GPG cannot sign with `key`, as `gpg --list-secret-keys` says: not there, expired
/// or revoked, with what to do. None when gpg sees nothing wrong (or cannot be asked).
fn key_problem(key: &str, homedir: Option<&Path>) -> Option<String> {
    let mut gpg = std::process::Command::new("gpg");
    if let Some(h) = homedir {
        gpg.arg("--homedir").arg(h);
    }
    gpg.args([
        "--batch",
        "--with-colons",
        "--fixed-list-mode",
        "--list-secret-keys",
        key,
    ]);
    let out = osbuild_core::cmd::output(&mut gpg).ok()?;
    if !out.status.success() {
        return Some(format!(
            "the GPG home has no secret key {key}: import it there (gpg --import) or name \
             another home with --gpg-homedir"
        ));
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let sec = listing.lines().find(|l| l.starts_with("sec:"))?;
    let fields: Vec<&str> = sec.split(':').collect();
    match fields.get(1).copied() {
        Some("e") => {
            let when = fields
                .get(6)
                .and_then(|t| t.parse::<i64>().ok())
                .map_or(String::new(), |t| {
                    format!(" ({} days ago)", (now_secs() - t) / 86_400)
                });
            Some(format!(
                "key {key} has expired{when}: extend it (gpg --quick-set-expire {key} 1y) or \
                 sign with another key"
            ))
        }
        Some("r") => Some(format!("key {key} has been revoked: sign with another key")),
        _ => None,
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `osbuild sign`: sign commit `rev` of the archive repository at `repo_path` with
/// `sign`'s keys (keeping signatures it has), make the deltas to it again (they carry its
/// signatures), then the summary.
pub fn sign(repo_path: &Path, rev: &str, sign: &crate::Sign) -> Result<String> {
    let repo = repo::open_archive(repo_path)?;
    let checksum = repo::resolve(&repo, rev)?.with_context(|| {
        format!(
            "{rev} is neither a ref nor a commit in {}",
            repo_path.display()
        )
    })?;
    for key in &sign.key_ids {
        sign_commit(&repo, &checksum, key, sign.homedir.as_deref())?;
    }
    // The deltas to it carry its signatures too, then the summary indexes them.
    repo::remake_deltas_to(&repo, &checksum)?;
    repo::write_summary(&repo, Some(&(sign.key_ids.clone(), sign.homedir.clone())))?;
    Ok(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    use osbuild_testing::helpers::stub_bootable_tree as tiny_tree;

    #[test]
    fn commits_create_the_repo_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        tiny_tree(&tree);
        let repo_path = dir.path().join("repo");
        let opts = CommitOptions {
            branch: "test/x86_64".into(),
            subject: Some("first".into()),
            version: Some("1".into()),
            timestamp: Some(1_700_000_000),
            ..CommitOptions::default()
        };
        let first = commit(&repo_path, &tree, &opts).unwrap();
        assert_eq!(first.parent, None);
        assert_eq!(first.kver, "6.1.0-test");
        fs::write(tree.join("usr/lib/added"), "new").unwrap();
        let second = commit(&repo_path, &tree, &opts).unwrap();
        assert_eq!(second.parent.as_deref(), Some(first.checksum.as_str()));

        let repo = repo::open_archive(&repo_path).unwrap();
        assert_eq!(
            repo::resolve(&repo, "test/x86_64").unwrap().as_deref(),
            Some(second.checksum.as_str())
        );
        let (commit_v, _) = repo.load_commit(&second.checksum).unwrap();
        let meta = glib::VariantDict::new(Some(&commit_v.child_value(0)));
        assert_eq!(
            meta.lookup::<String>("version").unwrap().as_deref(),
            Some("1")
        );
        assert_eq!(
            meta.lookup::<Vec<String>>("ostree.ref-binding").unwrap(),
            Some(vec!["test/x86_64".to_string()])
        );
        assert!(repo_path.join("summary").is_file());
        assert_eq!(ostree::commit_get_timestamp(&commit_v), 1_700_000_000);
        assert_eq!(
            meta.lookup::<String>("osbuild.version").unwrap().as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        // The same tree again: nothing is committed, unless asked.
        let again = commit(&repo_path, &tree, &opts).unwrap();
        assert!(again.unchanged);
        assert_eq!(again.checksum, second.checksum);
        assert_eq!(
            repo::resolve(&repo, "test/x86_64").unwrap().as_deref(),
            Some(second.checksum.as_str())
        );
        let forced = commit(
            &repo_path,
            &tree,
            &CommitOptions {
                allow_unchanged: true,
                timestamp: Some(1_700_000_001),
                ..opts.clone()
            },
        )
        .unwrap();
        assert!(!forced.unchanged);
        assert_eq!(forced.parent.as_deref(), Some(second.checksum.as_str()));
        // Every object's size is recorded, the added file's among them.
        let sizes = ostree::commit_get_object_sizes(&commit_v).unwrap();
        assert!(sizes.len() >= 3, "{} entries", sizes.len());
        assert!(
            sizes.iter().any(|e| e.unpacked() == 3),
            "no entry for usr/lib/added"
        );
    }

    #[test]
    fn bad_tree_leaves_no_repo() {
        let dir = tempfile::tempdir().unwrap();
        let repo_path = dir.path().join("repo");
        let opts = CommitOptions {
            branch: "b".into(),
            ..Default::default()
        };
        let err = commit(&repo_path, &dir.path().join("missing"), &opts).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!repo_path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bad_branch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        tiny_tree(&tree);
        let opts = CommitOptions {
            branch: "bad ref".into(),
            ..Default::default()
        };
        let err = commit(&dir.path().join("repo"), &tree, &opts).unwrap_err();
        assert!(err.to_string().contains("bad ref"), "{err}");
    }
}
