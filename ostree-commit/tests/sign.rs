//! Signed commits and summaries, checked by the real `ostree pull` with `gpg-verify` and
//! `gpg-verify-summary` on: our key is accepted, another key is refused, and a bad key
//! leaves the repository as it was.

use osbuild_testing::gpg::{expired_key, other_key, throwaway_key, GpgKey};
use osbuild_testing::helpers::{deployable_tree, output, run, text};
use osbuild_testing::{require, Need};
use ostree_commit::{commit, sign, CommitOptions, Sign};
use std::fs;
use std::path::Path;
use std::process::Command;

const BRANCH: &str = "test/x86_64";

fn tiny_tree(root: &Path, content: &str) {
    deployable_tree(root, b"kernel");
    fs::write(root.join("usr/lib/content"), content).unwrap();
}

/// `ostree pull` of the branch from `repo` into a fresh repository that trusts `trusted`
/// and verifies commits and the summary.
fn pull(dir: &Path, repo: &Path, trusted: &GpgKey) -> std::process::Output {
    let client = dir.join(format!("client-{}", trusted.key_id));
    let _ = fs::remove_dir_all(&client);
    let r = format!("--repo={}", client.display());
    run(Command::new("ostree").args(["init", "--mode=bare-user", &r]));
    run(Command::new("ostree").args([
        "remote",
        "add",
        &r,
        "--set=gpg-verify=true",
        "--set=gpg-verify-summary=true",
        &format!("--gpg-import={}", trusted.keyring.display()),
        "origin",
        &format!("file://{}", repo.display()),
    ]));
    output(Command::new("ostree").args(["pull", &r, "origin", BRANCH]))
}

#[test]
fn signed_commits_and_summaries_pass_ostree_pull() {
    if !require(&[Need::Ostree, Need::Gpg]) {
        return;
    }
    let key = throwaway_key();
    let other = other_key();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    tiny_tree(&tree, "1");
    let repo = dir.path().join("repo");
    let signing = Sign {
        key_ids: vec![key.key_id.clone()],
        homedir: Some(key.home.clone()),
    };
    let opts = CommitOptions {
        branch: BRANCH.into(),
        sign: Some(signing.clone()),
        ..CommitOptions::default()
    };
    let c1 = commit(&repo, &tree, &opts).unwrap();
    assert!(repo.join("summary.sig").is_file());
    let ours = pull(dir.path(), &repo, key);
    assert!(ours.status.success(), "{}", text(&ours));
    // A device that trusts another key refuses the commit.
    let theirs = pull(dir.path(), &repo, other);
    assert!(
        !theirs.status.success(),
        "pulled with the wrong key: {}",
        text(&theirs)
    );

    // An unsigned commit is refused too, until `osbuild sign` signs it.
    tiny_tree(&tree, "2");
    let c2 = commit(
        &repo,
        &tree,
        &CommitOptions {
            branch: BRANCH.into(),
            ..CommitOptions::default()
        },
    )
    .unwrap();
    assert_ne!(c1.checksum, c2.checksum);
    // A device that has c1 upgrades to c2 over HTTP once `osbuild sign` (below) has
    // signed it and made the delta to it again (a delta carries its target's signatures;
    // the SampleOS test upgrades through one).
    let (_server, port) = osbuild_testing::guest::serve(&repo).unwrap();
    let device = dir.path().join("device");
    let d = format!("--repo={}", device.display());
    run(Command::new("ostree").args(["init", "--mode=bare-user", &d]));
    run(Command::new("ostree").args([
        "remote",
        "add",
        &d,
        "--set=gpg-verify=true",
        &format!("--gpg-import={}", key.keyring.display()),
        "origin",
        &format!("http://127.0.0.1:{port}/repo/"),
    ]));
    run(Command::new("ostree").args(["pull", &d, "origin", &format!("{BRANCH}@{}", c1.checksum)]));
    let unsigned = pull(dir.path(), &repo, key);
    assert!(
        !unsigned.status.success(),
        "pulled an unsigned commit: {}",
        text(&unsigned)
    );
    assert_eq!(sign(&repo, BRANCH, &signing).unwrap(), c2.checksum);
    // Signing twice keeps the one signature.
    sign(&repo, &c2.checksum, &signing).unwrap();
    let signed = pull(dir.path(), &repo, key);
    assert!(signed.status.success(), "{}", text(&signed));
    let upgraded = output(Command::new("ostree").args(["pull", &d, "origin", BRANCH]));
    assert!(upgraded.status.success(), "{}", text(&upgraded));

    // A key that is not in the home: named, and the branch stays where it was.
    tiny_tree(&tree, "3");
    let missing = Sign {
        key_ids: vec!["0123456789ABCDEF0123456789ABCDEF01234567".into()],
        homedir: Some(key.home.clone()),
    };
    let err = commit(
        &repo,
        &tree,
        &CommitOptions {
            branch: BRANCH.into(),
            sign: Some(missing),
            ..CommitOptions::default()
        },
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("0123456789ABCDEF0123456789ABCDEF01234567"),
        "{err}"
    );
    assert!(err.contains("has no secret key"), "{err}");
    let head = run(Command::new("ostree").args([
        "rev-parse",
        &format!("--repo={}", repo.display()),
        BRANCH,
    ]));
    assert_eq!(head, c2.checksum);
    let fsck = output(Command::new("ostree").args(["fsck", &format!("--repo={}", repo.display())]));
    assert!(fsck.status.success(), "{}", text(&fsck));

    // An expired key: named, the same, and nothing moves.
    let expired = expired_key();
    let err = commit(
        &repo,
        &tree,
        &CommitOptions {
            branch: BRANCH.into(),
            sign: Some(Sign {
                key_ids: vec![expired.key_id.clone()],
                homedir: Some(expired.home.clone()),
            }),
            ..CommitOptions::default()
        },
    )
    .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains(&expired.key_id), "{err}");
    assert!(err.contains("has expired ("), "{err}");
    let head = run(Command::new("ostree").args([
        "rev-parse",
        &format!("--repo={}", repo.display()),
        BRANCH,
    ]));
    assert_eq!(head, c2.checksum);
}
