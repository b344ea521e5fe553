//! Build an image from a real commit (with a stand-in kernel) and inspect the disk: the
//! partition table, the filesystem, the boot loader config libostree wrote, and the
//! deployment, read back through libostree.

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
    spec.size = 512 << 20;
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
        // The same deployment through `osbuild status`'s library.
        let st = osbuild_admin::status(root).unwrap();
        assert_eq!(st.deployments.len(), 1);
        let d = &st.deployments[0];
        assert_eq!(d.checksum, csum);
        assert_eq!(d.osname, "debian");
        assert_eq!(d.refspec.as_deref(), Some("origin:test/x86_64"));
        assert!(!d.booted && !d.staged);
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
