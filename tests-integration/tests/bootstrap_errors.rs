//! Bad input that only the real mmdebstrap can find: a package the suite does not have.
//! The error names the package as apt reports it, the exit status is non-zero, and
//! neither the output tree nor a base cache entry is left behind.
//!
//! Needs root, mmdebstrap and the Debian mirror (it stops after `apt update`: seconds).

use osbuild_testing::helpers::{osbuild_bin, output, text};
use osbuild_testing::{require, Need};
use std::fs;
use std::process::Command;

#[test]
fn a_package_the_suite_does_not_have_is_named_and_leaves_nothing() {
    if !require(&[Need::Root, Need::Mmdebstrap, Need::DebianMirror]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("osbuild.toml");
    fs::write(
        &manifest,
        "name = \"demo\"\npackages = [\"osbuild-no-such-package\"]\n[base]\ndistro = \"debian\"\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let tree = dir.path().join("tree");
    let out = output(
        Command::new(osbuild_bin())
            .arg("bootstrap")
            .arg("--manifest")
            .arg(&manifest)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--output")
            .arg(&tree),
    );
    let stderr = text(&out);
    assert!(!out.status.success(), "{stderr}");
    // apt's words, as mmdebstrap passes them on, and osbuild's step.
    assert!(
        stderr.contains("Unable to locate package osbuild-no-such-package"),
        "{stderr}"
    );
    assert!(stderr.contains("mmdebstrap"), "{stderr}");
    assert!(!tree.exists(), "{} was left behind", tree.display());
    let bases: Vec<_> = fs::read_dir(cache.join("base"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(bases.is_empty(), "base cache entries left: {bases:?}");
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tree") || n.contains("tmp"))
        .collect();
    assert!(left.is_empty(), "work files left: {left:?}");
}
