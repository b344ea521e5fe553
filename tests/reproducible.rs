//! Reproducible builds: with SOURCE_DATE_EPOCH set, two builds of the same manifest from
//! the same packages give the same commit, and so does a third that reuses the cached
//! base.
//!
//! Needs root (mmdebstrap --mode=root, chroot), mmdebstrap, the ostree CLI (to name the
//! differences) and the Debian mirror. Without them the test is skipped with a message
//! naming what is missing, unless CI=true, where it fails. The downloaded packages are
//! kept under target/tmp/reproducible-cache/packages across runs; each run rebuilds the
//! base twice from them (a few minutes).

use osbuild_core::cmd;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const OSBUILD: &str = env!("CARGO_BIN_EXE_osbuild");
const EPOCH: &str = "1700000000";
const MIRROR_HOST: &str = "deb.debian.org:80";

/// What this machine lacks to run the test, if anything.
fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|uids| uids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        missing.push("root (mmdebstrap --mode=root and chroot)".to_string());
    }
    for (tool, package) in [("mmdebstrap", "mmdebstrap"), ("ostree", "ostree")] {
        let found =
            cmd::run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_ok();
        if !found {
            missing.push(format!("{tool} (apt-get install {package})"));
        }
    }
    let reachable = MIRROR_HOST.to_socket_addrs().is_ok_and(|mut addrs| {
        addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(10)).is_ok())
    });
    if !reachable {
        missing.push(format!("network access to {MIRROR_HOST}"));
    }
    missing
}

/// Whether to run: false (after saying why) when something is missing outside CI.
fn can_run() -> bool {
    let missing = missing();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("reproducible build test needs {what}");
    }
    eprintln!("skipping the reproducible build test: it needs {what}");
    false
}

fn ostree(args: &[&str]) -> String {
    cmd::run(Command::new("ostree").args(args)).unwrap_or_else(|e| panic!("{e}"))
}

/// Commit the manifest into a new repository at `repo`; returns the checksum.
fn build(manifest: &Path, cache: &Path, repo: &Path, rebuild_base: bool) -> String {
    let mut osbuild = Command::new(OSBUILD);
    osbuild
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("commit")
        .arg("--manifest")
        .arg(manifest)
        .arg("--repo")
        .arg(repo)
        .arg("--cache-dir")
        .arg(cache);
    if rebuild_base {
        osbuild.arg("--rebuild-base");
    }
    let stdout = cmd::run(&mut osbuild).unwrap_or_else(|e| panic!("{e}"));
    stdout.lines().last().unwrap_or_default().trim().to_string()
}

/// What differs between commit `a` in `repo_a` and commit `b` in `repo_b`, from
/// `ostree diff` (the first lines; the full list can be long).
fn differences(repo_a: &Path, a: &str, repo_b: &Path, b: &str) -> String {
    let repo_a_arg = format!("--repo={}", repo_a.display());
    ostree(&["pull-local", &repo_a_arg, repo_b.to_str().unwrap(), b]);
    let diff = ostree(&["diff", &repo_a_arg, a, b]);
    let lines: Vec<&str> = diff.lines().collect();
    let shown = lines
        .iter()
        .take(40)
        .copied()
        .collect::<Vec<_>>()
        .join("\n");
    if lines.len() > 40 {
        format!("{shown}\n… and {} more", lines.len() - 40)
    } else if shown.is_empty() {
        "no file differs: the commit metadata does".to_string()
    } else {
        shown
    }
}

#[test]
fn same_manifest_same_packages_same_commit() {
    if !can_run() {
        return;
    }
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reproducible-cache");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("osbuild.toml");
    // Small, but touching what varies from build to build: a user (shadow's last-change
    // field), a file, the host name, the version's {date}.
    std::fs::write(
        &manifest,
        "name = \"repro\"\n\
         version = \"{date}\"\n\
         hostname = \"repro\"\n\
         \n\
         [base]\n\
         distro = \"debian\"\n\
         suite = \"bookworm\"\n\
         mirror = \"http://deb.debian.org/debian\"\n\
         \n\
         [[users]]\n\
         name = \"admin\"\n\
         \n\
         [[files]]\n\
         path = \"/etc/motd\"\n\
         content = \"reproducible\\n\"\n",
    )
    .unwrap();

    let repos: Vec<PathBuf> = (1..=3)
        .map(|i| dir.path().join(format!("repo{i}")))
        .collect();
    // Two builds from scratch (the same packages: the first one's, or an earlier run's).
    let first = build(&manifest, &cache, &repos[0], true);
    let second = build(&manifest, &cache, &repos[1], true);
    assert!(
        first == second,
        "two builds of the same manifest differ: {first} and {second}:\n{}",
        differences(&repos[0], &first, &repos[1], &second)
    );
    // The cached base gives the same tree as building it.
    let third = build(&manifest, &cache, &repos[2], false);
    assert!(
        first == third,
        "the build from the cached base differs: {first} and {third}:\n{}",
        differences(&repos[0], &first, &repos[2], &third)
    );
    // Keep the packages for the next run, not the base (it is large).
    let _ = std::fs::remove_dir_all(cache.join("base"));
}
