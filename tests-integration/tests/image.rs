//! Build an image from a real commit (with a stand-in kernel) and inspect the disk: the
//! partition table, the filesystem, the boot loader config libostree wrote, and the
//! deployment, read back through libostree.

use image_builder::{Bootloader, Firmware, Format, PartitionTable, Size};
use osbuild_testing::helpers::{commit_tree, init_archive, ostree, run, stub_bootable_tree};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::Path;
use std::process::Command;

fn commit_tiny(dir: &Path) -> (String, String) {
    let tree = dir.join("tree");
    stub_bootable_tree(&tree);
    let repo = dir.join("repo");
    init_archive(&repo);
    let csum = commit_tree(&repo, "test/x86_64", &tree, None);
    (format!("file://{}", repo.display()), csum)
}

#[test]
fn image_holds_a_bootable_deployment() {
    // Root: the image is partitioned and filled through a loop device.
    if !require(&[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, csum) = commit_tiny(dir.path());
    let output = dir.path().join("disk.img");
    let mut spec = image_builder::ImageSpec::new(&url, Some("test/x86_64"));
    spec.remote_url = Some("http://10.0.2.2:8080/repo/".into());
    spec.size = Size::Bytes(512 << 20);
    spec.bootloader = Bootloader::Syslinux;
    spec.firmware = Firmware::Bios;
    let image = image_builder::make_image(&spec, &output).unwrap();
    assert_eq!(image.checksum, csum);
    assert_eq!(fs::metadata(&output).unwrap().len(), 512 << 20);
    // Only the image is left: the sysroot work directory is gone.
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["disk.img", "repo", "tree"]);

    // MBR: syslinux boot code, one active Linux partition at 1 MiB.
    let disk = fs::read(&output).unwrap();
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);
    let mbr_code = fs::read("/usr/lib/syslinux/mbr/mbr.bin").unwrap();
    assert_eq!(
        &disk[..mbr_code.len().min(440)],
        &mbr_code[..mbr_code.len().min(440)]
    );
    let entry = &disk[446..462];
    assert_eq!(entry[0], 0x80, "partition 1 is active");
    assert_eq!(entry[4], 0x83, "partition 1 is Linux");
    assert_eq!(u32::from_le_bytes(entry[8..12].try_into().unwrap()), 2048);

    // Mount the root partition read-only and look inside.
    let mnt = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-o", "ro,loop,offset=1048576"])
        .arg(&output)
        .arg(mnt.path()));
    let check = std::panic::catch_unwind(|| {
        let root = mnt.path();
        assert!(root.join("boot/syslinux/ldlinux.sys").is_file());
        assert_eq!(
            fs::read_link(root.join("boot/syslinux/syslinux.cfg")).unwrap(),
            Path::new("../loader/syslinux.cfg")
        );
        let cfg = fs::read_to_string(root.join("boot/syslinux/syslinux.cfg")).unwrap();
        assert!(cfg.contains("KERNEL /boot/ostree/debian-"), "{cfg}");
        assert!(cfg.contains("root=LABEL=osbuild-root"), "{cfg}");
        assert!(cfg.contains("console=ttyS0,115200"), "{cfg}");
        let repo_cfg = fs::read_to_string(root.join("ostree/repo/config")).unwrap();
        assert!(
            repo_cfg.contains("url=http://10.0.2.2:8080/repo/"),
            "{repo_cfg}"
        );
        let status = osbuild_admin_status(root);
        assert!(status.contains(&csum), "{status}");
        // The same deployment through `osbuild admin status`'s library.
        let st = osbuild_admin::status(root).unwrap();
        assert_eq!(st.deployments.len(), 1);
        let d = &st.deployments[0];
        assert_eq!(d.checksum, csum);
        assert_eq!(d.osname, "debian");
        assert_eq!(d.refspec.as_deref(), Some("origin:test/x86_64"));
        assert_eq!(d.role, osbuild_admin::Role::Default);
    });
    run(Command::new("umount").arg(mnt.path()));
    check.unwrap();
    let label = run(Command::new("blkid")
        .args([
            "-o", "value", "-s", "LABEL", "--probe", "--offset", "1048576",
        ])
        .arg(&output));
    assert_eq!(label.trim(), "osbuild-root");
}

/// The deployment as libostree sees it, via `ostree admin status` on the mounted sysroot.
fn osbuild_admin_status(root: &Path) -> String {
    ostree(&["admin", "status", &format!("--sysroot={}", root.display())])
}

/// The partitions `sfdisk` reads from the image: (name, type, start, size) in bytes.
fn partitions(image: &Path) -> Vec<(String, String, u64, u64)> {
    let json = run(Command::new("sfdisk").arg("--json").arg(image));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let table = &v["partitiontable"];
    assert_eq!(table["unit"], "sectors");
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["type"].as_str().unwrap_or_default().to_string(),
                p["start"].as_u64().unwrap() * 512,
                p["size"].as_u64().unwrap() * 512,
            )
        })
        .collect()
}

#[test]
fn default_image_is_grub_on_a_hybrid_gpt_disk() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, csum) = commit_tiny(dir.path());
    let output = dir.path().join("disk.qcow2");
    let mut spec = image_builder::ImageSpec::new(&url, None);
    spec.format = Format::from_path(&output);
    let image = image_builder::make_image(&spec, &output).unwrap();
    assert_eq!(image.checksum, csum);
    assert_eq!(
        (
            image.bootloader,
            image.firmware,
            image.layout.unwrap().table
        ),
        (Bootloader::Grub, Firmware::Hybrid, PartitionTable::Gpt)
    );
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&output));
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    // Back to raw to read the table and filesystems.
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&output)
        .arg(&raw));
    let parts = partitions(&raw);
    let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(names, ["BIOS-boot", "ESP", "root"]);
    assert_eq!(parts[0].1, "21686148-6449-6E6F-744E-656564454649");
    assert_eq!(parts[1].1, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    for p in &parts {
        assert_eq!(p.2 % (1 << 20), 0, "{p:?} is not aligned to 1 MiB");
    }
    // --size auto: the content and 1 GiB of headroom, not the old fixed 4 GiB.
    let size = fs::metadata(&raw).unwrap().len();
    assert!(size > 1 << 30 && size < 2 << 30, "auto size {size}");

    // BIOS: boot.img in the MBR, pointing at core.img in the BIOS-boot partition.
    let disk = fs::read(&raw).unwrap();
    let boot_img = fs::read("/usr/lib/grub/i386-pc/boot.img").unwrap();
    assert_eq!(&disk[..0x5c], &boot_img[..0x5c]);
    let core_lba = u64::from_le_bytes(disk[0x5c..0x64].try_into().unwrap());
    assert_eq!(core_lba * 512, parts[0].2);
    let core = &disk[parts[0].2 as usize..];
    assert_eq!(
        u64::from_le_bytes(core[0x1f4..0x1fc].try_into().unwrap()),
        core_lba + 1
    );
    assert_eq!(&disk[510..512], &[0x55, 0xaa]);

    // UEFI: GRUB at the removable-media path of a FAT ESP.
    let esp = format!("{}@@{}", raw.display(), parts[1].2);
    let listing = run(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args([
        "-b",
        "-i",
        &esp,
        "::/EFI/BOOT",
    ]));
    assert!(listing.contains("BOOTX64.EFI"), "{listing}");
    let label = run(Command::new("blkid")
        .args(["-o", "value", "-s", "LABEL", "--probe", "--offset"])
        .arg(parts[2].2.to_string())
        .arg(&raw));
    assert_eq!(label.trim(), "osbuild-root");
    // GRUB's menu on the root filesystem, generated from libostree's boot entry.
    let cfg = run(Command::new("debugfs")
        .args(["-R", "cat /boot/grub/grub.cfg"])
        .arg(format!("{}?offset={}", raw.display(), parts[2].2)));
    assert!(cfg.starts_with(osbuild_admin::bootmenu::MARKER), "{cfg}");
    assert!(cfg.contains("\tlinux /boot/ostree/debian-"), "{cfg}");
    assert!(cfg.contains("root=LABEL=osbuild-root"), "{cfg}");
}

/// Choices that cannot boot, and sizes that cannot hold the commit, fail with a message
/// that names them, leaving nothing behind.
#[test]
fn impossible_images_are_refused_and_leave_nothing() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = commit_tiny(dir.path());
    type Setup = fn(&mut image_builder::ImageSpec);
    let cases: &[(&str, Setup, &str)] = &[
        (
            "syslinux on UEFI",
            |s| {
                s.bootloader = Bootloader::Syslinux;
                s.firmware = Firmware::Uefi;
            },
            "--bootloader syslinux does not boot with --firmware uefi",
        ),
        (
            "syslinux on GPT",
            |s| {
                s.bootloader = Bootloader::Syslinux;
                s.firmware = Firmware::Bios;
                s.partition_table = Some(PartitionTable::Gpt);
            },
            "--partition-table gpt does not go with --bootloader syslinux",
        ),
        (
            "UEFI on MBR",
            |s| {
                s.firmware = Firmware::Hybrid;
                s.partition_table = Some(PartitionTable::Mbr);
            },
            "UEFI images use --partition-table gpt",
        ),
        (
            "Secure Boot on BIOS",
            |s| {
                s.secure_boot = true;
                s.firmware = Firmware::Bios;
            },
            "--secure-boot needs --bootloader grub and --firmware uefi or hybrid",
        ),
        (
            "Secure Boot with syslinux",
            |s| {
                s.secure_boot = true;
                s.bootloader = Bootloader::Syslinux;
                s.firmware = Firmware::Bios;
                s.partition_table = Some(PartitionTable::Mbr);
            },
            "--secure-boot needs --bootloader grub",
        ),
        (
            "systemd-boot on BIOS",
            |s| {
                s.bootloader = Bootloader::SystemdBoot;
                s.firmware = Firmware::Hybrid;
            },
            "systemd-boot is UEFI only",
        ),
        (
            "systemd-boot with Secure Boot",
            |s| {
                s.bootloader = Bootloader::SystemdBoot;
                s.firmware = Firmware::Uefi;
                s.secure_boot = true;
            },
            "Debian 12's systemd-boot is not signed",
        ),
        (
            "too small",
            |s| s.size = Size::Bytes(64 << 20),
            "--size 64 MiB is too small: this commit needs at least",
        ),
        (
            "ISO with a size",
            |s| {
                s.format = Format::Iso;
                s.size = Size::Bytes(2 << 30);
            },
            "--format iso does not take --size: an ISO is as large as its content",
        ),
        (
            "ISO with a partition table",
            |s| {
                s.format = Format::Iso;
                s.partition_table = Some(PartitionTable::Gpt);
            },
            "--format iso does not take --partition-table",
        ),
        (
            "ISO with Secure Boot",
            |s| {
                s.format = Format::Iso;
                s.secure_boot = true;
            },
            "--format iso does not take --secure-boot",
        ),
        (
            "syslinux ISO on UEFI",
            |s| {
                s.format = Format::Iso;
                s.bootloader = Bootloader::Syslinux;
                s.firmware = Firmware::Hybrid;
            },
            "a live ISO boots UEFI through GRUB",
        ),
    ];
    for (what, setup, expected) in cases {
        let mut spec = image_builder::ImageSpec::new(&url, None);
        setup(&mut spec);
        let output = dir.path().join("out.img");
        let err = format!(
            "{:#}",
            image_builder::make_image(&spec, &output).expect_err(what)
        );
        assert!(err.contains(expected), "{what}: {err}");
        let mut left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["repo", "tree"], "{what} left files behind");
    }
}

/// Provisioning writes the device's host name, root password, a user with its SSH key and
/// cloud-init's seed into the deployment's /etc and the stateroot's /var, not the commit.
#[test]
fn provisioning_goes_into_etc_and_var() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    stub_bootable_tree(&tree);
    for (file, text) in [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("group", "root:x:0:\nsudo:x:27:\n"),
        ("shadow", "root:*:19000:0:99999:7:::\n"),
    ] {
        fs::write(tree.join("usr/etc").join(file), text).unwrap();
    }
    let repo = dir.path().join("repo");
    init_archive(&repo);
    let csum = commit_tree(&repo, "test/x86_64", &tree, None);
    let key = dir.path().join("id.pub");
    fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEBxUCG+EvIBVs8G+PGgr1TSoEXDMXXn3UBpoSNrKQ2j me@host\n",
    )
    .unwrap();
    let user_data = dir.path().join("user-data");
    fs::write(&user_data, "#cloud-config\nruncmd: [true]\n").unwrap();
    let mut spec = image_builder::ImageSpec::new(&format!("file://{}", repo.display()), None);
    spec.provision = image_builder::Provision {
        hostname: Some("device-7".into()),
        root_password_hash: Some("$6$salt$hash".into()),
        user: Some("admin".into()),
        ssh_authorized_keys: vec![key],
        cloud_init: Some(user_data),
    };
    let output = dir.path().join("disk.img");
    let image = image_builder::make_image(&spec, &output).unwrap();
    let root = image.layout.unwrap().root().start;
    let fs_at = format!("{}?offset={root}", output.display());
    let debugfs = |request: &str| run(Command::new("debugfs").args(["-R", request]).arg(&fs_at));
    let etc = format!("/ostree/deploy/debian/deploy/{csum}.0/etc");
    assert_eq!(debugfs(&format!("cat {etc}/hostname")).trim(), "device-7");
    let shadow = debugfs(&format!("cat {etc}/shadow"));
    assert!(shadow.starts_with("root:$6$salt$hash:19000:"), "{shadow}");
    assert!(shadow.contains("\nadmin:*:"), "{shadow}");
    let passwd = debugfs(&format!("cat {etc}/passwd"));
    assert!(
        passwd.contains("admin:x:1000:1000::/var/home/admin:/bin/sh"),
        "{passwd}"
    );
    assert!(debugfs(&format!("cat {etc}/group")).contains("sudo:x:27:admin"));
    let keys = "/ostree/deploy/debian/var/home/admin/.ssh/authorized_keys";
    assert!(debugfs(&format!("cat {keys}")).contains("me@host"));
    let stat = debugfs(&format!("stat {keys}"));
    assert!(
        stat.contains("User:  1000") && stat.contains("Mode:  0600"),
        "{stat}"
    );
    let seed = debugfs("cat /ostree/deploy/debian/var/lib/cloud/seed/nocloud/user-data");
    assert!(seed.starts_with("#cloud-config"), "{seed}");
    // The commit itself is unchanged: its /usr/etc has no admin.
    let committed = ostree(&[
        "cat",
        &format!("--repo={}", repo.display()),
        &csum,
        "/usr/etc/passwd",
    ]);
    assert!(!committed.contains("admin"), "{committed}");
}

/// Ctrl-C while extlinux's loop mount exists: the build stops with an error, and neither
/// the mount nor its loop device nor any file is left behind.
#[test]
fn interrupting_the_mount_leaves_nothing_mounted() {
    if !require(&[Need::Root]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = commit_tiny(dir.path());
    let output = dir.path().join("out.img");
    // The child's mount points go under a TMPDIR of this test's own, so that another
    // test's mount cannot pass for this child's.
    let tmp = tempfile::tempdir().unwrap();
    let ours = format!("{}/osbuild-mnt-", tmp.path().display());
    let mounted = || {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&ours))
    };
    // extlinux is the one step under the mount and takes milliseconds: an extlinux that
    // waits two seconds before running the real one holds the mount open long enough for
    // the signal to land in it every time (a build that ends first would prove nothing).
    let bin = tempfile::tempdir().unwrap();
    let real = run(Command::new("sh").args(["-c", "command -v extlinux"]));
    let wrapper = bin.path().join("extlinux");
    fs::write(
        &wrapper,
        format!("#!/bin/sh\nsleep 2\nexec {} \"$@\"\n", real.trim()),
    )
    .unwrap();
    fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new(osbuild_testing::helpers::osbuild_bin())
        .args(["make-image", "--url", &url, "--bootloader", "syslinux"])
        .args(["--firmware", "bios", "--size", "512M", "--output"])
        .arg(&output)
        .env("TMPDIR", tmp.path())
        .env("PATH", path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if mounted() {
            run(Command::new("kill").args(["-INT", &child.id().to_string()]));
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before its partition was mounted"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "interrupted, yet it succeeded: {stderr}"
    );
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    assert!(!mounted(), "the mount outlived the build");
    let loops = run(Command::new("losetup").arg("-a"));
    assert!(
        !loops.contains(&dir.path().display().to_string()),
        "a loop device is left: {loops}"
    );
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["repo", "tree"]);
}

/// `--gpg-key`: the build refuses a commit the key did not sign and leaves nothing; a
/// signed commit is imaged with the key in the device's remote and verification on, so
/// the device refuses unsigned upgrades (the boot test shows that part in the guest).
#[test]
fn gpg_key_makes_the_device_verify_commits() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, csum) = commit_tiny(dir.path());
    let repo = dir.path().join("repo");
    let key = osbuild_testing::gpg::throwaway_key();
    let output = dir.path().join("disk.img");
    let make_image = |key: &Path| {
        osbuild_testing::helpers::output(
            Command::new(osbuild_testing::helpers::osbuild_bin())
                .args(["make-image", "--branch", "test/x86_64", "--repo"])
                .arg(&repo)
                .arg("--gpg-key")
                .arg(key)
                .arg("--output")
                .arg(&output),
        )
    };
    let leftovers = || {
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };

    // Not a key at all: refused before the pull.
    let garbage = dir.path().join("not-a-key");
    fs::write(&garbage, "hello\n").unwrap();
    let out = make_image(&garbage);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--gpg-key") && err.contains("not-a-key"),
        "{err}"
    );

    // An unsigned commit: refused, naming the key and what to do.
    let out = make_image(&key.keyring);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unsigned commit was imaged");
    assert!(
        err.contains("must be signed by the key in --gpg-key"),
        "{err}"
    );
    assert_eq!(leftovers(), ["not-a-key", "repo", "tree"]);

    ostree(&[
        "gpg-sign",
        &format!("--repo={}", repo.display()),
        &format!("--gpg-homedir={}", key.home.display()),
        &csum,
        &key.key_id,
    ]);
    let out = make_image(&key.keyring);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = partitions(&output).into_iter().last().map(|p| p.2).unwrap();
    let fs_at = format!("{}?offset={root}", output.display());
    let debugfs = |request: &str| run(Command::new("debugfs").args(["-R", request]).arg(&fs_at));
    let config = debugfs("cat /ostree/repo/config");
    assert!(config.contains("gpg-verify=true"), "{config}");
    let keyring = debugfs("stat /ostree/repo/origin.trustedkeys.gpg");
    assert!(keyring.contains("Type: regular"), "{keyring}");
}

/// A live ISO of the stand-in tree: the El Torito images for both firmwares, the kernel,
/// the tree's initramfs and the live archive after it, and the sysroot squashed into the
/// root image; nothing left beside it.
#[test]
fn live_iso_holds_the_boot_files_and_the_root_image() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    for tool in [
        "/usr/bin/xorriso",
        "/usr/bin/mksquashfs",
        "/usr/bin/unsquashfs",
    ] {
        if !Path::new(tool).exists() {
            eprintln!("skipped: {tool} is missing (scripts/install-deps.sh installs it)");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    stub_bootable_tree(&tree);
    // The live archive copies the modules a CD needs from the tree's kernel: none here.
    fs::write(tree.join("usr/lib/modules/6.1.0-test/modules.dep"), "").unwrap();
    let repo = dir.path().join("repo");
    init_archive(&repo);
    let csum = commit_tree(&repo, "test/x86_64", &tree, None);
    let url = format!("file://{}", repo.display());
    let output = dir.path().join("live.iso");
    let mut spec = image_builder::ImageSpec::new(&url, None);
    spec.format = Format::from_path(&output);
    assert_eq!(spec.format, Format::Iso);
    let image = image_builder::make_image(&spec, &output).unwrap();
    assert_eq!(image.checksum, csum);
    assert!(image.layout.is_none());
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["live.iso", "repo", "tree"]);

    let files = run(Command::new("xorriso")
        .arg("-indev")
        .arg(&output)
        .args(["-find", "/", "-type", "f"]));
    for f in [
        "/live/root.squashfs",
        "/live/vmlinuz",
        "/live/initrd.img",
        "/live/live.img",
        "/isolinux/isolinux.bin",
        "/isolinux/ldlinux.c32",
        "/isolinux/isolinux.cfg",
        "/boot/efiboot.img",
        "/boot/grub/grub.cfg",
    ] {
        assert!(
            files.contains(&format!("'{f}'")),
            "{f} is not on the ISO: {files}"
        );
    }
    let report = run(Command::new("xorriso")
        .arg("-indev")
        .arg(&output)
        .args(["-report_el_torito", "plain"]));
    assert!(report.contains("BIOS"), "{report}");
    assert!(report.contains("UEFI"), "{report}");
    // The primary volume descriptor at sector 16 (2 KiB sectors): the label GRUB and the
    // live initramfs look for.
    let iso = fs::read(&output).unwrap();
    let pvd = &iso[16 * 2048..17 * 2048];
    assert_eq!(&pvd[1..6], b"CD001");
    let volume_id = String::from_utf8_lossy(&pvd[40..72]);
    assert_eq!(volume_id.trim_end(), image_builder::ISO_LABEL);

    // The root image is the sysroot: the repo, the deployment marked live.
    let extract = dir.path().join("extract");
    run(Command::new("xorriso")
        .arg("-osirrox")
        .arg("on")
        .arg("-indev")
        .arg(&output)
        .args(["-extract", "/live"])
        .arg(&extract));
    let listing = run(Command::new("unsquashfs")
        .arg("-l")
        .arg(extract.join("root.squashfs")));
    assert!(listing.contains("ostree/repo/config"), "{listing}");
    assert!(listing.contains(&format!("{csum}.0/etc/motd")), "{listing}");
    assert_eq!(
        fs::read(extract.join("vmlinuz")).unwrap(),
        b"kernel",
        "the tree's kernel"
    );
    let live = fs::read(extract.join("live.img")).unwrap();
    assert!(
        live.starts_with(b"070701"),
        "the live archive is a newc cpio"
    );
}

/// An ISO with --size is one line on stderr from the CLI, before anything is written.
#[test]
fn cli_refuses_an_iso_with_a_size() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("live.iso");
    let out = osbuild_testing::helpers::output(
        Command::new(osbuild_testing::helpers::osbuild_bin())
            .args([
                "make-image",
                "--url",
                "http://127.0.0.1:9/repo/",
                "--size",
                "2G",
            ])
            .arg("--output")
            .arg(&output),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: --format iso does not take --size: an ISO is as large as its content; leave --size out"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Boot loader files the committed tree carries are the ones installed (so the boot
/// loader is updated with the OS); the host's fill in what the tree lacks.
#[test]
fn bootloader_files_come_from_the_tree_when_it_has_them() {
    if !require(&[Need::Root, Need::Grub]) {
        return;
    }
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            &["--bootloader", "systemd-boot", "--firmware", "uefi"],
            "EFI/BOOT/BOOTX64.EFI",
        ),
        (
            "usr/lib/shim/shimx64.efi.signed",
            &["--firmware", "uefi", "--secure-boot"],
            "EFI/BOOT/BOOTX64.EFI",
        ),
    ];
    for (in_tree, flags, on_esp) in cases {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        stub_bootable_tree(&tree);
        let marker = format!("the tree's own {in_tree}\n");
        osbuild_testing::helpers::write_file(&tree.join(in_tree), &marker);
        let repo = dir.path().join("repo");
        init_archive(&repo);
        commit_tree(&repo, "test/x86_64", &tree, None);
        let output = dir.path().join("disk.img");
        run(Command::new(osbuild_testing::helpers::osbuild_bin())
            .args(["make-image", "--repo"])
            .arg(&repo)
            .args(*flags)
            .arg("--output")
            .arg(&output));
        let esp = partitions(&output)
            .into_iter()
            .find(|p| p.0 == "ESP")
            .unwrap_or_else(|| panic!("{flags:?}: no ESP"));
        let copied = run(Command::new("mtype")
            .arg("-i")
            .arg(format!("{}@@{}", output.display(), esp.2))
            .arg(format!("::/{on_esp}")));
        assert_eq!(
            copied.trim(),
            marker.trim(),
            "{flags:?}: {on_esp} is not the tree's"
        );
    }
}
