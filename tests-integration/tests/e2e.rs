//! The end-to-end suite: bootstrap -> commit -> serve -> make-image -> boot in qemu ->
//! `ostree admin upgrade` in the guest -> reboot into the new commit.
//!
//! Needs root (loop mounts, chroot), mmdebstrap and qemu; `scripts/install-deps.sh`
//! installs them. The bootstrapped rootfs is cached under target/tmp/fixtures.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use osbuild_testing::fixture::{self, Key};
use osbuild_testing::helpers::{free_port, osbuild_bin, workspace_root, Daemon};
use osbuild_testing::vm::{Vm, VmConfig};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BRANCH: &str = "debian/bookworm/x86_64";
const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// Run osbuild, failing with its command line and stderr; returns the last line of stdout.
fn osbuild(args: &[&str]) -> Result<String> {
    let out = cmd::run(Command::new(osbuild_bin()).args(args))?;
    Ok(out.lines().last().unwrap_or_default().trim().to_string())
}

/// Step timings, printed at the end for the record.
struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn time<T>(&mut self, step: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = f().with_context(|| format!("step {step}"))?;
        let took = start.elapsed();
        eprintln!("e2e: {step}: {:.1}s", took.as_secs_f64());
        self.0.push((step.to_string(), took));
        Ok(r)
    }
}

/// The example OS's rootfs, bootstrapped once and reused while its inputs are unchanged.
fn rootfs() -> Result<PathBuf> {
    let ws = workspace_root();
    let overlay = ws.join("examples/overlay");
    let key = Key::new("rootfs")
        .text("bootstrap --suite bookworm --kernel linux-image-cloud-amd64")
        .path(&overlay)?
        .path(&ws.join("ostree-commit/src"))?;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    fixture::cached(&cache, "rootfs", key, |dest| {
        // mmdebstrap takes minutes: its progress goes to the terminal as it runs.
        cmd::run_inherit(
            Command::new(osbuild_bin())
                .arg("bootstrap")
                .arg("--output")
                .arg(dest)
                .arg("--overlay")
                .arg(&overlay),
        )?;
        Ok(())
    })
}

/// The value of `key=` in the report line the example OS prints at boot.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Boot the image and check the report line: the booted commit and the release file.
fn boot_into(image: &Path, log: &Path, commit: &str, release: &str) -> Result<Vm> {
    let mut vm = Vm::boot(VmConfig::new(image).log(log))?;
    let line = vm.wait_for("OSBUILD-BOOTED", BOOT_TIMEOUT)?;
    anyhow::ensure!(
        field(&line, "commit") == Some(commit),
        "booted {line:?}, expected commit {commit}"
    );
    anyhow::ensure!(
        field(&line, "release") == Some(release),
        "booted {line:?}, expected release {release}"
    );
    Ok(vm)
}

#[test]
fn bootstrap_commit_serve_image_boot_upgrade() -> Result<()> {
    // Root for loop mounts and chroot.
    if !require(&[Need::Root, Need::Mmdebstrap, Need::Qemu]) {
        return Ok(());
    }
    let mut t = Timings(Vec::new());
    let rootfs = t.time("bootstrap (or cached fixture)", rootfs)?;

    let work = tempfile::Builder::new()
        .prefix("e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let tree = work.path().join("tree");
    // Hard links: the commit reads the cached fixture without copying it, and new files
    // written into `tree` never touch it.
    cmd::run(Command::new("cp").arg("-al").arg(&rootfs).arg(&tree))?;
    let release = tree.join("usr/lib/osbuild-example/release");
    fs::write(&release, "1\n")?;

    let repo = work.path().join("repo");
    let (repo_s, tree_s) = (
        repo.to_str().context("path")?,
        tree.to_str().context("path")?,
    );
    let c1 = t.time("first commit", || {
        osbuild(&[
            "commit",
            "--repo",
            repo_s,
            "--branch",
            BRANCH,
            "--tree",
            tree_s,
            "--version",
            "1",
        ])
    })?;
    anyhow::ensure!(c1.len() == 64, "commit printed {c1:?}, not a checksum");

    let port = free_port();
    let _server = Daemon::start(
        Command::new(osbuild_bin())
            .args(["serve", "--access-log", "off", "--repo"])
            .arg(&repo)
            .args(["--http", &format!("127.0.0.1:{port}")]),
        port,
        None,
    )?;
    let image = work.path().join("disk.img");
    t.time("make-image", || {
        osbuild(&[
            "make-image",
            "--url",
            &format!("http://127.0.0.1:{port}/repo/"),
            "--remote-url",
            &format!("http://10.0.2.2:{port}/repo/"),
            "--branch",
            BRANCH,
            "--output",
            image.to_str().context("path")?,
            "--size",
            "3G",
        ])
    })?;
    let allocated = cmd::run(Command::new("du").arg("-k").arg(&image))?;
    eprintln!(
        "e2e: image {} bytes apparent, {} KiB allocated",
        fs::metadata(&image)?.len(),
        allocated.split_whitespace().next().unwrap_or("?")
    );

    let mut vm = t.time("first boot to marker", || {
        boot_into(&image, &work.path().join("boot1.log"), &c1, "1")
    })?;

    // The second commit changes one file and adds another.
    fs::remove_file(&release)?;
    fs::write(&release, "2\n")?;
    fs::create_dir_all(tree.join("usr/share/osbuild-e2e"))?;
    fs::write(
        tree.join("usr/share/osbuild-e2e/added"),
        "e2e-added-file-contents\n",
    )?;
    let c2 = t.time("second commit", || {
        osbuild(&[
            "commit",
            "--repo",
            repo_s,
            "--branch",
            BRANCH,
            "--tree",
            tree_s,
            "--version",
            "2",
        ])
    })?;
    anyhow::ensure!(c2 != c1, "the second commit has the first one's checksum");

    vm.wait_for("root@osbuild:~#", BOOT_TIMEOUT)?;
    t.time("ostree admin upgrade in the guest", || {
        // Quoting splits the marker so the echoed command line cannot match it.
        vm.send_line("ostree admin upgrade && echo UPGRADE''-OK || echo UPGRADE''-FAILED")?;
        let result = vm.wait_for("UPGRADE-", Duration::from_secs(600))?;
        anyhow::ensure!(result.contains("UPGRADE-OK"), "upgrade failed: {result}");
        Ok(())
    })?;
    vm.send_line("systemctl reboot")?;
    vm.wait_exit(Duration::from_secs(300))?;
    drop(vm);

    let mut vm = t.time("boot after upgrade", || {
        boot_into(&image, &work.path().join("boot2.log"), &c2, "2")
    })?;
    vm.wait_for("root@osbuild:~#", BOOT_TIMEOUT)?;
    vm.send_line("cat /usr/share/osbuild-e2e/added; ostree admin status")?;
    vm.wait_for("e2e-added-file-contents", Duration::from_secs(60))?;
    // The first deployment is kept as the rollback target.
    vm.wait_for(&c1, Duration::from_secs(60))?;

    eprintln!("e2e timings:");
    for (step, d) in &t.0 {
        eprintln!("  {step}: {:.1}s", d.as_secs_f64());
    }
    Ok(())
}
