//! The build cache: the packages a Debian base downloads, shared by every base, and the
//! bootstrapped bases themselves, keyed by what they were made from. A rebuild that
//! changes only what is applied on top of the base (host name, overlays, users, files,
//! services, scripts, kernel arguments) copies the cached base instead of running
//! mmdebstrap again.
//!
//! The cache directory holds:
//!
//! ```text
//! packages/                 the .deb files apt downloaded (apt tells versions apart by name)
//! base/<sha256>/rootfs/     a base as its source built it, before any customisation
//! base/<sha256>/key         what was hashed into <sha256>, for people
//! base/.<sha256>.tmp-<pid>  an entry being built, renamed into place once complete
//! ```
//!
//! An entry's modification time is when it was last used; only the [`KEEP_BASES`] most
//! recently used are kept.

use anyhow::{Context, Result};
use osbuild_core::{cmd, fsutil::Staging};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// How many bases are kept: the most recently used ones.
pub const KEEP_BASES: usize = 3;

/// Hashed into every base key: bump it when the way a base is made or stored changes
/// in a way its key does not show.
const RECIPE: &str = "osbuild base cache 1";

/// Where downloaded packages and bootstrapped bases are kept between builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    dir: PathBuf,
    reuse_base: bool,
}

impl Cache {
    /// The cache in `dir`, created when first written.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache {
            dir: dir.into(),
            reuse_base: true,
        }
    }

    /// `$XDG_CACHE_HOME/osbuild`, else `~/.cache/osbuild`.
    pub fn default_dir() -> Result<PathBuf> {
        default_dir_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
            .context("neither XDG_CACHE_HOME nor HOME is set: give --cache-dir DIR, or --no-cache")
    }

    /// Build the base again even when it is cached (to pick up packages updated in the
    /// archive, or to check that a build is reproducible), and cache the new one; the
    /// downloaded packages are still reused.
    pub fn rebuild_base(mut self) -> Self {
        self.reuse_base = false;
        self
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where downloaded packages are kept.
    pub fn packages(&self) -> PathBuf {
        self.dir.join("packages")
    }

    /// The entry for the base that `key` describes.
    pub(crate) fn base_entry(&self, key: &str) -> PathBuf {
        self.dir.join("base").join(key_hash(key))
    }

    /// Fill `dest`, an existing empty directory, with the base that `key` describes: a
    /// copy of the cached one, or one made by `build` (given an empty directory) and then
    /// cached. A failed build leaves no entry.
    pub(crate) fn provide_base(
        &self,
        key: &str,
        dest: &Path,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let entry = self.base_entry(key);
        let rootfs = entry.join("rootfs");
        if self.reuse_base && rootfs.is_dir() {
            eprintln!("Reusing the cached base {}", entry.display());
            touch(&entry);
            return copy_tree(&rootfs, dest);
        }
        let bases = self.dir.join("base");
        fs::create_dir_all(&bases).with_context(|| format!("creating {}", bases.display()))?;
        remove_abandoned(&bases);
        eprintln!("Caching the base in {}", entry.display());
        let staging = Staging::new(&entry)?;
        let new = staging.path();
        fs::create_dir(new).with_context(|| format!("creating {}", new.display()))?;
        let built = new.join("rootfs");
        fs::create_dir(&built).with_context(|| format!("creating {}", built.display()))?;
        build(&built)?;
        fs::write(new.join("key"), key)
            .with_context(|| format!("writing {}", new.join("key").display()))?;
        copy_tree(&built, dest)?;
        // An entry already there (rebuilt on purpose, or cached meanwhile by another
        // build) is replaced: the newest build wins.
        let old = bases.join(format!(
            ".{}.old-{}",
            entry.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        let replaced = entry.exists()
            && fs::rename(&entry, &old)
                .with_context(|| format!("moving {} aside", entry.display()))
                .is_ok();
        staging.commit()?;
        if replaced {
            osbuild_core::fsutil::remove_all(&old)?;
        }
        touch(&entry);
        evict(&bases, KEEP_BASES)
    }
}

/// The cache directory from the environment's values.
fn default_dir_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    // The XDG base directory specification ignores relative paths.
    let xdg = xdg_cache_home
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        home.filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache"))
    })?;
    Some(base.join("osbuild"))
}

/// The name of a base's entry: a SHA-256 of the recipe version and its key.
pub(crate) fn key_hash(key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(RECIPE.as_bytes());
    hasher.update(b"\n");
    hasher.update(key.as_bytes());
    osbuild_core::hex(hasher.finalize())
}

/// Copy the tree `src` into the existing directory `dest`, keeping hard links, owners,
/// modes and xattrs (cp does exactly that; a reflink when the filesystem can).
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    let mut from = src.as_os_str().to_owned();
    from.push("/.");
    cmd::run(
        Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(from)
            .arg(dest),
    )
    .with_context(|| format!("copying the base {} to {}", src.display(), dest.display()))?;
    Ok(())
}

/// Mark an entry used now; eviction goes by this time.
fn touch(entry: &Path) {
    let done = fs::File::open(entry).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = done {
        tracing::warn!("could not mark {} as used: {e}", entry.display());
    }
}

/// Remove what builds that died left behind: staging and set-aside entries whose
/// process is gone.
fn remove_abandoned(bases: &Path) {
    for entry in fs::read_dir(bases).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-").or_else(|| n.rsplit_once(".old-")))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = osbuild_core::fsutil::remove_all(&entry.path());
        }
    }
}

/// Keep the `keep` most recently used entries of `bases`, remove the others.
fn evict(bases: &Path, keep: usize) -> Result<()> {
    let mut entries: Vec<(SystemTime, PathBuf)> = fs::read_dir(bases)
        .with_context(|| format!("reading {}", bases.display()))?
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let used = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((used, e.path()))
        })
        .collect();
    entries.sort_by(|a, b| b.cmp(a));
    for (_, path) in entries.into_iter().skip(keep) {
        eprintln!("Removing the least recently used base {}", path.display());
        osbuild_core::fsutil::remove_all(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn build_with(content: &'static str) -> impl FnOnce(&Path) -> Result<()> {
        move |dir: &Path| {
            fs::create_dir(dir.join("etc"))?;
            fs::write(dir.join("etc/os-release"), content)?;
            fs::hard_link(dir.join("etc/os-release"), dir.join("linked"))?;
            Ok(())
        }
    }

    #[test]
    fn the_default_dir_follows_xdg() {
        assert_eq!(
            default_dir_from(Some("/x/cache".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/cache/osbuild"))
        );
        assert_eq!(
            default_dir_from(Some("relative".into()), Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.cache/osbuild"))
        );
        assert_eq!(
            default_dir_from(None, Some("/root".into())),
            Some(PathBuf::from("/root/.cache/osbuild"))
        );
        assert_eq!(default_dir_from(None, None), None);
    }

    #[test]
    fn a_cached_base_is_reused_and_copied() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let first = dir.path().join("first");
        fs::create_dir(&first).unwrap();
        cache
            .provide_base("key", &first, build_with("ID=one\n"))
            .unwrap();
        assert_eq!(
            fs::read_to_string(first.join("etc/os-release")).unwrap(),
            "ID=one\n"
        );
        let entry = cache.base_entry("key");
        assert_eq!(entries(&entry), ["key", "rootfs"]);
        assert_eq!(fs::read_to_string(entry.join("key")).unwrap(), "key");

        // Warm: the builder is not called, the copy is the cached tree, hard links kept.
        let second = dir.path().join("second");
        fs::create_dir(&second).unwrap();
        cache
            .provide_base("key", &second, |_| panic!("rebuilt a cached base"))
            .unwrap();
        use std::os::unix::fs::MetadataExt;
        let a = fs::metadata(second.join("etc/os-release")).unwrap();
        let b = fs::metadata(second.join("linked")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        // Changing the copy leaves the cache alone.
        fs::write(second.join("etc/os-release"), "ID=changed\n").unwrap();
        assert_eq!(
            fs::read_to_string(entry.join("rootfs/etc/os-release")).unwrap(),
            "ID=one\n"
        );

        // Rebuilding replaces the entry.
        let third = dir.path().join("third");
        fs::create_dir(&third).unwrap();
        cache
            .clone()
            .rebuild_base()
            .provide_base("key", &third, build_with("ID=two\n"))
            .unwrap();
        assert_eq!(
            fs::read_to_string(entry.join("rootfs/etc/os-release")).unwrap(),
            "ID=two\n"
        );
        assert_eq!(entries(&dir.path().join("cache/base")), [key_hash("key")]);
    }

    #[test]
    fn a_failed_build_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let err = cache
            .provide_base("key", &dest, |d| {
                fs::write(d.join("half"), "written")?;
                anyhow::bail!("mmdebstrap failed")
            })
            .unwrap_err();
        assert!(err.to_string().contains("mmdebstrap failed"), "{err}");
        assert_eq!(
            entries(&dir.path().join("cache/base")),
            Vec::<String>::new()
        );
        assert_eq!(entries(&dest), Vec::<String>::new());
        // The next build runs the builder again.
        let called = Cell::new(false);
        cache
            .provide_base("key", &dest, |d| {
                called.set(true);
                build_with("ID=x\n")(d)
            })
            .unwrap();
        assert!(called.get());
        assert!(cache
            .base_entry("key")
            .join("rootfs/etc/os-release")
            .is_file());
    }

    #[test]
    fn abandoned_staging_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let bases = dir.path().join("cache/base");
        // No process has pid 2^22 + 1 (above pid_max's limit).
        let dead = bases.join(".abc.tmp-4194305");
        fs::create_dir_all(dead.join("rootfs")).unwrap();
        let dest = dir.path().join("dest");
        fs::create_dir(&dest).unwrap();
        cache
            .provide_base("key", &dest, build_with("ID=x\n"))
            .unwrap();
        assert_eq!(entries(&bases), [key_hash("key")]);
    }

    #[test]
    fn only_the_most_recently_used_bases_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().join("cache"));
        let build = |key: &str| {
            let dest = tempfile::tempdir_in(dir.path()).unwrap();
            cache
                .provide_base(key, dest.path(), build_with("ID=x\n"))
                .unwrap();
        };
        for key in ["a", "b", "c"] {
            build(key);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // Using a makes b the least recently used.
        build("a");
        std::thread::sleep(std::time::Duration::from_millis(20));
        build("d");
        let mut kept = entries(&dir.path().join("cache/base"));
        let mut expected: Vec<String> = ["a", "c", "d"].iter().map(|k| key_hash(k)).collect();
        kept.sort();
        expected.sort();
        assert_eq!(kept, expected);
        assert_eq!(KEEP_BASES, 3);
    }

    #[test]
    fn the_key_hash_covers_the_recipe() {
        assert_eq!(key_hash("a"), key_hash("a"));
        assert_ne!(key_hash("a"), key_hash("b"));
        assert_eq!(key_hash("a").len(), 64);
        let mut plain = Sha256::new();
        plain.update(b"a");
        let plain = osbuild_core::hex(plain.finalize());
        assert_ne!(key_hash("a"), plain);
    }
}
