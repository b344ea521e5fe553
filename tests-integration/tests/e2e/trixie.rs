//! trixie from a manifest, end to end: a small trixie OS with an extra APT repository
//! (trixie-backports, signed by Debian's archive keyring) is bootstrapped, committed,
//! served, made into an image with make-image's default flags and booted in qemu, where
//! the guest must run trixie, have the package that only the extra repository has, keep
//! that repository configured for its own apt, and resolve names through
//! systemd-resolved's stub rather than the build host's DNS.
//!
//! One bootstrap and one boot: the bootstrapped tree is cached under
//! target/tmp/fixtures, keyed by the manifest, the overlay and the sources that shape a
//! tree (ostree-commit, admin, the CLI).
//! Needs root, mmdebstrap, qemu and the Debian mirror (deb.debian.org).

use anyhow::{Context, Result};
use osbuild_core::cmd;
use osbuild_testing::fixture::{self, Key};
use osbuild_testing::guest::{boot_into, check_all, osbuild, shell_ready, Timings};
use osbuild_testing::guest_config;
use osbuild_testing::helpers::{output, workspace_root};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian's archive keyring signs backports as it signs the suites.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// In trixie-backports and not in trixie: installed, it can only have come from there.
const BACKPORTED: &str = "qtdbustest-common";

/// The manifest: the default ref, `trixie-demo/trixie/x86_64`.
fn manifest_text() -> String {
    format!(
        r#"name = "trixie-demo"
version = "1"
hostname = "trixie-demo"
packages = ["{BACKPORTED}", "systemd-resolved"]
# The serial console's root shell and the unit that reports the booted commit.
overlays = ["overlay"]

[base]
distro = "debian"
suite = "trixie"

[[base.repositories]]
sources = "deb http://deb.debian.org/debian trixie-backports main"
keyring = "{KEYRING}"

[[files]]
path = "/usr/lib/osbuild-example/release"
content = "trixie\n"
"#
    )
}

/// The manifest and the overlay it names, in `dir`.
fn write_manifest(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(workspace_root().join("examples/overlay"))
            .arg(dir),
    )?;
    let manifest = dir.join("osbuild.toml");
    fs::write(&manifest, manifest_text())?;
    Ok(manifest)
}

/// The bootstrapped tree, built once and reused while its inputs are unchanged.
fn rootfs(manifest: &Path) -> Result<PathBuf> {
    let src = manifest.parent().context("path")?;
    fixture::bootstrapped(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "trixie",
        manifest,
        Key::new("trixie").path(src)?.path(Path::new(KEYRING))?,
    )
}

/// The build host's DNS must not be in the tree: /etc/resolv.conf is resolved's stub,
/// and no file in /etc names the host's name servers.
fn check_no_host_dns(tree: &Path) -> Result<()> {
    let conf = tree.join("usr/etc/resolv.conf");
    let target = fs::read_link(&conf).with_context(|| format!("{} is no link", conf.display()))?;
    anyhow::ensure!(
        target == Path::new("../run/systemd/resolve/stub-resolv.conf"),
        "{} points at {}",
        conf.display(),
        target.display()
    );
    let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for server in host.lines().filter(|l| l.starts_with("nameserver ")) {
        // grep exits 1 when nothing matches: read its output, not its status.
        let found = output(
            Command::new("grep")
                .args(["-rlF", "--", server])
                .arg(tree.join("usr/etc")),
        );
        anyhow::ensure!(
            found.stdout.is_empty(),
            "the build host's {server:?} is in {}",
            String::from_utf8_lossy(&found.stdout).trim()
        );
    }
    Ok(())
}

#[test]
fn trixie_with_backports_boots() -> Result<()> {
    if !require(&[Need::Root, Need::Mmdebstrap, Need::Qemu, Need::DebianMirror]) {
        return Ok(());
    }
    let mut t = Timings::default();
    let work = tempfile::Builder::new()
        .prefix("trixie-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let manifest = write_manifest(&work.path().join("src"))?;
    let rootfs = t.time("bootstrap trixie (or cached fixture)", || rootfs(&manifest))?;
    check_no_host_dns(&rootfs)?;
    let tree = work.path().join("tree");
    // Hard links: the commit reads the cached fixture without copying it.
    cmd::run(Command::new("cp").arg("-al").arg(&rootfs).arg(&tree))?;

    let repo = work.path().join("repo");
    let path = |p: &Path| p.to_str().map(str::to_string).context("path");
    let commit = t.time("commit", || {
        osbuild(&[
            "commit",
            "--manifest",
            &path(&manifest)?,
            "--repo",
            &path(&repo)?,
            "--tree",
            &path(&tree)?,
        ])
    })?;
    anyhow::ensure!(commit.len() == 64, "commit printed {commit:?}");

    let (_server, port) = osbuild_testing::guest::serve(&repo)?;
    let image = work.path().join("disk.img");
    // make-image's defaults (GRUB on a hybrid disk, booted by SeaBIOS here), and the only
    // ref the server lists, as users type it.
    t.time("make-image", || {
        osbuild(&[
            "make-image",
            "--url",
            &format!("http://127.0.0.1:{port}/repo/"),
            "--output",
            &path(&image)?,
        ])
    })?;

    let mut vm = t.time("boot to marker", || {
        boot_into(
            guest_config(&image).log(work.path().join("boot.log")),
            &commit,
            "trixie",
        )
    })?;
    t.time("checks in the guest", || {
        shell_ready(&mut vm)?;
        check_all(
            &mut vm,
            "trixie",
            &[
                (
                    "release",
                    "grep ^VERSION_CODENAME= /etc/os-release",
                    "VERSION_CODENAME=trixie",
                ),
                (
                    "backported",
                    &format!("dpkg-query -W -f '${{Version}}' {BACKPORTED}"),
                    "~bpo13",
                ),
                (
                    "sources",
                    "cat /etc/apt/sources.list.d/osbuild-1.sources",
                    "Suites: trixie-backports Components: main Signed-By: /etc/apt/keyrings/osbuild-1.gpg",
                ),
                ("resolv", "readlink /etc/resolv.conf", "stub-resolv.conf"),
                // The device's own apt reaches the extra repository, checks it with the
                // copied keyring, and names resolve through resolved (qemu's DHCP DNS).
                (
                    "apt",
                    &format!(
                        "apt-get update -o Dir::Etc::SourceList=/dev/null >/dev/null && apt-cache policy {BACKPORTED}"
                    ),
                    "trixie-backports/main",
                ),
            ],
        )
    })?;
    t.report("trixie");
    Ok(())
}
