//! The order of publication: `osbuild commit` killed at random moments never leaves a
//! repository that fails `ostree fsck`, a ref other than the old or the new head, or a
//! served repository a client cannot pull from. Each commit also makes a static delta
//! from its parent, which the summary indexes.

use osbuild_testing::guest::serve;
use osbuild_testing::helpers::{deployable_tree, osbuild_bin, output, pull_fresh, run, text, Rng};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BRANCH: &str = "test/x86_64";

/// A deployable tree of `files` incompressible files of 8 KiB.
fn tree(root: &Path, files: usize, rng: &mut Rng) {
    deployable_tree(root, b"kernel");
    for i in 0..files {
        let dir = root.join(format!("usr/share/data/{:02}", i % 50));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), rng.bytes(8192)).unwrap();
    }
}

fn commit(repo: &Path, tree: &Path) -> Command {
    let mut c = Command::new(osbuild_bin());
    c.args(["commit", "--repo"])
        .arg(repo)
        .args(["--branch", BRANCH, "--tree"])
        .arg(tree);
    c
}

fn head(repo: &Path) -> String {
    run(Command::new("ostree").args(["rev-parse", &format!("--repo={}", repo.display()), BRANCH]))
}

/// `ostree pull` of the branch over HTTP into a fresh client repository.
fn pull(dir: &Path, url: &str) -> std::process::Output {
    pull_fresh(dir, url, BRANCH)
}

#[test]
fn killed_commits_leave_the_old_or_the_new_head() {
    if !require(&[Need::Ostree]) {
        return;
    }
    let mut rng = Rng::from_clock("publish");
    let dir = tempfile::tempdir_in(osbuild_testing::helpers::target_tmp()).unwrap();
    let repo = dir.path().join("repo");
    let root = dir.path().join("tree");
    tree(&root, 2000, &mut rng);
    run(&mut commit(&repo, &root));
    let (_server, port) = serve(&repo).unwrap();
    let url = format!("http://127.0.0.1:{port}/repo/");

    // Commits of a change, timed: the kills land within that time. The quickest of two,
    // since a re-commit's time varies with what else the machine does.
    let mut took = Duration::MAX;
    let mut said = String::new();
    for _ in 0..2 {
        tree(&root, 200, &mut rng);
        let start = Instant::now();
        let out = output(&mut commit(&repo, &root));
        took = took.min(start.elapsed());
        assert!(out.status.success(), "{}", text(&out));
        said = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    assert!(said.contains("static delta "), "no delta reported: {said}");
    let listed = run(Command::new("ostree").args([
        "static-delta",
        "list",
        &format!("--repo={}", repo.display()),
    ]));
    assert!(listed.lines().count() >= 1, "{listed}");

    let mut outcomes = Vec::new();
    for round in 0..16 {
        let old = head(&repo);
        tree(&root, 200, &mut rng);
        // From 30% to 105% of a commit's time: most land in the writes, some in the
        // delta, ref and summary at the end.
        let span = took.as_micros() as u64;
        let delay = Duration::from_micros(span * 3 / 10 + rng.next_u64() % (span * 3 / 4 + 1));
        let mut child = commit(&repo, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while start.elapsed() < delay && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            // It finished before the kill: commits are quicker now than timed, so the
            // next kills aim within this one's time.
            took = took.min(start.elapsed());
        }
        let new = head(&repo);
        let fsck =
            output(Command::new("ostree").args(["fsck", &format!("--repo={}", repo.display())]));
        assert!(
            fsck.status.success(),
            "round {round} (killed after {delay:?}): ostree fsck: {}",
            text(&fsck)
        );
        if new != old {
            // The new head is a whole commit on top of the old one.
            let parent = run(Command::new("ostree").args([
                "rev-parse",
                &format!("--repo={}", repo.display()),
                &format!("{new}^"),
            ]));
            assert_eq!(parent, old, "round {round}: the ref moved to a stranger");
        }
        let pulled = pull(dir.path(), &url);
        assert!(
            pulled.status.success(),
            "round {round} (killed after {delay:?}): pull: {}",
            text(&pulled)
        );
        outcomes.push(format!(
            "{delay:?}: {}",
            match (status.success(), new == old) {
                (true, _) => "finished",
                (false, true) => "killed, old head",
                (false, false) => "killed, new head",
            }
        ));
    }
    eprintln!("publish: a commit takes {took:?}; kills: {outcomes:?}");
    assert!(
        outcomes.iter().filter(|o| o.contains("killed")).count() >= 10,
        "fewer than 10 commits were killed: {outcomes:?}"
    );
}
