//! Reproducible builds: with SOURCE_DATE_EPOCH set, two builds of the same manifest from
//! the same packages give the same commit, and so does a third that reuses the cached
//! base.
//!
//! Needs root (mmdebstrap --mode=root, chroot), mmdebstrap, the ostree CLI (to name the
//! differences) and the Debian mirror, through osbuild_testing::require: skipped with a
//! message naming what is missing, or failed under CI=true. The downloaded packages are
//! kept under target/tmp/osbuild-cache/packages across runs (shared with the e2e suite);
//! each run rebuilds the base twice from them (a few minutes), in a cache of its own.

use osbuild_core::cmd;
use osbuild_testing::helpers::osbuild_bin;
use osbuild_testing::{require, Need};
use std::path::{Path, PathBuf};
use std::process::Command;

const EPOCH: &str = "1700000000";

fn ostree(args: &[&str]) -> String {
    cmd::run(Command::new("ostree").args(args)).unwrap_or_else(|e| panic!("{e}"))
}

/// Commit the manifest into a new repository at `repo`; returns the checksum.
fn build(manifest: &Path, cache: &Path, repo: &Path, rebuild_base: bool) -> String {
    let mut osbuild = Command::new(osbuild_bin());
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
    if !require(&[
        Need::Root,
        Need::Mmdebstrap,
        Need::Ostree,
        Need::DebianMirror,
    ]) {
        return;
    }
    // A cache of its own, so that removing its bases at the end cannot touch a base that
    // another test is bootstrapping in the shared cache at the same time; only the
    // downloaded packages are shared, through a link.
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shared_packages = tmp.join("osbuild-cache/packages");
    std::fs::create_dir_all(&shared_packages).unwrap();
    let own_cache = tempfile::Builder::new()
        .prefix("repro-cache-")
        .tempdir_in(&tmp)
        .unwrap();
    std::os::unix::fs::symlink(&shared_packages, own_cache.path().join("packages")).unwrap();
    let cache = own_cache.path();
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
    let first = build(&manifest, cache, &repos[0], true);
    let second = build(&manifest, cache, &repos[1], true);
    assert!(
        first == second,
        "two builds of the same manifest differ: {first} and {second}:\n{}",
        differences(&repos[0], &first, &repos[1], &second)
    );
    // The cached base gives the same tree as building it.
    let third = build(&manifest, cache, &repos[2], false);
    assert!(
        first == third,
        "the build from the cached base differs: {first} and {third}:\n{}",
        differences(&repos[0], &first, &repos[2], &third)
    );
    // The private cache (its bases are large) goes with the TempDir; the link to the
    // shared packages is removed, not followed, so they stay for the next run.
}
