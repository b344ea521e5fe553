//! The real ostree-push 1.2.0 (client `ostree-push`, receiver `ostree-receive-1`) from PyPI,
//! installed once per target directory into a venv that sees Debian's python3-gi and
//! libostree's GObject introspection data.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ostree-push release installed.
pub const VERSION: &str = "1.2.0";
const STAMP: &str = ".osbuild-complete";

/// The venv's directory; its `bin/` holds `ostree-push` and `ostree-receive-1`.
pub fn venv(cache: &Path) -> Result<PathBuf> {
    let dest = cache.join(format!("ostree-push-{VERSION}"));
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    // Tests run in parallel: one builds, the others wait for it.
    let lock_path = cache.join(format!(".ostree-push-{VERSION}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock().context("locking the ostree-push venv")?;
    if dest.join(STAMP).exists() {
        return Ok(dest);
    }
    // A venv cannot be moved (its scripts name their interpreter by absolute path), so it
    // is built in place and marked complete at the end; an unmarked one is rebuilt.
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    let run = |cmd: &mut Command| -> Result<()> {
        osbuild_core::cmd::run(cmd)?;
        Ok(())
    };
    // Debian's own python: the gi bindings it finds are the ones built for it.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--system-site-packages"])
        .arg(&dest))
    .context("creating the ostree-push venv (install python3-venv)")?;
    run(Command::new(dest.join("bin/pip")).args([
        "install",
        "--quiet",
        &format!("ostree-push=={VERSION}"),
    ]))
    .context("installing ostree-push from PyPI")?;
    run(Command::new(dest.join("bin/python")).args([
        "-c",
        "import gi; gi.require_version('OSTree', '1.0'); from gi.repository import OSTree",
    ]))
    .context("checking the venv sees libostree (install python3-gi gir1.2-ostree-1.0)")?;
    std::fs::write(dest.join(STAMP), VERSION)
        .with_context(|| format!("writing {}", dest.join(STAMP).display()))?;
    Ok(dest)
}
