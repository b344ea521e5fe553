//! Slow fixtures (a bootstrapped rootfs) built once and cached under target/, keyed by a
//! hash of their inputs, so a changed input rebuilds and an unchanged one is reused.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// The inputs that determine a fixture's content.
#[derive(Default, Debug)]
pub struct Key {
    hasher: Sha256,
}

impl Key {
    /// A key for the fixture called `name`.
    pub fn new(name: &str) -> Self {
        let mut k = Key::default();
        k.hasher.update(name.as_bytes());
        k
    }

    /// Mix in a string input (arguments, versions).
    pub fn text(mut self, s: &str) -> Self {
        self.hasher.update((s.len() as u64).to_le_bytes());
        self.hasher.update(s.as_bytes());
        self
    }

    /// Mix in a file's or a directory tree's paths, modes, link targets and contents.
    pub fn path(mut self, path: &Path) -> Result<Self> {
        let mut entries = Vec::new();
        collect(path, path, &mut entries)?;
        entries.sort();
        for (rel, data) in entries {
            self.hasher.update(rel.as_bytes());
            self.hasher.update((data.len() as u64).to_le_bytes());
            self.hasher.update(&data);
        }
        Ok(self)
    }

    fn hex(self) -> String {
        osbuild_core::hex(&self.hasher.finalize()[..8])
    }
}

fn collect(base: &Path, path: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let rel = path
        .strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string();
    let tag = format!("{rel}:{:o}", meta.permissions().mode());
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        out.push((tag, target.into_os_string().into_encoded_bytes()));
    } else if meta.is_dir() {
        out.push((tag, Vec::new()));
        let entries = fs::read_dir(path).with_context(|| format!("listing {}", path.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("listing {}", path.display()))?;
            collect(base, &e.path(), out)?;
        }
    } else {
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        out.push((tag, data));
    }
    Ok(())
}

/// Return `<cache>/<name>-<key>`, building it with `build` if it is not there yet. `build`
/// gets a path that does not exist and must create it atomically (or fail leaving
/// nothing). Older versions of the same fixture are removed to bound disk use.
pub fn cached(
    cache: &Path,
    name: &str,
    key: Key,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Tests run in parallel: one builds, the others wait for it and reuse the result.
    let lock_path = cache.join(format!(".{name}.lock"));
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let dest = cache.join(format!("{name}-{}", key.hex()));
    if dest.exists() {
        eprintln!("fixture: reusing {}", dest.display());
        return Ok(dest);
    }
    for e in fs::read_dir(cache).with_context(|| format!("listing {}", cache.display()))? {
        let e = e.with_context(|| format!("listing {}", cache.display()))?;
        let fname = e.file_name().to_string_lossy().into_owned();
        if fname.starts_with(&format!("{name}-")) {
            let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
        }
    }
    eprintln!("fixture: building {}", dest.display());
    build(&dest).with_context(|| format!("building fixture {name}"))?;
    if !dest.exists() {
        anyhow::bail!("building fixture {name} did not create {}", dest.display());
    }
    Ok(dest)
}

/// The tree `osbuild bootstrap --manifest MANIFEST` builds, cached as the fixture `name`
/// under `tmp/fixtures` (`tmp` is the test's CARGO_TARGET_TMPDIR) and reused while `key`
/// and osbuild's own tree-building code (ostree-commit, the CLI, and the admin crate's
/// files every tree gets) are unchanged. Downloaded packages are kept in
/// `tmp/osbuild-cache`, with the build, not in the user's ~/.cache.
pub fn bootstrapped(tmp: &Path, name: &str, manifest: &Path, key: Key) -> Result<PathBuf> {
    let ws = crate::helpers::workspace_root();
    let key = key
        .path(&ws.join("ostree-commit/src"))?
        .path(&ws.join("admin/src"))?
        .path(&ws.join("src/cli"))?;
    cached(&tmp.join("fixtures"), name, key, |dest| {
        // mmdebstrap takes minutes: its progress goes to the terminal as it runs.
        osbuild_core::cmd::run_inherit(
            std::process::Command::new(crate::helpers::osbuild_bin())
                .arg("bootstrap")
                .arg("--manifest")
                .arg(manifest)
                .arg("--cache-dir")
                .arg(tmp.join("osbuild-cache"))
                .arg("--output")
                .arg(dest),
        )?;
        Ok(())
    })
}
