//! Pruning keeps the last N commits of a branch and the deltas between them, deletes the
//! rest, passes `ostree fsck`, and a device on a kept commit still upgrades to the head.

use osbuild_testing::helpers::{deployable_tree, output, run, text};
use osbuild_testing::{require, Need};
use ostree_commit::{commit, prune, CommitOptions};
use std::fs;
use std::path::Path;
use std::process::Command;

fn tiny_tree(root: &Path, content: &str) {
    deployable_tree(root, b"kernel");
    fs::write(root.join("usr/lib/content"), content).unwrap();
}

fn ostree(repo: &Path, args: &[&str]) -> String {
    run(Command::new("ostree")
        .args(args)
        .arg(format!("--repo={}", repo.display())))
}

#[test]
fn prune_keeps_the_last_commits_and_their_deltas() {
    if !require(&[Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let tree = dir.path().join("tree");
    let mut commits = Vec::new();
    for i in 0..5 {
        tiny_tree(&tree, &format!("version {i}\n"));
        let c = commit(
            &repo,
            &tree,
            &CommitOptions {
                branch: "os/a".into(),
                ..CommitOptions::default()
            },
        )
        .unwrap();
        commits.push(c.checksum);
    }
    // Another branch, whose history --ref leaves alone.
    for i in 0..3 {
        tiny_tree(&tree, &format!("other {i}\n"));
        commit(
            &repo,
            &tree,
            &CommitOptions {
                branch: "os/b".into(),
                ..CommitOptions::default()
            },
        )
        .unwrap();
    }
    let deltas = ostree(&repo, &["static-delta", "list"]);
    assert_eq!(deltas.lines().count(), 4 + 2, "{deltas}");

    // A device on the fourth commit (kept).
    let client = dir.path().join("client");
    let r = format!("--repo={}", client.display());
    run(Command::new("ostree").args(["init", "--mode=bare-user", &r]));
    run(Command::new("ostree").args([
        "remote",
        "add",
        &r,
        "--no-gpg-verify",
        "origin",
        &format!("file://{}", repo.display()),
    ]));
    run(Command::new("ostree").args(["pull", &r, "origin", &format!("os/a@{}", commits[3])]));

    // Bad input first: nothing changes.
    let err = format!("{:#}", prune(&repo, 0, None, None).unwrap_err());
    assert!(err.contains("--keep 0"), "{err}");
    let err = format!("{:#}", prune(&repo, 2, Some("os/nope"), None).unwrap_err());
    assert!(err.contains("os/nope"), "{err}");

    let p = prune(&repo, 2, Some("os/a"), None).unwrap();
    assert_eq!((p.commits, p.deltas), (3, 3), "{p:?}");
    assert!(p.objects > 0 && p.bytes > 0, "{p:?}");
    let log = ostree(&repo, &["log", "os/a"]);
    assert_eq!(
        log.lines().filter(|l| l.starts_with("commit ")).count(),
        2,
        "{log}"
    );
    assert!(
        log.contains(&commits[4]) && log.contains(&commits[3]),
        "{log}"
    );
    assert_eq!(
        ostree(&repo, &["log", "os/b"])
            .lines()
            .filter(|l| l.starts_with("commit "))
            .count(),
        3
    );
    let deltas = ostree(&repo, &["static-delta", "list"]);
    assert!(
        deltas.contains(&format!("{}-{}", commits[3], commits[4])),
        "{deltas}"
    );
    assert_eq!(deltas.lines().count(), 1 + 2, "{deltas}");
    let fsck = output(Command::new("ostree").args(["fsck", &format!("--repo={}", repo.display())]));
    assert!(fsck.status.success(), "{}", text(&fsck));

    // The device upgrades to the head.
    let pulled = output(Command::new("ostree").args(["pull", &r, "origin", "os/a"]));
    assert!(pulled.status.success(), "{}", text(&pulled));
    let head = run(Command::new("ostree").args(["rev-parse", &r, "origin:os/a"]));
    assert_eq!(head, commits[4]);
}
