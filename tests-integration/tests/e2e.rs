//! The end-to-end suite: SampleOS (examples/sampleos) bootstrapped from its manifest ->
//! commit -> serve -> make-image -> boot in qemu, where one boot checks every manifest
//! feature and the fortune teller -> `ostree admin upgrade` in the guest -> reboot into the
//! new commit.
//!
//! Needs root (loop mounts, chroot), mmdebstrap and qemu; `scripts/install-deps.sh`
//! installs them, and `scripts/test.sh` builds the fortuneteller binary first. The
//! bootstrapped rootfs is cached under target/tmp/fixtures.

// Slow tests of their own, in this binary so that libtest's two threads pack them with
// the boot matrix (test binaries run one after another: alone, each left a core idle).
#[path = "e2e/containers.rs"]
mod containers;
#[path = "e2e/openrc.rs"]
mod openrc;
#[path = "e2e/reproducible.rs"]
mod reproducible;
#[path = "e2e/trixie.rs"]
mod trixie;

use anyhow::{Context, Result};
use image_builder::{Bootloader, Firmware, Format};
use osbuild_core::cmd;
use osbuild_testing::fixture::{self, Key};
use osbuild_testing::garage::Garage;
use osbuild_testing::guest::{
    boot_into, check_all, commit, osbuild, probe, serve, shell_ready, Timings,
};
use osbuild_testing::helpers::{free_port, osbuild_bin, workspace_root};
use osbuild_testing::vm::{Vm, VmConfig};
use osbuild_testing::{guest_config, GUEST_CPUS};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// SampleOS's ref: the manifest's default `{name}/{suite}/{arch}`.
const BRANCH: &str = "sampleos/bookworm/x86_64";

/// examples/sampleos and the overlay it names, copied to `dest` with the fortuneteller
/// binary where the manifest expects it (bin/ is not in the source tree).
fn sampleos(dest: &Path) -> Result<PathBuf> {
    let ws = workspace_root();
    let bin = osbuild_bin().with_file_name("fortuneteller");
    anyhow::ensure!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build -p fortuneteller` (scripts/test.sh does)",
        bin.display()
    );
    let examples = dest.join("examples");
    fs::create_dir_all(&examples)?;
    for dir in ["sampleos", "overlay"] {
        cmd::run(
            Command::new("cp")
                .arg("-a")
                .arg(ws.join("examples").join(dir))
                .arg(&examples),
        )?;
    }
    let installed = examples.join("sampleos/bin/fortuneteller");
    fs::create_dir_all(installed.parent().context("path")?)?;
    fs::copy(&bin, &installed).with_context(|| format!("copying {}", bin.display()))?;
    Ok(examples.join("sampleos/osbuild.toml"))
}

/// SampleOS's rootfs, bootstrapped from its manifest once and reused while its inputs
/// are unchanged.
fn rootfs(work: &Path) -> Result<PathBuf> {
    let manifest = sampleos(&work.join("src"))?;
    let examples = manifest.parent().and_then(Path::parent).context("path")?;
    fixture::bootstrapped(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        "sampleos",
        &manifest,
        Key::new("sampleos").path(examples)?,
    )
}

/// Every feature SampleOS's manifest asks for, seen from inside the booted guest, and the
/// fortune teller answering through qemu's port forward.
fn check_sampleos(vm: &mut Vm, host_port: u16) -> Result<()> {
    let checks: &[(&str, &str, &str)] = &[
        ("hostname", "hostname", "sampleos"),
        (
            "user",
            "getent passwd sample",
            "sample:x:1000:1000::/var/home/sample:/bin/bash",
        ),
        ("groups", "id -nG sample", "sample sudo"),
        ("home", "stat -c '%U %a' /var/home/sample", "sample 700"),
        (
            "key",
            "cat /etc/ssh/authorized_keys.d/sample",
            "sample@sampleos-example",
        ),
        (
            "file",
            "stat -c '%a %U %G' /etc/sampleos/motd",
            "640 sample sudo",
        ),
        (
            "content",
            "cat /etc/sampleos/motd",
            "Welcome to SampleOS, built with osbuild.",
        ),
        (
            "service",
            "systemctl is-active fortuneteller.service",
            "active",
        ),
        (
            "package",
            "dpkg-query -W -f '${Status}' curl",
            "install ok installed",
        ),
        ("cmdline", "cat /proc/cmdline", "sampleos.greeting=hello"),
        ("version", "ostree admin status", "Version: 1"),
        ("script", "grep ^root: /etc/shadow", "root:$6$sampleos$"),
        (
            "fortune",
            "curl -s -o /dev/null -w '%{http_code}' http://localhost:8090/fortuneteller",
            "200",
        ),
        (
            "completion",
            "ls /usr/share/bash-completion/completions/osbuild",
            "osbuild",
        ),
    ];
    check_all(vm, "SampleOS", checks)?;
    // From the host, as the README's main job does.
    let reply = http_get(host_port, "/fortuneteller")?;
    anyhow::ensure!(
        reply.starts_with("HTTP/1.1 200 OK") && reply.trim_end().ends_with('.'),
        "GET /fortuneteller through the port forward gave {reply:?}"
    );
    eprintln!(
        "e2e: the fortune teller says: {}",
        reply.lines().last().unwrap_or_default()
    );
    Ok(())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn bootstrap_commit_serve_image_boot_upgrade() -> Result<()> {
    // Root for loop mounts and chroot.
    if !require(&[Need::Root, Need::Mmdebstrap, Need::Qemu]) {
        return Ok(());
    }
    let mut t = Timings::default();
    let work = tempfile::Builder::new()
        .prefix("e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let rootfs = t.time("bootstrap SampleOS (or cached fixture)", || {
        rootfs(work.path())
    })?;
    let manifest = work.path().join("src/examples/sampleos/osbuild.toml");
    let tree = work.path().join("tree");
    // Hard links: the commit reads the cached fixture without copying it, and new files
    // written into `tree` never touch it.
    cmd::run(Command::new("cp").arg("-al").arg(&rootfs).arg(&tree))?;
    let release = tree.join("usr/lib/osbuild-example/release");
    fs::write(&release, "1\n")?;
    // One try rather than three: each failed boot costs a minute under TCG (the countdown
    // is the same comparisons for every count).
    let tries = tree.join("usr/lib/osbuild/boot-tries");
    fs::create_dir_all(tries.parent().context("parent")?)?;
    fs::write(&tries, format!("{TRIES}\n"))?;

    let repo = work.path().join("repo");
    let c1 = t.time("first commit", || commit(&repo, BRANCH, &tree, Some("1")))?;

    // Signed: the device gets the key and refuses what it did not sign. `osbuild sign`
    // signs after the fact and makes the static delta to the commit again, so the
    // upgrade through it carries the signature.
    let key = osbuild_testing::gpg::throwaway_key();
    let sign = |checksum: &str| {
        cmd::run(
            Command::new(osbuild_bin())
                .args(["sign", "--repo"])
                .arg(&repo)
                .arg("--gpg-homedir")
                .arg(&key.home)
                .args(["--gpg-sign", &key.key_id, checksum]),
        )
    };
    sign(&c1)?;
    let (_server, port) = serve(&repo)?;
    let image = work.path().join("disk.img");
    let device_key = osbuild_testing::sshd::KeyPair::generate(&work.path().join("device_key"))?;
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
            // For its kernel arguments; --remote-url overrides its [remote].
            "--manifest",
            manifest.to_str().context("path")?,
            // Provisioned into this device only: a user who logs in with this key.
            "--user",
            "admin",
            "--ssh-authorized-key",
            device_key.public.to_str().context("path")?,
            "--gpg-key",
            key.keyring.to_str().context("path")?,
        ])
    })?;
    let allocated = cmd::run(Command::new("du").arg("-k").arg(&image))?;
    eprintln!(
        "e2e: image {} bytes apparent, {} KiB allocated",
        fs::metadata(&image)?.len(),
        allocated.split_whitespace().next().unwrap_or("?")
    );

    let fortune_port = free_port();
    let ssh_port = free_port();
    let mut vm = t.time("first boot to marker", || {
        boot_into(
            guest_config(&image)
                .log(work.path().join("boot1.log"))
                .forward(fortune_port, 8090)
                .forward(ssh_port, 22),
            &c1,
            "1",
        )
    })?;
    t.time("SampleOS checks in the guest", || {
        shell_ready(&mut vm)?;
        check_sampleos(&mut vm, fortune_port)
    })?;
    t.time("SSH login as the provisioned user", || {
        ssh_login(&device_key.private, ssh_port)
    })?;

    // The second commit changes one file and adds another.
    fs::remove_file(&release)?;
    fs::write(&release, "2\n")?;
    fs::create_dir_all(tree.join("usr/share/osbuild-e2e"))?;
    fs::write(
        tree.join("usr/share/osbuild-e2e/added"),
        "e2e-added-file-contents\n",
    )?;
    let c2 = t.time("second commit", || commit(&repo, BRANCH, &tree, Some("2")))?;
    anyhow::ensure!(c2 != c1, "the second commit has the first one's checksum");

    t.time("unsigned upgrade refused in the guest", || {
        vm.send_line(
            "ostree admin upgrade >/tmp/unsigned.log 2>&1 && echo UPGRADE''-OK || echo UPGRADE''-FAILED",
        )?;
        let result = vm.wait_for("UPGRADE-", Duration::from_secs(600))?;
        let said = probe(&mut vm, "unsigned", "cat /tmp/unsigned.log")?;
        anyhow::ensure!(
            result.contains("UPGRADE-FAILED") && said.contains("GPG"),
            "the device took an unsigned commit: {result} {said}"
        );
        eprintln!("e2e: unsigned upgrade refused: {}", said.trim());
        Ok(())
    })?;
    sign(&c2)?;
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
        boot_into(
            guest_config(&image).log(work.path().join("boot2.log")),
            &c2,
            "2",
        )
    })?;
    shell_ready(&mut vm)?;
    let added = probe(&mut vm, "added", "cat /usr/share/osbuild-e2e/added")?;
    anyhow::ensure!(
        added == "e2e-added-file-contents",
        "the added file holds {added:?}"
    );
    // The first deployment is kept as the rollback target.
    let status = probe(&mut vm, "status", "ostree admin status")?;
    anyhow::ensure!(
        status.contains(&c1),
        "no rollback deployment of {c1}: {status}"
    );

    t.report("e2e");
    Ok(())
}

/// Log in over qemu's port forward with the key make-image provisioned for `admin`, as a
/// user would: the guest's sshd may still be starting, so try for a while.
fn ssh_login(key: &Path, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = cmd::output(
            Command::new("ssh")
                .arg("-i")
                .arg(key)
                .args(["-p", &port.to_string()])
                .args([
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
                .args(["admin@127.0.0.1", "id -un; cat /etc/hostname"]),
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            eprintln!("e2e: ssh as admin: {}", stdout.replace('\n', " "));
            anyhow::ensure!(stdout.starts_with("admin\n"), "ssh ran as {stdout:?}");
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "ssh admin@127.0.0.1 -p {port} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// One row of the boot matrix: how the image is made and which firmware boots it.
struct Variant {
    name: &'static str,
    bootloader: Bootloader,
    firmware: Firmware,
    format: Format,
    /// Boot under OVMF (else SeaBIOS).
    uefi: bool,
    /// Made with --secure-boot and booted with Secure Boot on.
    secure_boot: bool,
    /// The bad updates this row's device then survives (automatic fallback).
    fallback: Fallback,
}

/// Which bad updates a matrix row's device is given after its upgrade, to fall back from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fallback {
    None,
    /// A commit whose health check fails: it boots, fails and reboots until its tries are
    /// used up.
    Unhealthy,
    /// That one, then a commit that never reaches userspace (a broken initramfs: the
    /// kernel panics, and panic=10 reboots it). GRUB and systemd-boot count those boots;
    /// syslinux cannot (it rolls back from userspace).
    UnhealthyAndPanics,
}

/// Every bootable variant but GRUB on a hybrid disk under BIOS, which the SampleOS test
/// above boots and upgrades (it uses make-image's defaults). qcow2 rides with BIOS-only
/// GRUB: each row costs three TCG boots' worth of CPU, and the format is independent of
/// the boot path.
const VARIANTS: &[Variant] = &[
    Variant {
        name: "grub-uefi-secureboot",
        bootloader: Bootloader::Grub,
        firmware: Firmware::Uefi,
        format: Format::Raw,
        uefi: true,
        secure_boot: true,
        fallback: Fallback::Unhealthy,
    },
    Variant {
        name: "syslinux-bios-mbr",
        bootloader: Bootloader::Syslinux,
        firmware: Firmware::Bios,
        format: Format::Raw,
        uefi: false,
        secure_boot: false,
        fallback: Fallback::Unhealthy,
    },
    Variant {
        name: "grub-bios-gpt-qcow2",
        bootloader: Bootloader::Grub,
        firmware: Firmware::Bios,
        format: Format::Qcow2,
        uefi: false,
        secure_boot: false,
        fallback: Fallback::UnhealthyAndPanics,
    },
    Variant {
        name: "grub-uefi-gpt",
        bootloader: Bootloader::Grub,
        firmware: Firmware::Uefi,
        format: Format::Raw,
        uefi: false,
        secure_boot: false,
        fallback: Fallback::None,
    },
    Variant {
        name: "systemd-boot-uefi",
        bootloader: Bootloader::SystemdBoot,
        firmware: Firmware::Uefi,
        format: Format::Raw,
        uefi: true,
        secure_boot: false,
        fallback: Fallback::UnhealthyAndPanics,
    },
    Variant {
        name: "grub-hybrid-on-uefi",
        bootloader: Bootloader::Grub,
        firmware: Firmware::Hybrid,
        format: Format::Raw,
        uefi: true,
        secure_boot: false,
        fallback: Fallback::None,
    },
    // Live ISO (boot only): one hybrid ISO, booted through isolinux under SeaBIOS and
    // through GRUB from the El Torito EFI image under OVMF.
    Variant {
        name: "live-iso",
        bootloader: Bootloader::Grub,
        firmware: Firmware::Hybrid,
        format: Format::Iso,
        uefi: false,
        secure_boot: false,
        fallback: Fallback::None,
    },
];

/// What every matrix row starts from: images are made from `c1`, served at `url`; devices
/// upgrade to `c2`, in `second` (served at `second_port`); the bad updates' trees.
struct Matrix {
    dir: PathBuf,
    url: String,
    /// The port `url` serves on (c1 only).
    first_port: u16,
    second: PathBuf,
    second_port: u16,
    c1: String,
    c2: String,
    unhealthy: PathBuf,
    panics: PathBuf,
    /// The bucket [`BUCKET_ROW`] is made from and upgrades from, holding `c1`.
    garage: Option<Garage>,
}

/// Make the variant's image from `c1`, boot it, upgrade in the guest to `c2`, boot again
/// and check it runs `c2`; then the row's rollback and bad updates.
fn boot_and_upgrade(v: &Variant, m: &Matrix) -> Result<()> {
    let (dir, url, c1, c2) = (
        m.dir.as_path(),
        m.url.as_str(),
        m.c1.as_str(),
        m.c2.as_str(),
    );
    // A row given bad updates has an update server of its own, starting at c2, so that
    // they reach no other row's device.
    let own_updates = match v.fallback {
        Fallback::None => None,
        _ => {
            let repo = dir.join(format!("updates-{}", v.name));
            cmd::run(Command::new("cp").arg("-a").arg(&m.second).arg(&repo))?;
            let (server, port) = serve(&repo)?;
            Some((repo, server, port))
        }
    };
    let upgrade_port = own_updates.as_ref().map_or(m.second_port, |o| o.2);
    let bucket = match v.name {
        BUCKET_ROW => Some(m.garage.as_ref().context("no bucket for the bucket row")?),
        _ => None,
    };
    let (url, remote_url) = match bucket {
        Some(g) => (
            g.web_url(0, BUCKET_PREFIX),
            format!("http://{BUCKET_HOST}:{}/{BUCKET_PREFIX}/", g.web_port(0)),
        ),
        // `osbuild vm test` points the device at its update server itself: the image
        // follows a server that never gets an update.
        None if v.name == VM_TEST_ROW => (
            url.to_string(),
            format!("http://10.0.2.2:{}/repo/", m.first_port),
        ),
        None => (
            url.to_string(),
            format!("http://10.0.2.2:{upgrade_port}/repo/"),
        ),
    };
    let image = dir.join(format!("{}.{}", v.name, v.format.name()));
    let secure_boot: &[&str] = if v.secure_boot {
        &["--secure-boot"]
    } else {
        &[]
    };
    osbuild(
        &[
            &[
                "make-image",
                "--url",
                &url,
                "--remote-url",
                &remote_url,
                "--branch",
                BRANCH,
                "--bootloader",
                v.bootloader.name(),
                "--firmware",
                v.firmware.name(),
                "--output",
                image.to_str().context("path")?,
            ],
            secure_boot,
        ]
        .concat(),
    )?;
    if v.format == Format::Iso {
        return boot_live(v, dir, &image, c1);
    }
    // Written to a disk 1 GiB larger than the image: the root grows into it at first boot.
    let made = fs::metadata(&image)?.len();
    match v.format {
        Format::Raw => fs::OpenOptions::new()
            .write(true)
            .open(&image)?
            .set_len(made + (1 << 30))?,
        Format::Qcow2 => {
            cmd::run(
                Command::new("qemu-img")
                    .arg("resize")
                    .arg(&image)
                    .arg("+1G"),
            )?;
        }
        Format::Iso => unreachable!("booted above"),
    }
    if v.name == VM_TEST_ROW {
        let (repo, _server, port) = own_updates.as_ref().context("no update server")?;
        return vm_test(v, m, &image, repo, *port);
    }
    let uefi = v.uefi || v.firmware == Firmware::Uefi;
    let config = |n: u32| {
        guest_config(&image)
            .uefi(uefi)
            .secure_boot(v.secure_boot)
            .log(dir.join(format!("{}-boot{n}.log", v.name)))
    };
    let mut vm = boot_into(config(1), c1, "1")?;
    shell_ready(&mut vm)?;
    // Waits for the grower if it still runs; it is a oneshot that stays active.
    let root_mib = probe(
        &mut vm,
        "rootsize",
        "systemctl start osbuild-grow-root.service; df -B1M --output=size /sysroot | tail -1",
    )?;
    let root_mib: u64 = root_mib
        .trim()
        .parse()
        .with_context(|| format!("df said {root_mib:?}"))?;
    let disk_mib = (made >> 20) + 1024;
    anyhow::ensure!(
        root_mib + 400 > disk_mib,
        "the root filesystem has {root_mib} MiB on a {disk_mib} MiB disk: it did not grow"
    );
    if v.secure_boot {
        // The kernel says so; efivarfs reads come back empty under TCG (field notes).
        let said = probe(&mut vm, "secureboot", "dmesg | grep -i 'secure boot'")?;
        anyhow::ensure!(
            said.contains("Secure boot enabled"),
            "the kernel does not report Secure Boot: {said:?}"
        );
    }
    if v.bootloader == Bootloader::SystemdBoot {
        check_systemd_boot(&mut vm, c1)?;
    }
    // Active from boot on, so a reboot right after staging still finalizes (device.rs).
    let finalizer = probe(
        &mut vm,
        "finalizer",
        "systemctl is-system-running --wait >/dev/null; systemctl is-active ostree-finalize-staged.service",
    )?;
    if finalizer.trim() != "active" {
        let why = probe(
            &mut vm,
            "finalizer-why",
            "{ systemctl show -p ActiveState,SubState,Result,ConditionResult,InactiveExitTimestamp,InactiveEnterTimestamp ostree-finalize-staged.service; systemctl show -p Wants osbuild-boot-menu.service; journalctl -b -o short-monotonic -u ostree-finalize-staged.service -u ostree-finalize-staged-hold.service -u osbuild-boot-menu.service | tail -12; }",
        )?;
        let log = fs::read_to_string(dir.join(format!("{}-boot1.log", v.name))).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("inalize") || l.contains("boot menu") || l.contains("osbuild-boot-menu")
            })
            .collect();
        anyhow::bail!(
            "ostree-finalize-staged.service is {finalizer:?} before the upgrade: {why}\n{}",
            lines.join("\n")
        );
    }
    if let Some(g) = bucket {
        // The upgrade reaches the bucket: publish it, and let the device resolve the
        // bucket's name to the host.
        g.publish(&m.second, BUCKET_PREFIX)?;
        let remote = probe(
            &mut vm,
            "bucket",
            &format!("echo '10.0.2.2 {BUCKET_HOST}' >> /etc/hosts; ostree remote list -u"),
        )?;
        anyhow::ensure!(
            remote.contains(&remote_url),
            "the device's remote is not the bucket: {remote}"
        );
    }
    vm.send_line("ostree admin upgrade && echo UPGRADE''-OK || echo UPGRADE''-FAILED")?;
    let result = vm.wait_for("UPGRADE-", Duration::from_secs(600))?;
    anyhow::ensure!(result.contains("UPGRADE-OK"), "upgrade failed: {result}");
    // At once, as an impatient user would: the staged deploy must still be finalized.
    vm.send_line("systemctl reboot")?;
    vm.wait_exit(Duration::from_secs(300))?;
    drop(vm);
    // A fresh qemu per boot: warm reboots under OVMF sometimes hang in the firmware.
    let mut vm = boot_into(config(2), c2, "2")?;
    if v.bootloader == Bootloader::SystemdBoot {
        // Booted by default from the entry finalize-staged's hook wrote to the ESP.
        shell_ready(&mut vm)?;
        check_systemd_boot(&mut vm, c2)?;
    }
    if ROLLBACK_ROWS.contains(&v.name) {
        shell_ready(&mut vm)?;
        roll_back(&mut vm, (c1, c2))?;
        vm.wait_exit(Duration::from_secs(300))?;
        drop(vm);
        vm = boot_into(config(3), c1, "1")?;
    }
    if let Some((repo, _server, _)) = &own_updates {
        vm = fall_back(v, m, vm, repo, &config)?;
    }
    drop(vm);
    fs::remove_file(&image).with_context(|| format!("removing {}", image.display()))?;
    Ok(())
}

/// The row that runs its whole story through `osbuild vm test`, as a user's CI would:
/// boot, upgrade from the row's update server (c2), reboot, switch to a broken ref and
/// fall back. Its image follows the first server, so the test must repoint the remote.
const VM_TEST_ROW: &str = "syslinux-bios-mbr";
/// The ref of the broken update `osbuild vm test` switches to.
const BROKEN_BRANCH: &str = "sampleos/broken/x86_64";
/// The power cuts `osbuild vm test` makes during the upgrade, and as many during the
/// finalization of a staged deployment: five of each. Each costs about a minute and a half
/// of a core in the suite (mostly the boot after it; `ostree fsck` runs after the last of
/// each kind): this row takes about twenty-five minutes.
const POWER_CUTS: u32 = 5;

/// `osbuild vm test` on the row's image, with power cuts: every step passes, and the
/// table names c2 and the broken commit where the story says.
fn vm_test(v: &Variant, m: &Matrix, image: &Path, repo: &Path, port: u16) -> Result<()> {
    let broken = commit(repo, BROKEN_BRANCH, &m.unhealthy, Some("3"))?;
    let written = fs::metadata(image)?.modified()?;
    let out = cmd::output(
        Command::new(osbuild_bin())
            .args(["vm", "test"])
            .arg(image)
            .args(["--update-url", &format!("http://10.0.2.2:{port}/repo/")])
            .args([
                "--broken-ref",
                BROKEN_BRANCH,
                "--firmware",
                v.firmware.name(),
                "--power-cuts",
                &POWER_CUTS.to_string(),
                "--cpus",
                &GUEST_CPUS.to_string(),
            ])
            .arg("--log")
            .arg(m.dir.join(format!("{}-vm-test.log", v.name))),
    )?;
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("matrix: {}: osbuild vm test:\n{table}", v.name);
    anyhow::ensure!(
        out.status.success(),
        "osbuild vm test failed ({}):\n{table}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |step: &str| {
        table
            .lines()
            .find(|l| l.starts_with(step))
            .unwrap_or_default()
            .to_string()
    };
    let (c1, c2) = (&m.c1[..12], &m.c2[..12]);
    let cuts = format!("{POWER_CUTS} cut");
    for (step, needles) in [
        ("boot ", vec![c1, "(version 1)"]),
        ("upgrade ", vec![c2, "(version 2)"]),
        ("reboot into the update ", vec![c2, "marked good"]),
        ("broken update staged ", vec![&broken[..12], BROKEN_BRANCH]),
        ("automatic fallback ", vec![c2, &broken[..12]]),
        ("power cuts during the upgrade ", vec![&cuts]),
        ("power cuts during finalization ", vec![&cuts]),
    ] {
        let line = row(step);
        anyhow::ensure!(
            line.contains(" pass ") && needles.iter().all(|n| line.contains(n)),
            "osbuild vm test's row {step:?} is {line:?}:\n{table}"
        );
    }
    anyhow::ensure!(
        fs::metadata(image)?.modified()? == written,
        "osbuild vm test wrote to the image"
    );
    fs::remove_file(image).with_context(|| format!("removing {}", image.display()))?;
    Ok(())
}

/// The row whose image is made from a bucket (`osbuild publish` to a real Garage) and
/// whose device upgrades from it: the device pulls from the website endpoint by a host
/// name, as from a CDN (Garage picks the bucket by the Host header).
const BUCKET_ROW: &str = "grub-hybrid-on-uefi";
/// The name the bucket row's device reaches the bucket by (in its /etc/hosts).
const BUCKET_HOST: &str = "fleet.example";
/// The key prefix the matrix's repository is published under.
const BUCKET_PREFIX: &str = "fleet";

/// The rows that also roll back with `osbuild admin rollback` and boot the previous
/// commit. One is enough here: the fallback rows roll back on every boot loader
/// (`boot-good` and syslinux's failed check use the same rollback).
const ROLLBACK_ROWS: &[&str] = &["grub-uefi-gpt"];

/// On the device booted into `c2` with `c1` as the rollback: `osbuild admin status`
/// says so, `osbuild admin rollback --reboot` makes `c1` the default and reboots.
fn roll_back(vm: &mut Vm, (c1, c2): (&str, &str)) -> Result<()> {
    let json = probe(vm, "admin-status", "osbuild admin status --json")?;
    let st: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("status JSON: {json}"))?;
    let roles: Vec<(&str, &str)> = st["deployments"]
        .as_array()
        .context("deployments")?
        .iter()
        .map(|d| {
            (
                d["checksum"].as_str().unwrap_or_default(),
                d["role"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    anyhow::ensure!(
        roles == [(c2, "booted"), (c1, "rollback")],
        "osbuild admin status --json: {json}"
    );
    vm.send_line("osbuild admin rollback --reboot || echo ROLLBACK''-FAILED")?;
    let said = vm.wait_for("Rolled back", Duration::from_secs(300));
    anyhow::ensure!(
        said.is_ok(),
        "osbuild admin rollback did not say it rolled back"
    );
    Ok(())
}

/// systemd-boot booted `commit` from the ESP through osbuild's boot link, and the ESP
/// holds an entry for every deployment.
fn check_systemd_boot(vm: &mut Vm, commit: &str) -> Result<()> {
    let cmdline = probe(vm, "cmdline", "cat /proc/cmdline")?;
    anyhow::ensure!(
        cmdline.contains("ostree=/ostree/boot-0/") && cmdline.contains("systemd.gpt_auto=0"),
        "not booted through the ESP's entry: {cmdline}"
    );
    anyhow::ensure!(
        cmdline.contains(commit),
        "the kernel command line does not name {commit}: {cmdline}"
    );
    // Only the ESP's entries name osbuild's boot links: the kernel was started by
    // systemd-boot from the ESP. (efivarfs reads, LoaderInfo included, come back empty
    // under TCG here.)
    let entries = probe(
        vm,
        "espentries",
        // Under osbuild's ESP lock: boot-good may have the ESP mounted read-write now.
        "u=$(sed -n 's/^PARTUUID=//p' /sysroot/boot/osbuild-systemd-boot); \
         mkdir -p /run/esp-probe && flock /run/osbuild-boot-menu.lock sh -c \
         \"mount -o ro /dev/disk/by-partuuid/$u /run/esp-probe && \
         ls /run/esp-probe/loader/entries | wc -l; umount /run/esp-probe\"",
    )?;
    let deployments = probe(
        vm,
        "deployments",
        "ls -d /sysroot/ostree/deploy/*/deploy/*.? | wc -l",
    )?;
    anyhow::ensure!(
        entries.trim() == deployments.trim(),
        "{} entries on the ESP for {} deployments",
        entries.trim(),
        deployments.trim()
    );
    eprintln!("e2e: systemd-boot: {cmdline}; {entries} ESP entries");
    Ok(())
}

/// Boot a live ISO to the deployment's marker and check it is live: it says so, /etc and
/// /var take writes (in memory), /sysroot is the overlay on the read-only image, and
/// ostree sees the deployment. No upgrade: a live system's changes are lost at shutdown.
fn boot_live(v: &Variant, dir: &Path, image: &Path, c1: &str) -> Result<()> {
    for uefi in [false, true] {
        let firmware = if uefi { "uefi" } else { "bios" };
        let start = Instant::now();
        let config = guest_config(image)
            .uefi(uefi)
            .log(dir.join(format!("{}-{firmware}.log", v.name)));
        check_live(config, &format!("{} ({firmware})", v.name), c1)
            .with_context(|| format!("booting the live ISO under {firmware}"))?;
        eprintln!(
            "matrix: {} under {firmware}: booted live and checked in {:.0}s",
            v.name,
            start.elapsed().as_secs_f64()
        );
    }
    fs::remove_file(image).with_context(|| format!("removing {}", image.display()))?;
    Ok(())
}

fn check_live(config: VmConfig, what: &str, c1: &str) -> Result<()> {
    let mut vm = boot_into(config, c1, "1")?;
    shell_ready(&mut vm)?;
    let checks: &[(&str, &str, &str)] = &[
        ("cmdline", "cat /proc/cmdline", "osbuild.live"),
        (
            "marker",
            "cat /run/osbuild/live",
            "This is a live system (osbuild live ISO)",
        ),
        ("motd", "cat /etc/motd", "lost at shutdown"),
        (
            "writable",
            "touch /etc/osbuild-x /var/osbuild-x && echo WROTE",
            "WROTE",
        ),
        ("sysroot", "findmnt -n -o FSTYPE /sysroot", "overlay"),
        (
            "image",
            "findmnt -n -o FSTYPE,OPTIONS /run/osbuild-live/root",
            "squashfs ro",
        ),
        ("status", "ostree admin status", c1),
        (
            "no-grow",
            "systemctl is-enabled osbuild-grow-root.service",
            "masked",
        ),
    ];
    check_all(&mut vm, what, checks)
}

/// Remove the Authenticode signature from a PE image (a signed kernel): zero the
/// certificate table's entry in the optional header and cut the file where it began.
fn strip_signature(kernel: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |at: usize| -> Result<usize> {
        let b = kernel.get(at..at + 4).context("truncated PE image")?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let pe = u32_at(0x3c)?;
    anyhow::ensure!(kernel.get(pe..pe + 4) == Some(b"PE\0\0"), "not a PE image");
    let optional = pe + 24;
    anyhow::ensure!(
        kernel.get(optional..optional + 2) == Some(&[0x0b, 0x02]),
        "not a PE32+ image"
    );
    // Data directory 4 of a PE32+ optional header: the certificate table.
    let entry = optional + 112 + 4 * 8;
    let (offset, size) = (u32_at(entry)?, u32_at(entry + 4)?);
    anyhow::ensure!(size > 0, "the kernel is not signed");
    let mut out = kernel[..offset.min(kernel.len())].to_vec();
    out[entry..entry + 8].fill(0);
    Ok(out)
}

/// Secure Boot refuses a kernel that is not signed: commit the tree with its kernel's
/// signature removed, make a --secure-boot image of it and see GRUB (through shim) refuse
/// to load the kernel, and no kernel start.
fn unsigned_kernel_is_refused(dir: &Path, tree: &Path) -> Result<()> {
    let unsigned = dir.join("unsigned-tree");
    cmd::run(Command::new("cp").arg("-al").arg(tree).arg(&unsigned))?;
    let modules = unsigned.join("usr/lib/modules");
    let kver = fs::read_dir(&modules)?
        .next()
        .context("no kernel in the tree")??
        .file_name();
    let kernel = modules.join(kver).join("vmlinuz");
    let stripped = strip_signature(&fs::read(&kernel)?)?;
    // A new file: the old one is a hard link into the cached fixture.
    fs::remove_file(&kernel)?;
    fs::write(&kernel, stripped)?;
    let repo = dir.join("unsigned-repo");
    commit(&repo, BRANCH, &unsigned, None)?;
    let image = dir.join("unsigned.raw");
    osbuild(&[
        "make-image",
        "--url",
        &format!("file://{}", repo.display()),
        "--firmware",
        "uefi",
        "--secure-boot",
        "--output",
        image.to_str().context("path")?,
    ])?;
    let mut vm = Vm::boot(
        guest_config(&image)
            .secure_boot(true)
            .log(dir.join("unsigned-boot.log")),
    )?;
    vm.wait_for("bad shim signature", Duration::from_secs(300))?;
    // No kernel starts after it: a started kernel prints its banner to the serial
    // console within a few seconds under TCG (the OS's own marker would take a minute).
    let started = vm.wait_for("Linux version", Duration::from_secs(20));
    anyhow::ensure!(
        started.is_err(),
        "a kernel started after shim refused the unsigned one"
    );
    drop(vm);
    fs::remove_file(&image)?;
    Ok(())
}

/// The boot matrix's rows in three parts, run as three tests. libtest starts tests in name
/// order as its two threads free up, so the longest part, the `osbuild vm test` row with
/// its ten power cuts (about half an hour), comes first (`boot_matrix_0`) and the other
/// parts and the shorter tests fill the other thread: two VMs boot at a time, and neither
/// thread ends long before the other (with one part holding the power cuts and two more
/// rows, one thread ran about eight minutes past the other).
const PARTS: [&[&str]; 3] = [
    &[VM_TEST_ROW],
    &[
        "grub-uefi-secureboot",
        "grub-uefi-gpt",
        "systemd-boot-uefi",
        "secure-boot-unsigned-kernel",
    ],
    &["grub-bios-gpt-qcow2", "grub-hybrid-on-uefi", "live-iso"],
];

/// The boot matrix's power-cut row: the syslinux image through `osbuild vm test`.
#[test]
fn boot_matrix_0() -> Result<()> {
    boot_matrix(PARTS[0])
}

/// The boot matrix, second part: every boot loader, firmware and format made from one
/// commit, booted in qemu, upgraded in the guest with `ostree admin upgrade`, and booted
/// into the new commit; four rows then fall back by themselves from bad updates.
#[test]
fn boot_matrix_1() -> Result<()> {
    boot_matrix(PARTS[1])
}

/// The boot matrix, third part.
#[test]
fn boot_matrix_2() -> Result<()> {
    boot_matrix(PARTS[2])
}

/// Each row of the matrix is in exactly one part.
#[test]
fn matrix_parts_hold_every_row_once() {
    let mut rows: Vec<&str> = VARIANTS.iter().map(|v| v.name).collect();
    rows.push("secure-boot-unsigned-kernel");
    for row in rows {
        let n = PARTS
            .iter()
            .flat_map(|h| h.iter())
            .filter(|r| **r == row)
            .count();
        assert_eq!(n, 1, "{row} is in {n} parts of the boot matrix");
    }
    assert_eq!(
        PARTS.iter().map(|h| h.len()).sum::<usize>(),
        VARIANTS.len() + 1
    );
}

/// Boot, upgrade and reboot the matrix `rows`, from the commits every part shares
/// ([`matrix_commits`]), served from hard-linked copies of their own.
fn boot_matrix(rows: &[&str]) -> Result<()> {
    if !require(&[
        Need::Root,
        Need::Mmdebstrap,
        Need::Qemu,
        Need::Ovmf,
        Need::Grub,
        Need::Garage,
    ]) {
        return Ok(());
    }
    // OSBUILD_MATRIX=name,… runs only those rows (for development; CI runs all).
    let only: Option<Vec<String>> = std::env::var("OSBUILD_MATRIX")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wanted = |name: &str| {
        rows.contains(&name) && only.as_ref().is_none_or(|o| o.iter().any(|n| n == name))
    };
    if !rows.iter().any(|r| wanted(r)) {
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("matrix-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let rootfs = rootfs(work.path())?;
    let (commits, c1, c2) = matrix_commits(&rootfs)?;
    let tree = commits.join("tree");
    // Hard-linked copies: libostree adds files and renames over them, never writes in place.
    let first = work.path().join("first");
    let second = work.path().join("second");
    for (from, to) in [("first", &first), ("second", &second)] {
        cmd::run(
            Command::new("cp")
                .arg("-al")
                .arg(commits.join(from))
                .arg(to),
        )?;
    }
    let (_first_server, first_port) = serve(&first)?;
    let (_second_server, second_port) = serve(&second)?;
    let (unhealthy, panics) = bad_updates(work.path(), &tree)?;
    let garage = if wanted(BUCKET_ROW) {
        let start = Instant::now();
        let g = Garage::start(&work.path().join("garage"), 1, 1)?;
        g.alias(BUCKET_HOST)?;
        g.publish(&first, BUCKET_PREFIX)?;
        eprintln!(
            "matrix: Garage started and c1 published to it in {:.0}s",
            start.elapsed().as_secs_f64()
        );
        Some(g)
    } else {
        None
    };
    let matrix = Matrix {
        dir: work.path().to_path_buf(),
        url: format!("http://127.0.0.1:{first_port}/repo/"),
        first_port,
        second,
        second_port,
        c1,
        c2,
        unhealthy,
        panics,
        garage,
    };

    let mut failed = Vec::new();
    let mut times = Vec::new();
    for v in VARIANTS.iter().filter(|v| wanted(v.name)) {
        let start = Instant::now();
        let result = boot_and_upgrade(v, &matrix);
        let took = start.elapsed();
        eprintln!(
            "matrix: {}: {} in {:.0}s",
            v.name,
            match (result.is_ok(), v.format) {
                (true, Format::Iso) => "booted live",
                (true, _) => "booted, upgraded, rebooted",
                (false, _) => "FAILED",
            },
            took.as_secs_f64()
        );
        times.push((v.name, took));
        if let Err(e) = result {
            failed.push(format!("{}: {e:#}", v.name));
        }
    }
    if wanted("secure-boot-unsigned-kernel") {
        let start = Instant::now();
        let result = unsigned_kernel_is_refused(work.path(), &tree);
        eprintln!(
            "matrix: secure boot with an unsigned kernel: {} in {:.0}s",
            if result.is_ok() { "refused" } else { "FAILED" },
            start.elapsed().as_secs_f64()
        );
        times.push(("secure-boot-unsigned-kernel", start.elapsed()));
        if let Err(e) = result {
            failed.push(format!("secure boot with an unsigned kernel: {e:#}"));
        }
    }
    eprintln!("boot matrix timings:");
    for (name, took) in &times {
        eprintln!("  {name}: {:.0}s", took.as_secs_f64());
    }
    anyhow::ensure!(
        failed.is_empty(),
        "boot matrix failures:\n{}",
        failed.join("\n")
    );
    Ok(())
}

/// What every part of the matrix starts from, made once (the first part to get here makes
/// it, the others wait) and kept while SampleOS's fixture is unchanged: `tree` (SampleOS
/// with release 2 and [`TRIES`] tries), `first` holding c1 (release 1) and `second` c1 and
/// then c2 (release 2). Returns its directory, c1 and c2. Two commits of SampleOS and a copy
/// of the repository cost each part under a minute of a core.
fn matrix_commits(rootfs: &Path) -> Result<(PathBuf, String, String)> {
    let key = Key::new("matrix")
        .text(&rootfs.display().to_string())
        .text(&format!("tries {TRIES}; release 1 then 2"));
    let dir = fixture::cached(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures"),
        "matrix",
        key,
        |dest| {
            let tmp = dest.with_extension("partial");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)?;
            let tree = tmp.join("tree");
            cmd::run(Command::new("cp").arg("-al").arg(rootfs).arg(&tree))?;
            // New files, not writes through the hard links into SampleOS's fixture.
            let release = tree.join("usr/lib/osbuild-example/release");
            fs::write(&release, "1\n")?;
            // One try rather than three: each failed boot costs a minute under TCG (the
            // countdown is the same comparisons for every count).
            let tries = tree.join("usr/lib/osbuild/boot-tries");
            fs::create_dir_all(tries.parent().context("parent")?)?;
            fs::write(&tries, format!("{TRIES}\n"))?;
            // Images are made from `first` (c1); the devices upgrade from `second` (c1,
            // then c2).
            let (first, second) = (tmp.join("first"), tmp.join("second"));
            let c1 = commit(&first, BRANCH, &tree, Some("1"))?;
            cmd::run(Command::new("cp").arg("-a").arg(&first).arg(&second))?;
            fs::remove_file(&release)?;
            fs::write(&release, "2\n")?;
            let c2 = commit(&second, BRANCH, &tree, Some("2"))?;
            anyhow::ensure!(c1 != c2, "both commits are {c1}");
            fs::write(tmp.join("c1"), &c1)?;
            fs::write(tmp.join("c2"), &c2)?;
            fs::rename(&tmp, dest)?;
            Ok(())
        },
    )?;
    let read = |name: &str| -> Result<String> {
        let path = dir.join(name);
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    };
    let (c1, c2) = (read("c1")?, read("c2")?);
    Ok((dir, c1, c2))
}

/// The tries the matrix's trees configure (`/usr/lib/osbuild/boot-tries`).
const TRIES: usize = 1;
/// The row whose device takes the update that panics with osbuild's default tries (3):
/// each of those boots is short (the kernel panics at once).
const DEFAULT_TRIES_ROW: &str = "grub-bios-gpt-qcow2";

/// The trees of the bad updates, hard-linked copies of `tree` (files are replaced, never
/// written in place): `unhealthy` (release 3) has a failing health check, `panics`
/// (release 4) an initramfs the kernel cannot unpack.
fn bad_updates(dir: &Path, tree: &Path) -> Result<(PathBuf, PathBuf)> {
    let variant = |name: &str, release: &str| -> Result<PathBuf> {
        let copy = dir.join(name);
        cmd::run(Command::new("cp").arg("-al").arg(tree).arg(&copy))?;
        let release_file = copy.join("usr/lib/osbuild-example/release");
        fs::remove_file(&release_file)?;
        fs::write(&release_file, format!("{release}\n"))?;
        Ok(copy)
    };
    let unhealthy = variant("unhealthy", "3")?;
    let check = unhealthy.join("usr/lib/osbuild/health.d/50-broken");
    fs::create_dir_all(check.parent().context("parent")?)?;
    fs::write(
        &check,
        "#!/bin/sh\necho the new release is broken\nexit 1\n",
    )?;
    fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let panics = variant("panics", "4")?;
    let modules = panics.join("usr/lib/modules");
    let kver = fs::read_dir(&modules)?
        .next()
        .context("no kernel in the tree")??
        .file_name();
    let initramfs = modules.join(kver).join("initramfs.img");
    fs::remove_file(&initramfs)?;
    fs::write(&initramfs, "not an initramfs\n")?;
    Ok((unhealthy, panics))
}

/// Automatic fallback, on the device `vm` booted into c2: publish the unhealthy commit to
/// the row's own update server (`repo`), upgrade with `osbuild admin upgrade`, watch each
/// try fail and the device come back to c2 by itself, with `osbuild admin status` saying
/// what happened; then, where the row says so, the same with the commit that panics.
/// Returns the device, booted into c2.
fn fall_back(
    v: &Variant,
    m: &Matrix,
    mut vm: Vm,
    repo: &Path,
    config: &dyn Fn(u32) -> VmConfig,
) -> Result<Vm> {
    // Boot logs 1-3 are the matrix's.
    let mut n = 3;
    let mut boot = || {
        n += 1;
        config(n)
    };
    // GRUB and systemd-boot count the tries; syslinux rolls back from userspace.
    let counted = v.bootloader != Bootloader::Syslinux;
    let c3 = commit(repo, BRANCH, &m.unhealthy, Some("3"))?;
    upgrade_and_reboot(&mut vm)?;
    drop(vm);
    for _ in 0..TRIES {
        // Only the unhealthy commit has the failing check, so its message tells which
        // commit booted; the boot marker may not come before the reboot.
        let mut vm = Vm::boot(boot())?;
        vm.wait_for(
            "osbuild-health: health checks failed (/usr/lib/osbuild/health.d/50-broken)",
            Duration::from_secs(300),
        )?;
        vm.wait_exit(Duration::from_secs(300))?;
    }
    let mut vm = boot_into(boot(), &m.c2, "2").context("after the unhealthy update")?;
    check_fell_back(&mut vm, &m.c2, &c3, counted)?;
    if v.fallback != Fallback::UnhealthyAndPanics {
        return Ok(vm);
    }
    // One row counts osbuild's default number of tries down, set on the device the way
    // an owner overrides the OS's value (/etc over /usr).
    let tries = if v.name == DEFAULT_TRIES_ROW {
        shell_ready(&mut vm)?;
        let set = probe(
            &mut vm,
            "tries",
            &format!(
                "mkdir -p /etc/osbuild && echo {} > /etc/osbuild/boot-tries && echo TRIES-SET",
                osbuild_admin::fallback::DEFAULT_TRIES
            ),
        )?;
        anyhow::ensure!(set.contains("TRIES-SET"), "setting the tries: {set}");
        osbuild_admin::fallback::DEFAULT_TRIES as usize
    } else {
        TRIES
    };
    let c4 = commit(repo, BRANCH, &m.panics, Some("4"))?;
    upgrade_and_reboot(&mut vm)?;
    drop(vm);
    for _ in 0..tries {
        let mut vm = Vm::boot(boot())?;
        vm.wait_for("Kernel panic", Duration::from_secs(300))?;
        vm.wait_exit(Duration::from_secs(120))?;
    }
    let mut vm = boot_into(boot(), &m.c2, "2").context("after the update that panics")?;
    check_fell_back(&mut vm, &m.c2, &c4, true)?;
    Ok(vm)
}

/// In the guest: `osbuild admin upgrade` stages the new commit; reboot into it.
fn upgrade_and_reboot(vm: &mut Vm) -> Result<()> {
    shell_ready(vm)?;
    vm.send_line("osbuild admin upgrade --reboot || echo UPGRADE''-FAILED")?;
    let said = vm.wait_for("Staged", Duration::from_secs(600))?;
    anyhow::ensure!(!said.contains("FAILED"), "upgrade failed: {said}");
    vm.wait_exit(Duration::from_secs(300))?;
    Ok(())
}

/// The fallback commit `good` is the default now, `bad` is kept behind it, and status
/// records the fallback (`counted`: GRUB counted the tries; syslinux rolled back from
/// userspace, so only the order shows it).
fn check_fell_back(vm: &mut Vm, good: &str, bad: &str, counted: bool) -> Result<()> {
    shell_ready(vm)?;
    // Waits for the boot to be marked good (a oneshot that stays active).
    let json = probe(
        vm,
        "fellback",
        "systemctl start osbuild-boot-good.service; osbuild admin status --json",
    )?;
    let st: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("status JSON: {json}"))?;
    let first = &st["deployments"][0];
    anyhow::ensure!(
        first["checksum"] == good && first["role"] == "booted",
        "the fallback is not the booted default: {json}"
    );
    let second = &st["deployments"][1];
    anyhow::ensure!(
        second["checksum"] == bad && second["role"] == "rollback",
        "the failed commit is not kept as the rollback: {json}"
    );
    let failed = st["boot"]["record"]["fallback"]["failed"]
        .as_str()
        .unwrap_or_default();
    anyhow::ensure!(
        !counted || failed.starts_with(bad),
        "status does not record the fallback from {bad}: {json}"
    );
    anyhow::ensure!(
        st["boot"]["trial"]["deployment"].is_null(),
        "a trial is still running: {json}"
    );
    Ok(())
}
