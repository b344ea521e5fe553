//! status, upgrade and rollback through the library, on a sysroot made by the real
//! `ostree admin` CLI from a small tree (not booted: an image's sysroot on the build
//! host), upgrading from a `file://` remote.

use osbuild_admin::{rollback, status, upgrade, Role, Upgrade};
use osbuild_testing::helpers::{noise, ostree, run, SysrootDir};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

const BRANCH: &str = "os/x86_64";

/// Held by each test: libostree pulls in one process, one at a time. Once, with both
/// tests pulling from `file://` remotes at the same moment, one pull waited forever on
/// its main loop with no work left (ostree#605: local pulls that stall); a device runs
/// one upgrade at a time anyway (the sysroot lock).
static ONE_PULL_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_pull_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed while holding it leaves nothing the next one depends on.
    ONE_PULL_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A tree libostree can deploy, at version `version`, with `extra` bytes of random data.
fn commit(remote: &Path, dir: &Path, version: &str, extra: usize) -> String {
    commit_with_kernel(remote, dir, version, extra, b"a kernel\n")
}

fn commit_with_kernel(
    remote: &Path,
    dir: &Path,
    version: &str,
    extra: usize,
    kernel: &[u8],
) -> String {
    let tree = dir.join(format!("tree-{version}"));
    osbuild_testing::helpers::deployable_tree(&tree, kernel);
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::write(tree.join("usr/bin/release"), format!("{version}\n")).unwrap();
    fs::write(tree.join("usr/bin/data"), noise(extra, extra as u64)).unwrap();
    ostree(&[
        "commit",
        &format!("--repo={}", remote.display()),
        &format!("--branch={BRANCH}"),
        &format!("--tree=dir={}", tree.display()),
        &format!("--add-metadata-string=version={version}"),
        "--generate-sizes",
    ])
}

/// A sysroot (under the returned directory) with one deployment of commit 1 from a
/// `file://` remote; `boot_size` mounts a tmpfs of that many bytes on its /boot first.
fn deployed(
    boot_size: Option<u64>,
) -> (SysrootDir, std::path::PathBuf, std::path::PathBuf, String) {
    let dir = SysrootDir::new();
    let remote = dir.path().join("remote");
    ostree(&[
        "init",
        "--mode=archive",
        &format!("--repo={}", remote.display()),
    ]);
    let c1 = commit(&remote, dir.path(), "1", 1000);
    let root = dir.path().join("sysroot");
    let sysroot = format!("--sysroot={}", root.display());
    fs::create_dir(&root).unwrap();
    ostree(&["admin", "init-fs", root.to_str().unwrap()]);
    if let Some(size) = boot_size {
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "osbuild-test-boot",
            ])
            .arg(root.join("boot")));
    }
    ostree(&["admin", "os-init", "debian", &sysroot]);
    let repo = format!("--repo={}", root.join("ostree/repo").display());
    let url = format!("file://{}", remote.display());
    ostree(&["remote", "add", &repo, "--no-gpg-verify", "origin", &url]);
    ostree(&["pull", &repo, "origin", BRANCH]);
    ostree(&[
        "admin",
        "deploy",
        &sysroot,
        "--os=debian",
        &format!("origin:{BRANCH}"),
    ]);

    (dir, remote, root, c1)
}

#[test]
fn status_upgrade_and_rollback_on_an_image_sysroot() {
    let _serial = one_pull_at_a_time();
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    let (dir, remote, root, c1) = deployed(None);
    let sysroot = format!("--sysroot={}", root.display());
    let repo = format!("--repo={}", root.join("ostree/repo").display());
    let url = format!("file://{}", remote.display());
    let st = status(&root).unwrap();
    assert_eq!(st.deployments.len(), 1, "{st:?}");
    let d = &st.deployments[0];
    assert_eq!(
        (d.checksum.as_str(), d.role, d.version.as_deref()),
        (c1.as_str(), Role::Default, Some("1"))
    );
    assert_eq!(d.refspec.as_deref(), Some("origin:os/x86_64"));
    assert!(d.timestamp.is_some_and(|t| t > 1_600_000_000), "{d:?}");
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["deployments"][0]["role"], "default");

    // Nothing to roll back to yet: said, and nothing changes.
    let err = format!("{:#}", rollback(&root).unwrap_err());
    assert!(err.contains("no previous deployment"), "{err}");
    assert!(err.contains(&c1), "{err}");
    assert!(
        matches!(upgrade(&root, true).unwrap(), Upgrade::UpToDate { checksum, .. } if checksum == c1)
    );

    // --check: the new commit and its download, with nothing deployed.
    let c2 = commit(&remote, dir.path(), "2", 200_000);
    match upgrade(&root, true).unwrap() {
        Upgrade::Available(u) => {
            assert_eq!((u.from.as_str(), u.to.as_str()), (c1.as_str(), c2.as_str()));
            assert_eq!(u.version.as_deref(), Some("2"));
            let n = u.download.expect("ostree.sizes was generated");
            // The 200 kB of random data, compressed to no less, plus small objects.
            assert!((200_000..260_000).contains(&n), "download estimate {n}");
        }
        other => panic!("expected an update, got {other:?}"),
    }
    assert_eq!(status(&root).unwrap().deployments.len(), 1);

    // The upgrade deploys it as the default (not booted, so not staged).
    match upgrade(&root, false).unwrap() {
        Upgrade::Deployed(u) => assert_eq!(u.to, c2),
        other => panic!("expected a deploy, got {other:?}"),
    }
    let order = |root: &Path| -> Vec<(String, Role)> {
        status(root)
            .unwrap()
            .deployments
            .into_iter()
            .map(|d| (d.checksum, d.role))
            .collect()
    };
    assert_eq!(
        order(&root),
        [(c2.clone(), Role::Default), (c1.clone(), Role::Rollback)]
    );

    // Rollback swaps them, and the real ostree agrees; twice brings the upgrade back.
    let r = rollback(&root).unwrap();
    assert_eq!(
        (r.from.checksum.as_str(), r.to.checksum.as_str()),
        (c2.as_str(), c1.as_str())
    );
    assert_eq!(
        order(&root),
        [(c1.clone(), Role::Default), (c2.clone(), Role::Rollback)]
    );
    let listed = ostree(&["admin", "status", &sysroot]);
    let first = listed.lines().next().unwrap_or_default();
    assert!(first.contains(&c1), "ostree admin status:\n{listed}");
    rollback(&root).unwrap();
    assert_eq!(
        order(&root),
        [(c2.clone(), Role::Default), (c1.clone(), Role::Rollback)]
    );

    // A remote that is gone, and a ref that is gone: named, and nothing changes.
    let before = order(&root);
    ostree(&["remote", "delete", &repo, "origin"]);
    ostree(&[
        "remote",
        "add",
        &repo,
        "--no-gpg-verify",
        "origin",
        "file:///nonexistent/repo",
    ]);
    let err = format!("{:#}", upgrade(&root, false).unwrap_err());
    assert!(
        err.contains("remote origin") && err.contains("file:///nonexistent/repo"),
        "{err}"
    );
    assert_eq!(order(&root), before);
    ostree(&["remote", "delete", &repo, "origin"]);
    ostree(&["remote", "add", &repo, "--no-gpg-verify", "origin", &url]);
    ostree(&[
        "refs",
        &format!("--repo={}", remote.display()),
        "--delete",
        BRANCH,
    ]);
    let err = format!("{:#}", upgrade(&root, true).unwrap_err());
    assert!(err.contains(BRANCH), "{err}");
    assert_eq!(order(&root), before);

    // A remote that wants signatures refuses an unsigned commit.
    commit(&remote, dir.path(), "3", 10);
    ostree(&["remote", "delete", &repo, "origin"]);
    ostree(&[
        "remote",
        "add",
        &repo,
        "--set=gpg-verify=true",
        "origin",
        &url,
    ]);
    let err = format!("{:#}", upgrade(&root, false).unwrap_err());
    assert!(
        err.contains("remote origin") && err.contains("GPG"),
        "{err}"
    );
    assert_eq!(order(&root), before);
}

/// A /boot without room for the new kernel: refused before anything is deployed, with
/// how much is missing.
#[test]
fn upgrade_refuses_a_full_boot() {
    let _serial = one_pull_at_a_time();
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    // Room for the first tiny kernel, not for a 300 kB one.
    let (dir, remote, root, c1) = deployed(Some(256 * 1024));
    let boot = root.join("boot");
    let guard = Unmount(boot.clone());
    let kernel = noise(300_000, 7);
    commit_with_kernel(&remote, dir.path(), "2", 10, &kernel);
    let err = format!("{:#}", upgrade(&root, false).unwrap_err());
    assert!(err.contains("no room for the new kernel"), "{err}");
    assert!(err.contains(&boot.display().to_string()), "{err}");
    assert!(err.contains("free") && err.contains("more"), "{err}");
    let st = status(&root).unwrap();
    assert_eq!(st.deployments.len(), 1);
    assert_eq!(st.deployments[0].checksum, c1);
    drop(guard);
}

/// Unmounts when dropped, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = osbuild_core::cmd::run(Command::new("umount").arg(&self.0));
    }
}
