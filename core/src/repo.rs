//! The one way to open or create an OSTree repository.

use anyhow::{Context, Result};
use ostree::{gio, glib};
use std::collections::BTreeMap;
use std::path::Path;

/// Open an existing repository, naming the path if it is not one.
pub fn open(path: &Path) -> Result<ostree::Repo> {
    if !path.join("config").is_file() || !path.join("objects").is_dir() {
        anyhow::bail!(
            "{} is not an OSTree repository (no config or objects/); create one with `osbuild commit`",
            path.display()
        );
    }
    let repo = ostree::Repo::new_for_path(path);
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening OSTree repository {}", path.display()))?;
    Ok(repo)
}

/// Open a repository and require archive mode, the only mode that can be served over HTTP.
pub fn open_archive(path: &Path) -> Result<ostree::Repo> {
    let repo = open(path)?;
    if repo.mode() != ostree::RepoMode::Archive {
        anyhow::bail!(
            "{} is a {:?}-mode repository; serving and committing need archive mode",
            path.display(),
            repo.mode()
        );
    }
    Ok(repo)
}

/// Create a new archive-mode repository at `path`, which must not exist yet.
pub fn create_archive(path: &Path) -> Result<ostree::Repo> {
    std::fs::create_dir(path)
        .with_context(|| format!("creating repository directory {}", path.display()))?;
    let repo = ostree::Repo::new_for_path(path);
    repo.create(ostree::RepoMode::Archive, gio::Cancellable::NONE)
        .with_context(|| format!("creating archive repository {}", path.display()))?;
    Ok(repo)
}

/// The file of object `name` in an archive repository, relative to the repository
/// (`objects/XX/REST.filez` for a file); `None` for kinds an archive repository does not
/// store as loose files.
pub fn object_path(name: &ostree::ObjectName) -> Option<String> {
    let ext = match name.object_type() {
        ostree::ObjectType::File => "filez",
        ostree::ObjectType::DirTree => "dirtree",
        ostree::ObjectType::DirMeta => "dirmeta",
        ostree::ObjectType::Commit => "commit",
        ostree::ObjectType::CommitMeta => "commitmeta",
        _ => return None,
    };
    let c = name.checksum();
    Some(format!("objects/{}/{}.{ext}", c.get(..2)?, c.get(2..)?))
}

/// Read ahead, in the background, what a static delta from a commit reads first: all of
/// its directory objects, then the header of each of its files (where the delta finds
/// their sizes). Best effort, never waited for: errors are ignored, and the caller goes
/// on while the disk works (on a cold cache a delta otherwise waits for one read at a
/// time, and the disk serves many at once).
pub fn prefetch_for_delta(path: &Path, reads: DeltaReads) {
    const THREADS: usize = 32;
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let paths: Vec<String> = match reads {
            DeltaReads::Known { dirtrees, files } => {
                let dirs = dirtrees.iter().map(|c| (c, ostree::ObjectType::DirTree));
                let files = files.iter().map(|c| (c, ostree::ObjectType::File));
                dirs.chain(files)
                    .filter_map(|(c, t)| object_path(&ostree::ObjectName::new(c, t)))
                    .collect()
            }
            DeltaReads::Walk(commit) => {
                let Ok(repo) = open(&path) else { return };
                let Ok(reached) = repo.traverse_commit(&commit, -1, gio::Cancellable::NONE) else {
                    return;
                };
                let mut files: Vec<String> = reached
                    .iter()
                    .filter(|n| n.object_type() == ostree::ObjectType::File)
                    .filter_map(object_path)
                    .collect();
                // One objects/XX directory after another.
                files.sort_unstable();
                files
            }
        };
        let _ = crate::parallel::share(
            &paths,
            THREADS,
            || {
                // Only on a core nothing else wants: the caller's own work comes first.
                let tid = rustix::thread::gettid();
                let _ = rustix::process::setpriority_process(Some(tid), 19);
                Ok(())
            },
            |(), rel| {
                let len = if rel.ends_with(".dirtree") { 0 } else { 4096 };
                crate::fsutil::read_ahead(&path.join(rel), len);
                Ok(())
            },
            |(), _| Ok(()),
        );
    });
}

/// What a static delta from a commit reads first, for [`prefetch_for_delta`].
#[derive(Debug, Clone)]
pub enum DeltaReads {
    /// Known to the caller (from a cache): the checksums of the commit's directory
    /// trees, and of its files in the order the delta reads them.
    Known {
        /// Directory trees.
        dirtrees: Vec<String>,
        /// Files.
        files: Vec<String>,
    },
    /// Found by walking this commit's directories.
    Walk(String),
}

/// A ref moving to a new commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefMove {
    /// The ref.
    pub name: String,
    /// Its commit before, if it existed.
    pub old: Option<String>,
    /// Its new commit.
    pub new: String,
}

/// How [`publish`] ends.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// More commits to make a static delta from to each new head (`--delta-from`).
    pub delta_from: Vec<String>,
    /// Regenerate the summary.
    pub summary: bool,
    /// Sign the summary with these GPG keys, in this GPG home (`summary.sig`).
    pub sign_summary: Option<(Vec<String>, Option<std::path::PathBuf>)>,
}

/// A static delta [`publish`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaMade {
    /// The commit it starts from.
    pub from: String,
    /// The commit it leads to.
    pub to: String,
    /// Its size on disk.
    pub bytes: u64,
}

/// Make commits visible in the order a reader must see them: static deltas to each new
/// head (from its old head and `delta_from`), then the refs, then the summary (which
/// indexes the deltas), then its signature. A reader never finds a ref or summary that
/// names something not yet written, and a process killed part-way leaves the old
/// state or the new. A delta that cannot be made is reported through `warn`, not fatal.
pub fn publish(
    repo: &ostree::Repo,
    moves: &[RefMove],
    opts: &PublishOptions,
    warn: &mut dyn FnMut(&str),
) -> Result<Vec<DeltaMade>> {
    let cancellable = gio::Cancellable::NONE;
    let mut made = Vec::new();
    for m in moves {
        let mut froms: Vec<&str> = m.old.iter().map(String::as_str).collect();
        froms.extend(opts.delta_from.iter().map(String::as_str));
        for from in froms {
            if from == m.new {
                continue;
            }
            let before = delta_dirs(repo);
            match generate_delta(repo, Some(from), &m.new) {
                Ok(()) => {
                    let bytes = delta_dirs(repo)
                        .difference(&before)
                        .map(|d| dir_size(d))
                        .sum();
                    made.push(DeltaMade {
                        from: from.to_string(),
                        to: m.new.clone(),
                        bytes,
                    });
                }
                Err(e) => warn(&format!("warning: no static delta {from}-{}: {e}", m.new)),
            }
            tracing::debug!("static delta {from}-{} made", m.new);
        }
    }
    for m in moves {
        repo.set_ref_immediate(None, &m.name, Some(&m.new), cancellable)
            .with_context(|| format!("updating ref {} to {}", m.name, m.new))?;
    }
    tracing::debug!("refs moved");
    if opts.summary && !moves.is_empty() {
        write_summary(repo, opts.sign_summary.as_ref())?;
        tracing::debug!("summary written");
    }
    Ok(made)
}

/// Make again every static delta that leads to `commit`: a delta carries its target's
/// detached metadata as it was when the delta was made, so a commit signed afterwards
/// would reach devices unsigned through it (and be refused where signatures are
/// required).
pub fn remake_deltas_to(repo: &ostree::Repo, commit: &str) -> Result<usize> {
    let names = repo
        .list_static_delta_names(gio::Cancellable::NONE)
        .context("listing static deltas")?;
    let mut made = 0;
    for name in names {
        let (from, to) = delta_ends(&name);
        if to != commit {
            continue;
        }
        generate_delta(repo, from, to)
            .with_context(|| format!("making static delta {name} again"))?;
        made += 1;
    }
    Ok(made)
}

/// The commits of `head`'s history, newest first, as far as the repository has them.
pub fn history(repo: &ostree::Repo, head: &str) -> Vec<String> {
    let mut out = vec![head.to_string()];
    // Bounded: a history is finite, but the repository's content is not trusted.
    while out.len() < 1_000_000 {
        let Ok((commit, _)) = repo.load_commit(out.last().map_or("", String::as_str)) else {
            break;
        };
        match ostree::commit_get_parent(&commit) {
            Some(p) if repo.load_commit(&p).is_ok() => out.push(p.to_string()),
            _ => break,
        }
    }
    out
}

/// The commits a static delta's name (`FROM-TO`, or `TO` for one from nothing) joins.
pub fn delta_ends(name: &str) -> (Option<&str>, &str) {
    match name.split_once('-') {
        Some((from, to)) => (Some(from), to),
        None => (None, name),
    }
}

/// A checksum as libostree names deltas by it: the 32 bytes in base64 without padding, `/`
/// written `_` (so a name is one path component). `None` for what is not a checksum.
fn modified_base64(checksum: &str) -> Option<String> {
    use base64::Engine as _;
    if checksum.len() != 64 {
        return None;
    }
    let bytes = (0..32)
        .map(|i| u8::from_str_radix(checksum.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some(
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(bytes)
            .replace('/', "_"),
    )
}

/// The directory of a static delta (named `FROM-TO` or `TO`, as `ostree static-delta list`
/// prints it) in an archive repository: `deltas/XX/REST`, the name in modified base64 split
/// after two characters. `None` for a name that is not made of checksums.
pub fn delta_dir(name: &str) -> Option<String> {
    let (from, to) = delta_ends(name);
    let encoded = match from {
        Some(f) => format!("{}-{}", modified_base64(f)?, modified_base64(to)?),
        None => modified_base64(to)?,
    };
    Some(format!("deltas/{}/{}", &encoded[..2], &encoded[2..]))
}

/// The index of the static deltas to `to` (`delta-indexes/XX/REST.index`).
pub fn delta_index_path(to: &str) -> Option<String> {
    let encoded = modified_base64(to)?;
    Some(format!(
        "delta-indexes/{}/{}.index",
        &encoded[..2],
        &encoded[2..]
    ))
}

/// Make the static delta from `from` to `to`, as one file (inline parts): devices fetch
/// it in one request.
fn generate_delta(repo: &ostree::Repo, from: Option<&str>, to: &str) -> Result<(), glib::Error> {
    let params = glib::VariantDict::new(None);
    params.insert("inline-parts", true);
    repo.static_delta_generate(
        ostree::StaticDeltaGenerateOpt::Major,
        from,
        to,
        None,
        Some(&params.end()),
        gio::Cancellable::NONE,
    )
}

/// Regenerate the summary (libostree writes it to a temporary file and renames it into
/// place), then sign it with `sign`'s GPG keys in its GPG home.
pub fn write_summary(
    repo: &ostree::Repo,
    sign: Option<&(Vec<String>, Option<std::path::PathBuf>)>,
) -> Result<()> {
    let cancellable = gio::Cancellable::NONE;
    repo.regenerate_summary(None, cancellable)
        .context("regenerating the summary")?;
    if let Some((keys, home)) = sign {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let home = home.as_ref().map(|h| h.to_string_lossy().into_owned());
        repo.add_gpg_signature_summary(&keys, home.as_deref(), cancellable)
            .with_context(|| format!("signing the summary with GPG keys {}", keys.join(", ")))?;
    }
    Ok(())
}

/// The delta directories of the repository (`deltas/XX/REST`).
fn delta_dirs(repo: &ostree::Repo) -> std::collections::BTreeSet<std::path::PathBuf> {
    let mut out = std::collections::BTreeSet::new();
    let Some(root) = gio::prelude::FileExt::path(&repo.path()) else {
        return out;
    };
    for prefix in std::fs::read_dir(root.join("deltas"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for d in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.insert(d.path());
        }
    }
    out
}

/// The bytes of the files directly in `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Resolve a ref to its commit checksum, if the ref exists.
pub fn resolve(repo: &ostree::Repo, refspec: &str) -> Result<Option<String>> {
    Ok(repo
        .resolve_rev(refspec, true)
        .with_context(|| format!("resolving ref {refspec}"))?
        .map(|s| s.to_string()))
}

/// The refs a summary file lists with their commits, or `None` if it does not parse.
pub fn summary_refs(data: &[u8]) -> Option<BTreeMap<String, String>> {
    // (a(s(taya{sv}))a{sv}): per ref its name, then (size, checksum, metadata).
    let ty = glib::VariantTy::new("(a(s(taya{sv}))a{sv})").ok()?;
    let summary = glib::Variant::from_data_with_type(glib::Bytes::from(data), ty);
    if !summary.is_normal_form() {
        return None;
    }
    let list = summary.try_child_value(0)?;
    let mut refs = BTreeMap::new();
    for entry in list.iter() {
        let name = entry.try_child_value(0)?.str()?.to_string();
        let checksum = entry.try_child_value(1)?.try_child_value(1)?;
        let bytes = checksum.fixed_array::<u8>().ok()?;
        refs.insert(name, crate::hex(bytes));
    }
    Some(refs)
}

/// The refs the repository at `url` lists in its summary, with their commits.
///
/// A mirror pull of the commit objects alone into a throwaway repository does it through
/// libostree, so nothing else is touched. (The `ostree` crate's `remote_fetch_summary`
/// cannot be used: it panics on a server without `summary.sig`.)
pub fn remote_refs(url: &str) -> Result<BTreeMap<String, String>> {
    let dir = tempfile::Builder::new()
        .prefix("osbuild-refs-")
        .tempdir()
        .context("creating a temporary repository")?;
    let repo = ostree::Repo::new_for_path(dir.path());
    repo.create(ostree::RepoMode::BareUser, gio::Cancellable::NONE)
        .context("creating a temporary repository")?;
    let remote = glib::VariantDict::new(None);
    remote.insert("gpg-verify", false);
    repo.remote_add(
        "server",
        Some(url),
        Some(&remote.end()),
        gio::Cancellable::NONE,
    )
    .with_context(|| format!("adding a remote for {url}"))?;
    let opts = glib::VariantDict::new(None);
    let flags = ostree::RepoPullFlags::MIRROR | ostree::RepoPullFlags::COMMIT_ONLY;
    opts.insert("flags", flags.bits() as i32);
    repo.pull_with_options("server", &opts.end(), None, gio::Cancellable::NONE)
        .with_context(|| {
            format!("listing the refs of {url} (its summary lists them: `ostree summary -u`)")
        })?;
    let flags = ostree::RepoListRefsExtFlags::EXCLUDE_REMOTES;
    Ok(repo
        .list_refs_ext(None, flags, gio::Cancellable::NONE)
        .with_context(|| format!("listing the refs pulled from {url}"))?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_paths_are_libostrees() {
        // As `ostree static-delta generate` laid them out (ostree 2022.7).
        let from = "d0611671fd0ad5880c883408bf629c6062c0fd0e5e589ea1de70e3593f731669";
        let to = "259fa26b98df136efc6a3925e82b4a2e82fdd66a997446afe88ed4934cc9cc1e";
        assert_eq!(
            delta_dir(to).as_deref(),
            Some("deltas/JZ/+ia5jfE278ajkl6CtKLoL91mqZdEav6I7Uk0zJzB4")
        );
        assert_eq!(
            delta_dir(&format!("{from}-{to}")).as_deref(),
            Some("deltas/0G/EWcf0K1YgMiDQIv2KcYGLA_Q5eWJ6h3nDjWT9zFmk-JZ+ia5jfE278ajkl6CtKLoL91mqZdEav6I7Uk0zJzB4")
        );
        assert_eq!(
            delta_index_path(to).as_deref(),
            Some("delta-indexes/JZ/+ia5jfE278ajkl6CtKLoL91mqZdEav6I7Uk0zJzB4.index")
        );
        assert_eq!(delta_dir("nothex"), None);
    }

    #[test]
    fn create_then_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        create_archive(&path).unwrap();
        let repo = open_archive(&path).unwrap();
        assert_eq!(resolve(&repo, "nothing").unwrap(), None);
    }

    #[test]
    fn remote_refs_reads_the_summary() {
        use crate::cmd;
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr")).unwrap();
        std::fs::write(tree.join("usr/hello"), "hello").unwrap();
        create_archive(&path).unwrap();
        let url = format!("file://{}", path.display());
        let err = format!("{:#}", remote_refs(&url).unwrap_err());
        assert!(err.contains("ostree summary -u"), "{err}");
        let repo_arg = format!("--repo={}", path.display());
        let mut commits = Vec::new();
        for branch in ["os/a", "os/b"] {
            let out = cmd::run(Command::new("ostree").args([
                "commit",
                &repo_arg,
                &format!("--branch={branch}"),
                &format!("--tree=dir={}", tree.display()),
                &format!("--subject={branch}"),
            ]))
            .unwrap();
            commits.push((branch.to_string(), out.trim().to_string()));
        }
        cmd::run(Command::new("ostree").args(["summary", "-u", &repo_arg])).unwrap();
        let refs = remote_refs(&url).unwrap();
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), commits);
    }

    #[test]
    fn open_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains("not an OSTree repository"), "{err}");
    }
}
