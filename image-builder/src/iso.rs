//! The live ISO: the deployed sysroot squashed into a read-only root image, the tree's
//! kernel and initramfs with the live archive (see `live`), and the El Torito boot
//! loaders, put together by xorriso.
//!
//! ```text
//! /live/root.squashfs     the sysroot (ostree repo, deployment, stateroot /var)
//! /live/vmlinuz           the deployment's kernel
//! /live/initrd.img        the deployment's initramfs, as it is
//! /live/live.img          the live archive, unpacked over it
//! /isolinux/…             BIOS: isolinux.bin (El Torito), ldlinux.c32, isolinux.cfg
//! /boot/efiboot.img       UEFI: El Torito image, FAT with EFI/BOOT/BOOTX64.EFI (GRUB)
//! /boot/grub/grub.cfg     GRUB's menu
//! ```

use crate::bootloader::eltorito::{self, LiveEntry};
use crate::bootloader::{Needed, Sources};
use crate::options::Firmware;
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ISO's volume label; the live initramfs and GRUB find the medium by it.
pub const ISO_LABEL: &str = "OSBUILD_LIVE";

/// Where the root image is on the ISO (the live initramfs's script names it too).
const ROOT_IMAGE: &str = "live/root.squashfs";

/// The host tools every ISO needs, and the boot loaders' files for `firmware`.
pub(crate) fn needs(firmware: Firmware) -> Vec<Needed> {
    let mut needs = vec![
        Needed::host("/usr/bin/xorriso", "xorriso"),
        Needed::host("/usr/bin/mksquashfs", "squashfs-tools"),
    ];
    needs.extend(eltorito::needs(firmware));
    needs
}

/// What `--format iso --firmware F` needs, checked before anything is pulled or written.
pub(crate) fn check(firmware: Firmware, sources: &Sources) -> Result<()> {
    crate::bootloader::check_needs(
        &format!("--format iso --firmware {firmware}"),
        &needs(firmware),
        sources,
    )
}

/// The deployment's kernel and initramfs and its boot entry's options, from the sysroot's
/// boot loader entry.
#[derive(Debug, Clone)]
struct Boot {
    title: String,
    kernel: PathBuf,
    initrd: PathBuf,
    kver: String,
    options: String,
}

fn boot_files(sysroot: &Path) -> Result<Boot> {
    let entries = osbuild_admin::bootmenu::read_entries(sysroot)?;
    let entry = entries
        .first()
        .context("the sysroot has no boot loader entry after the deploy")?;
    // Entries name paths on the boot filesystem, which is the sysroot's /boot here.
    let on_boot = |p: &str| {
        sysroot
            .join("boot")
            .join(osbuild_admin::bootmenu::boot_relative(p))
    };
    let kernel = on_boot(&entry.linux);
    let initrd = on_boot(
        entry
            .initrd
            .as_deref()
            .context("the deployment's boot entry has no initramfs; a live ISO needs one")?,
    );
    let name = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let kver = name
        .strip_prefix("vmlinuz-")
        .with_context(|| format!("cannot tell the kernel version from {}", kernel.display()))?
        .to_string();
    Ok(Boot {
        title: entry.title.clone(),
        kernel,
        initrd,
        kver,
        options: entry.options.clone(),
    })
}

/// mksquashfs's compression options: zstd (level 3) when the tree's kernel config says
/// its squashfs reads it, else gzip, which every squashfs-capable kernel reads, at level 1:
/// on a 530 MiB tree here level 1 took 9 s where the default (9) took 106 s, for a root
/// image 9 % larger (zstd 3: 4 s, 3 % larger).
fn compression(deployment: &Path, kver: &str) -> &'static [&'static str] {
    let configs = [
        deployment.join(format!("usr/lib/modules/{kver}/config")),
        deployment.join(format!("boot/config-{kver}")),
    ];
    let zstd = configs.iter().any(|c| {
        fs::read_to_string(c)
            .map(|t| t.lines().any(|l| l == "CONFIG_SQUASHFS_ZSTD=y"))
            .unwrap_or(false)
    });
    if zstd {
        &["-comp", "zstd", "-Xcompression-level", "3"]
    } else {
        &["-comp", "gzip", "-Xcompression-level", "1"]
    }
}

/// Write the ISO at `output` from the deployed `sysroot`.
pub(crate) fn write(
    sysroot: &Path,
    deployment: &Path,
    firmware: Firmware,
    output: &Path,
    work: &Path,
) -> Result<()> {
    let sources = Sources {
        deployment: Some(deployment.to_path_buf()),
    };
    check(firmware, &sources)?;
    let boot = boot_files(sysroot)?;
    let iso = work.join("iso");
    let live = iso.join("live");
    fs::create_dir_all(&live).with_context(|| format!("creating {}", live.display()))?;

    let bar = osbuild_core::progress::Progress::counter("Writing the live ISO");
    let step = |n: u64, what: &str| {
        bar.set(n, 4);
        bar.set_message(what.to_string());
    };
    step(0, "live initramfs");
    let modules = deployment.join("usr/lib/modules").join(&boot.kver);
    let archive = crate::live::initramfs(&modules)
        .with_context(|| format!("making the live initramfs from {}", modules.display()))?;
    fs::write(live.join("live.img"), archive).context("writing the live initramfs")?;
    for (src, name) in [(&boot.kernel, "vmlinuz"), (&boot.initrd, "initrd.img")] {
        fs::copy(src, live.join(name)).with_context(|| format!("copying {}", src.display()))?;
    }

    step(1, "root image (mksquashfs)");
    let comp = compression(deployment, &boot.kver);
    cmd::run(
        Command::new("mksquashfs")
            .arg(sysroot)
            .arg(iso.join(ROOT_IMAGE))
            .args(["-noappend", "-no-progress", "-quiet"])
            .args(comp),
    )
    .context("making the root image")?;

    step(2, "boot loaders");
    let entry = LiveEntry {
        title: format!("{} (live)", boot.title),
        kernel: "/live/vmlinuz".into(),
        initrds: vec!["/live/initrd.img".into(), "/live/live.img".into()],
        options: boot.options.clone(),
    };
    if firmware.boots_bios() {
        eltorito::install_isolinux(&iso, &entry)?;
    }
    if firmware.boots_uefi() {
        eltorito::install_efi(&sources, &iso, ISO_LABEL, &entry, work)?;
    }

    step(3, "ISO image (xorriso)");
    cmd::run(&mut xorriso(firmware, &iso, output)).context("writing the ISO image")?;
    bar.finish(format!("Wrote the live ISO ({} root image)", comp[1]));
    Ok(())
}

/// xorriso in mkisofs mode: Rock Ridge (owners, modes, links), the El Torito images for
/// `firmware`, and for BIOS the isohybrid MBR so the same file boots from a USB stick.
fn xorriso(firmware: Firmware, iso: &Path, output: &Path) -> Command {
    let mut c = Command::new("xorriso");
    c.args(["-as", "mkisofs", "-quiet", "-iso-level", "3", "-R", "-J"])
        .args(["-V", ISO_LABEL])
        .arg("-o")
        .arg(output);
    if firmware.boots_bios() {
        let dir = eltorito::ISOLINUX_DIR;
        c.args(["-isohybrid-mbr", eltorito::ISOHYBRID_MBR])
            .args(["-b", &format!("{dir}/isolinux.bin")])
            .args(["-c", &format!("{dir}/boot.cat")])
            .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"]);
    } else {
        c.args(["-c", "boot/boot.cat"]);
    }
    if firmware.boots_uefi() {
        if firmware.boots_bios() {
            c.arg("-eltorito-alt-boot");
        }
        c.args(["-e", eltorito::EFI_IMAGE, "-no-emul-boot"]);
        if firmware.boots_bios() {
            c.arg("-isohybrid-gpt-basdat");
        }
    }
    c.arg(iso);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(firmware: Firmware) -> String {
        let c = xorriso(firmware, Path::new("/w/iso"), Path::new("/o/live.iso"));
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn el_torito_images_follow_the_firmware() {
        for firmware in Firmware::ALL {
            let a = args(firmware);
            assert!(a.contains(&format!("-V {ISO_LABEL}")), "{a}");
            assert!(a.ends_with("/w/iso"), "{a}");
            assert_eq!(
                a.contains("-b isolinux/isolinux.bin"),
                firmware.boots_bios(),
                "{a}"
            );
            assert_eq!(
                a.contains("-e boot/efiboot.img"),
                firmware.boots_uefi(),
                "{a}"
            );
            assert_eq!(
                a.contains("-eltorito-alt-boot"),
                firmware == Firmware::Hybrid,
                "{a}"
            );
        }
    }

    #[test]
    fn boot_files_come_from_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join("boot/loader/entries");
        fs::create_dir_all(&entries).unwrap();
        fs::write(
            entries.join("ostree-1-debian.conf"),
            "title Debian 12\nversion 1\nlinux /ostree/debian-abc/vmlinuz-6.1.0-57-cloud-amd64\n\
             initrd /ostree/debian-abc/initramfs-6.1.0-57-cloud-amd64.img\n\
             options root=osbuild-live:X osbuild.live ostree=/ostree/boot.1/debian/abc/0\n",
        )
        .unwrap();
        let b = boot_files(dir.path()).unwrap();
        assert_eq!(b.kver, "6.1.0-57-cloud-amd64");
        assert_eq!(
            b.kernel,
            dir.path()
                .join("boot/ostree/debian-abc/vmlinuz-6.1.0-57-cloud-amd64")
        );
        assert!(b.initrd.ends_with("initramfs-6.1.0-57-cloud-amd64.img"));
        assert!(b.options.contains("ostree=/ostree/boot.1/debian/abc/0"));
    }

    #[test]
    fn zstd_only_when_the_kernel_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(compression(dir.path(), "k")[1], "gzip");
        fs::create_dir_all(dir.path().join("usr/lib/modules/k")).unwrap();
        fs::write(
            dir.path().join("usr/lib/modules/k/config"),
            "CONFIG_SQUASHFS=m\nCONFIG_SQUASHFS_ZSTD=y\n",
        )
        .unwrap();
        assert_eq!(compression(dir.path(), "k")[1], "zstd");
    }
}
