//! Names the git commit in `osbuild --version`: sets `OSBUILD_VERSION` to
//! `0.1.0 (a1b2c3d 2026-12-01)`, or `0.1.0 (unknown)` outside a git checkout.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = env!("CARGO_PKG_VERSION");
    let commit = commit().unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=OSBUILD_VERSION={version} ({commit})");
}

/// `a1b2c3d 2026-12-01` for HEAD, and the files to watch so that a new commit or a
/// checkout reruns this (and only rebuilds this crate).
fn commit() -> Option<String> {
    // In a worktree `.git` is a file: ask git where HEAD and the refs live.
    let dirs = git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-dir",
        "--git-common-dir",
    ])?;
    let mut dirs = dirs.lines().map(PathBuf::from);
    let (git_dir, common_dir) = (dirs.next()?, dirs.next()?);
    watch(&git_dir.join("HEAD"));
    // Detached HEAD has no ref: HEAD itself changes then.
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let loose = common_dir.join(&head_ref);
        if loose.exists() {
            watch(&loose);
        } else {
            // The ref is packed; it is written there when it moves again.
            watch(&common_dir.join("packed-refs"));
        }
    }
    let line = git(&["log", "-1", "--format=%h %cd", "--date=short"])?;
    (!line.is_empty()).then_some(line)
}

/// Watch a file, if it exists: cargo reruns the script on every build for a missing one.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// A git command's trimmed output; `None` when git is missing or fails (not a checkout,
/// a source tarball): the version then says `unknown` instead of failing the build.
fn git(args: &[&str]) -> Option<String> {
    // osbuild_core::cmd would bring libostree into the build script; here a failure is
    // an answer (no commit), not an error to report.
    #[allow(clippy::disallowed_methods)]
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().to_string())
}
