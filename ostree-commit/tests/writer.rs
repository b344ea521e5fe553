//! osbuild's own tree writer (parallel, with a checksum cache) against libostree's:
//! the same tree gives the same root as the real `ostree commit`, a file rewritten with
//! its old size and mtime is committed with its new content, and the sizes it records
//! are read back by libostree.

use osbuild_core::glib::prelude::*;
use osbuild_core::{gio, ostree};
use osbuild_testing::helpers::{deployable_tree, noise, osbuild_bin, output, run, text};
use osbuild_testing::{require, Need};
use ostree_commit::{commit, CommitOptions};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

const BRANCH: &str = "test/x86_64";

fn options() -> CommitOptions {
    CommitOptions {
        branch: BRANCH.into(),
        timestamp: Some(1_700_000_000),
        ..CommitOptions::default()
    }
}

/// A tree with what makes content objects differ: modes, owners, symlinks (dangling
/// too), hard links, empty files and directories, xattrs on files, symlinks and
/// directories, non-ASCII names, a file large enough to take a while.
fn varied_tree(root: &Path) {
    deployable_tree(root, b"kernel");
    let w = |p: &str, c: &[u8]| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, c).unwrap();
    };
    w("usr/bin/tool", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    w("usr/share/empty", b"");
    w("usr/share/big", &noise(3 << 20, 9));
    w("usr/share/dé jà/vu.txt", "ünïcode\n".as_bytes());
    w("usr/etc/shadow", b"root:*:1::::::\n");
    fs::set_permissions(
        root.join("usr/etc/shadow"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    run(Command::new("chown")
        .arg("0:42")
        .arg(root.join("usr/etc/shadow")));
    fs::hard_link(root.join("usr/share/big"), root.join("usr/share/big-link")).unwrap();
    symlink("../share/big", root.join("usr/bin/relative")).unwrap();
    symlink("/nowhere/at/all", root.join("usr/bin/dangling")).unwrap();
    fs::create_dir_all(root.join("usr/lib/empty-dir")).unwrap();
    fs::create_dir_all(root.join("usr/lib/private")).unwrap();
    fs::set_permissions(
        root.join("usr/lib/private"),
        fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    run(Command::new("chown")
        .arg("1000:1000")
        .arg(root.join("usr/lib/private")));
    for (attr, path, value) in [
        ("user.b-second", "usr/bin/tool", b"2".as_slice()),
        ("user.a-first", "usr/bin/tool", b"1".as_slice()),
        ("user.dir", "usr/lib/private", b"d".as_slice()),
        ("trusted.link", "usr/bin/relative", b"\x00\xff".as_slice()),
    ] {
        rustix::fs::lsetxattr(
            root.join(path),
            attr,
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap_or_else(|e| panic!("setting {attr} on {path}: {e}"));
    }
}

/// The root directory's dirtree and dirmeta checksums of `rev` in `repo`.
fn root_of(repo: &Path, rev: &str) -> (String, String) {
    let repo = ostree::Repo::new_for_path(repo);
    repo.open(gio::Cancellable::NONE).unwrap();
    let (root, _) = repo.read_commit(rev, gio::Cancellable::NONE).unwrap();
    let root = root.downcast::<ostree::RepoFile>().unwrap();
    root.ensure_resolved().unwrap();
    (
        root.tree_get_contents_checksum().unwrap().to_string(),
        root.tree_get_metadata_checksum().unwrap().to_string(),
    )
}

/// `ostree commit` of `tree` into a fresh archive repo at `repo`: its root.
fn ostree_root(repo: &Path, tree: &Path) -> (String, String) {
    let r = format!("--repo={}", repo.display());
    let _ = fs::remove_dir_all(repo);
    run(Command::new("ostree").args(["init", "--mode=archive", &r]));
    let t = run(Command::new("ostree").args([
        "commit",
        &r,
        "--branch",
        BRANCH,
        &format!("--tree=dir={}", tree.display()),
    ]));
    root_of(repo, &t)
}

#[test]
fn same_root_as_ostree_commit() {
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    varied_tree(&tree);
    let ours = dir.path().join("ours");
    let c = commit(&ours, &tree, &options()).unwrap();

    let theirs = dir.path().join("theirs");
    assert_eq!(root_of(&ours, &c.checksum), ostree_root(&theirs, &tree));
    run(Command::new("ostree").args(["fsck", &format!("--repo={}", ours.display())]));

    // The sizes: libostree reads them, and they name every object of the tree.
    let repo = ostree::Repo::new_for_path(&ours);
    repo.open(gio::Cancellable::NONE).unwrap();
    let (commit_v, _) = repo.load_commit(&c.checksum).unwrap();
    let sizes = ostree::commit_get_object_sizes(&commit_v).unwrap();
    let listed = run(Command::new("ostree").args([
        "ls",
        &format!("--repo={}", ours.display()),
        "-R",
        "-C",
        &c.checksum,
    ]));
    // Files: `ostree ls -C` gives one checksum per file and two per directory.
    let big = sizes
        .iter()
        .find(|s| s.unpacked() == 3 << 20)
        .expect("the big file is in ostree.sizes");
    assert!(big.archived() > 3 << 20, "random data does not compress");
    assert!(listed.contains(&big.checksum().to_string()), "{listed}");
}

#[test]
fn a_rewritten_file_is_committed_again_and_unchanged_ones_are_not_read() {
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    varied_tree(&tree);
    let repo = dir.path().join("repo");
    commit(&repo, &tree, &options()).unwrap();
    assert!(dir.path().join(".repo.osbuild-checksums").exists());

    // Same size, same mtime, other content: only the ctime tells.
    let file = tree.join("usr/bin/tool");
    let mtime = run(Command::new("stat").args(["-c", "%y"]).arg(&file));
    fs::write(&file, b"#!/bin/sh\necho HI\n").unwrap();
    run(Command::new("touch").arg("-d").arg(&mtime).arg(&file));
    let second = commit(&repo, &tree, &options()).unwrap();
    assert!(!second.unchanged);
    let r = format!("--repo={}", repo.display());
    let content = run(Command::new("ostree").args(["cat", &r, &second.checksum, "/usr/bin/tool"]));
    assert_eq!(content, "#!/bin/sh\necho HI");

    // Nothing changed since: the same root, so no commit.
    let third = commit(&repo, &tree, &options()).unwrap();
    assert!(third.unchanged, "{third:?}");
    assert_eq!(third.checksum, second.checksum);

    // A cache naming objects the repo lacks is not trusted: a fresh repo beside it gets
    // every object.
    let objects = repo.join("objects");
    let second_root = root_of(&repo, &second.checksum);
    fs::remove_dir_all(&repo).unwrap();
    let again = commit(&repo, &tree, &options()).unwrap();
    assert!(objects.exists());
    run(Command::new("ostree").args(["fsck", &r]));
    assert_eq!(root_of(&repo, &again.checksum), second_root);
}

#[test]
fn re_commits_take_unchanged_directories_whole_and_get_the_changed_ones_right() {
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    varied_tree(&tree);
    let repo = dir.path().join("repo");
    let theirs = dir.path().join("theirs");
    commit(&repo, &tree, &options()).unwrap();
    let cache = dir.path().join(".repo.osbuild-checksums");
    assert!(
        fs::read_to_string(&cache).unwrap().contains("\ndir "),
        "the cache records directories"
    );
    let xattr = |path: &Path, value: &[u8]| {
        rustix::fs::lsetxattr(path, "user.x", value, rustix::fs::XattrFlags::empty()).unwrap()
    };
    // Each change, deep or shallow, to what a directory's dirtree or dirmeta holds; after
    // each, osbuild's re-commit must have the root `ostree commit` gives the same tree.
    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<(&str, Change)> = vec![
        (
            "a deep file rewritten",
            Box::new(|t: &Path| fs::write(t.join("usr/share/dé jà/vu.txt"), b"new").unwrap()),
        ),
        (
            "a file added",
            Box::new(|t: &Path| fs::write(t.join("usr/lib/empty-dir/new"), b"n").unwrap()),
        ),
        (
            "a file removed",
            Box::new(|t: &Path| fs::remove_file(t.join("usr/lib/empty-dir/new")).unwrap()),
        ),
        (
            "a directory's mode",
            Box::new(|t: &Path| {
                fs::set_permissions(
                    t.join("usr/lib/empty-dir"),
                    fs::Permissions::from_mode(0o750),
                )
                .unwrap()
            }),
        ),
        (
            "a directory's owner",
            Box::new(|t: &Path| {
                rustix::fs::chown(
                    t.join("usr/lib/empty-dir"),
                    Some(rustix::fs::Uid::from_raw(7)),
                    None,
                )
                .unwrap()
            }),
        ),
        (
            "a directory's xattr",
            Box::new(move |t: &Path| xattr(&t.join("usr/lib/private"), b"1")),
        ),
        (
            "the same xattr, another value",
            Box::new(move |t: &Path| xattr(&t.join("usr/lib/private"), b"2")),
        ),
        (
            "a directory renamed",
            Box::new(|t: &Path| {
                fs::rename(t.join("usr/lib/private"), t.join("usr/lib/renamed")).unwrap()
            }),
        ),
        (
            "an empty directory added",
            Box::new(|t: &Path| fs::create_dir(t.join("usr/share/dé jà/empty")).unwrap()),
        ),
        (
            "a directory emptied of its subdirectory",
            Box::new(|t: &Path| fs::remove_dir(t.join("usr/share/dé jà/empty")).unwrap()),
        ),
        (
            "a symlink retargeted",
            Box::new(|t: &Path| {
                fs::remove_file(t.join("usr/bin/dangling")).unwrap();
                symlink("/elsewhere", t.join("usr/bin/dangling")).unwrap();
            }),
        ),
    ];
    for (what, change) in &changes {
        change(&tree);
        let ours = commit(&repo, &tree, &options()).unwrap();
        assert!(!ours.unchanged, "{what}: a change, so a commit");
        assert_eq!(
            root_of(&repo, &ours.checksum),
            ostree_root(&theirs, &tree),
            "{what}"
        );
    }
    // Nothing changed: the root is the parent's, so no commit.
    assert!(commit(&repo, &tree, &options()).unwrap().unchanged);
    run(Command::new("ostree").args(["fsck", &format!("--repo={}", repo.display())]));
}

#[test]
fn progress_fd_gets_json_lines_from_start_to_end() {
    if !require(&[Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    deployable_tree(&tree, b"kernel");
    fs::write(tree.join("usr/lib/data"), noise(1 << 20, 3)).unwrap();
    let events = dir.path().join("events");
    // As a caller would: the descriptor is open in the process it starts.
    let out = output(
        Command::new("bash")
            .arg("-c")
            .arg(r#""$0" commit --repo "$1" --branch test/x86_64 --tree "$2" --progress-fd 3 3>"$3""#)
            .arg(osbuild_bin())
            .arg(dir.path().join("repo"))
            .arg(&tree)
            .arg(&events),
    );
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines[0]["type"], "Start", "{lines:?}");
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "End", "{lines:?}");
    assert_eq!(end["ok"], true);
    let checksum = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(end["message"], checksum.as_str());
    let progress = &lines[lines.len() - 2];
    assert_eq!(progress["type"], "ProgressBytes", "{lines:?}");
    assert_eq!(progress["bytes"], progress["bytesTotal"], "{progress}");
    assert!(
        progress["bytesTotal"].as_u64().unwrap() > 1 << 20,
        "{progress}"
    );
    assert_eq!(progress["steps"], progress["stepsTotal"], "{progress}");

    // A descriptor that is not open is refused before anything is written.
    let bad = output(
        Command::new(osbuild_bin())
            .args(["commit", "--repo"])
            .arg(dir.path().join("repo2"))
            .args(["--branch", "test/x86_64", "--tree"])
            .arg(&tree)
            .args(["--progress-fd", "77"]),
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--progress-fd 77"), "{}", text(&bad));
    assert!(!dir.path().join("repo2").exists());
}

#[test]
fn an_unreadable_file_is_named_and_the_repo_stays_as_it_was() {
    if !require(&[Need::Root, Need::Ostree]) {
        return;
    }
    // Root reads every file, so the commit runs as nobody, over a tree and a repo nobody
    // may write, with one file only root may read.
    let dir = tempfile::Builder::new()
        .prefix("unreadable")
        .tempdir_in(osbuild_testing::helpers::target_tmp())
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let tree = dir.path().join("tree");
    deployable_tree(&tree, b"kernel");
    let secret = tree.join("usr/lib/secret");
    fs::write(&secret, b"root only\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let repo = dir.path().join("repo");
    let mut first = Command::new(osbuild_bin());
    first
        .args(["commit", "--repo"])
        .arg(&repo)
        .args(["--branch", BRANCH, "--tree"])
        .arg(tree.join("usr/.."));
    // A first commit without the secret, as root, then the repo handed to nobody.
    fs::rename(&secret, dir.path().join("secret")).unwrap();
    run(&mut first);
    fs::rename(dir.path().join("secret"), &secret).unwrap();
    run(Command::new("chown")
        .arg("-R")
        .arg("nobody:nogroup")
        .arg(&repo));
    let before = run(Command::new("ostree").args([
        "rev-parse",
        &format!("--repo={}", repo.display()),
        BRANCH,
    ]));
    let out = output(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(osbuild_bin())
            .args(["commit", "--repo"])
            .arg(&repo)
            .args(["--branch", BRANCH, "--tree"])
            .arg(&tree),
    );
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains(&secret.display().to_string()), "{said}");
    assert!(said.contains("ermission denied"), "{said}");
    let after = run(Command::new("ostree").args([
        "rev-parse",
        &format!("--repo={}", repo.display()),
        BRANCH,
    ]));
    assert_eq!(before, after);
    run(Command::new("ostree").args(["fsck", &format!("--repo={}", repo.display())]));
}

#[test]
fn a_repo_not_in_archive_mode_and_a_wrong_gpg_home_are_named() {
    if !require(&[Need::Ostree]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    deployable_tree(&tree, b"kernel");
    let bare = dir.path().join("bare");
    run(Command::new("ostree").args([
        "init",
        "--mode=bare-user",
        &format!("--repo={}", bare.display()),
    ]));
    let err = format!("{:#}", commit(&bare, &tree, &options()).unwrap_err());
    assert!(
        err.contains(&bare.display().to_string()) && err.contains("archive mode"),
        "{err}"
    );
    let refs = run(Command::new("ostree").args(["refs", &format!("--repo={}", bare.display())]));
    assert!(refs.is_empty(), "{refs}");

    let home = dir.path().join("no-such-gpg-home");
    let repo = dir.path().join("repo");
    let err = commit(
        &repo,
        &tree,
        &CommitOptions {
            sign: Some(ostree_commit::Sign {
                key_ids: vec!["0123456789ABCDEF0123456789ABCDEF01234567".into()],
                homedir: Some(home.clone()),
            }),
            ..options()
        },
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&home.display().to_string()), "{err}");
    // A new repository appears only with its first commit.
    assert!(!repo.exists());
}
