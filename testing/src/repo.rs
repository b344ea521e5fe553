//! Real repositories made with the `ostree` CLI, for tests. These helpers panic with the
//! tool's stderr on failure, as test helpers should.

use std::path::Path;
use std::process::Command;

/// Run `ostree` and return its trimmed stdout.
pub fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .expect("running ostree (install the ostree package)");
    assert!(
        out.status.success(),
        "ostree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `--repo=PATH`.
pub fn repo_arg(repo: &Path) -> String {
    format!("--repo={}", repo.display())
}

/// Create an archive-mode repository.
pub fn init_archive(repo: &Path) {
    ostree(&["init", "--mode=archive", &repo_arg(repo)]);
}

/// Commit the directory `tree` to `branch` (on top of its head), with a fixed timestamp
/// when given, then update the summary as a publishing repo would. Returns the checksum.
pub fn commit_tree(repo: &Path, branch: &str, tree: &Path, timestamp: Option<u64>) -> String {
    let mut args = vec![
        "commit".to_string(),
        repo_arg(repo),
        format!("--branch={branch}"),
        format!("--tree=dir={}", tree.display()),
    ];
    if let Some(t) = timestamp {
        args.push(format!("--timestamp=@{t}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let checksum = ostree(&refs);
    ostree(&["summary", "-u", &repo_arg(repo)]);
    checksum
}

/// Commit a tree holding exactly `files` (relative path, content).
pub fn commit_files(
    repo: &Path,
    branch: &str,
    files: &[(&str, &[u8])],
    timestamp: Option<u64>,
) -> String {
    let tree = tempfile::tempdir().expect("temp dir");
    for (name, content) in files {
        let p = tree.path().join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
    }
    commit_tree(repo, branch, tree.path(), timestamp)
}

/// The commit a ref points at.
pub fn rev_parse(repo: &Path, refspec: &str) -> String {
    ostree(&["rev-parse", &repo_arg(repo), refspec])
}

/// Deterministic incompressible bytes, so objects stay large once compressed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tree in the OSTree layout with a stand-in kernel and initramfs: enough to validate,
/// commit and deploy, not to boot.
pub fn stub_bootable_tree(root: &Path) {
    let moddir = root.join("usr/lib/modules/6.1.0-test");
    std::fs::create_dir_all(&moddir).expect("mkdir");
    std::fs::create_dir_all(root.join("usr/etc")).expect("mkdir");
    std::fs::write(moddir.join("vmlinuz"), "kernel").expect("write");
    std::fs::write(moddir.join("initramfs.img"), "initramfs").expect("write");
    std::fs::write(root.join("usr/lib/os-release"), "ID=test\n").expect("write");
}
