//! The live ISO's boot loaders, in El Torito boot images: isolinux for BIOS and GRUB for
//! UEFI (BOOTX64.EFI on a small FAT image), both booting the one live entry: the tree's
//! kernel with the tree's initramfs and the live archive after it.

use super::{grub, Needed, Sources};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// isolinux's El Torito boot image.
const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
/// isolinux's library of everything else; it must sit beside isolinux.bin.
const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// The MBR that makes the ISO bootable from a USB stick under BIOS too (isohybrid).
pub(crate) const ISOHYBRID_MBR: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";

/// Where the boot files are inside the ISO.
pub(crate) const ISOLINUX_DIR: &str = "isolinux";
pub(crate) const EFI_IMAGE: &str = "boot/efiboot.img";
/// GRUB's modules for reading the ISO and booting Linux from it.
const EFI_MODULES: &[&str] = &[
    "iso9660",
    "part_msdos",
    "part_gpt",
    "fat",
    "search",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "boot",
    "serial",
    "terminal",
    "echo",
    "test",
    "gzio",
    "efi_gop",
];

/// The one entry both loaders boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveEntry {
    /// The menu title.
    pub(crate) title: String,
    /// The kernel's path on the ISO.
    pub(crate) kernel: String,
    /// The initramfs archives' paths on the ISO, in order.
    pub(crate) initrds: Vec<String>,
    /// The kernel command line.
    pub(crate) options: String,
}

/// The files the ISO's boot loaders need for `firmware`.
pub(crate) fn needs(firmware: crate::Firmware) -> Vec<Needed> {
    let mut needs = Vec::new();
    if firmware.boots_bios() {
        needs.extend([
            Needed::host(ISOLINUX_BIN, "isolinux"),
            Needed::host(ISOHYBRID_MBR, "isolinux"),
            Needed::host(LDLINUX, "syslinux-common"),
        ]);
    }
    if firmware.boots_uefi() {
        needs.extend([
            Needed::host("/usr/bin/grub-mkimage", "grub-common"),
            Needed::data("/usr/lib/grub/x86_64-efi/iso9660.mod", "grub-efi-amd64-bin"),
            Needed::host("/usr/sbin/mkfs.vfat", "dosfstools"),
            Needed::host("/usr/bin/mcopy", "mtools"),
        ]);
    }
    needs
}

/// isolinux's config: the serial console, no prompt, the one entry.
pub(crate) fn isolinux_cfg(entry: &LiveEntry) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT live\nPROMPT 0\nTIMEOUT 10\n\
         LABEL live\n  MENU LABEL {}\n  KERNEL {}\n  APPEND initrd={} {}\n",
        entry.title,
        entry.kernel,
        entry.initrds.join(","),
        entry.options
    )
}

/// GRUB's config on the ISO (`/boot/grub/grub.cfg`).
pub(crate) fn grub_cfg(entry: &LiveEntry) -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set default=0\nset timeout=1\n\
         menuentry '{}' {{\n\tlinux {} {}\n\tinitrd {}\n}}\n",
        entry.title.replace('\'', ""),
        entry.kernel,
        entry.options,
        entry.initrds.join(" ")
    )
}

/// The config embedded in BOOTX64.EFI: find the ISO by its label and read its grub.cfg.
/// It runs in GRUB's rescue parser: no conditionals.
fn embedded_config(label: &str) -> String {
    format!(
        "search --no-floppy --label {label} --set=root\nset prefix=($root){}\n",
        grub::PREFIX
    )
}

/// Put isolinux and its config into the ISO tree at `iso`.
pub(crate) fn install_isolinux(iso: &Path, entry: &LiveEntry) -> Result<()> {
    let dir = iso.join(ISOLINUX_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for src in [ISOLINUX_BIN, LDLINUX] {
        let name = Path::new(src).file_name().context("isolinux file name")?;
        fs::copy(src, dir.join(name)).with_context(|| format!("copying {src}"))?;
    }
    let cfg = dir.join("isolinux.cfg");
    fs::write(&cfg, isolinux_cfg(entry)).with_context(|| format!("writing {}", cfg.display()))
}

/// Put GRUB's config into the ISO tree at `iso` and make the El Torito EFI image
/// ([`EFI_IMAGE`]) holding BOOTX64.EFI.
pub(crate) fn install_efi(
    sources: &Sources,
    iso: &Path,
    label: &str,
    entry: &LiveEntry,
    work: &Path,
) -> Result<()> {
    let grub_dir = iso.join(grub::PREFIX.trim_start_matches('/'));
    fs::create_dir_all(&grub_dir).with_context(|| format!("creating {}", grub_dir.display()))?;
    let cfg = grub_dir.join("grub.cfg");
    fs::write(&cfg, grub_cfg(entry)).with_context(|| format!("writing {}", cfg.display()))?;
    let efi = work.join("BOOTX64.EFI");
    grub::mkimage_with(
        "x86_64-efi",
        &sources.find(grub::EFI_DIR),
        EFI_MODULES,
        &embedded_config(label),
        &efi,
        work,
    )?;
    let len = fs::metadata(&efi)
        .with_context(|| format!("reading {}", efi.display()))?
        .len();
    // Room for the FAT's own tables; whole MiB.
    let size = (len + (1 << 20)).next_multiple_of(1 << 20);
    let image = iso.join(EFI_IMAGE);
    if let Some(parent) = image.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let files: Vec<(String, PathBuf)> = vec![("EFI/BOOT/BOOTX64.EFI".into(), efi)];
    crate::esp::write_image(&image, size, &files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LiveEntry {
        LiveEntry {
            title: "Debian (live)".into(),
            kernel: "/live/vmlinuz".into(),
            initrds: vec!["/live/initrd.img".into(), "/live/live.img".into()],
            options: "root=osbuild-live:X osbuild.live ostree=/ostree/boot.1/debian/abc/0".into(),
        }
    }

    #[test]
    fn isolinux_loads_both_archives() {
        let cfg = isolinux_cfg(&entry());
        assert!(cfg.contains("SERIAL 0 115200"), "{cfg}");
        assert!(
            cfg.contains("APPEND initrd=/live/initrd.img,/live/live.img root=osbuild-live:X"),
            "{cfg}"
        );
        assert!(cfg.contains("KERNEL /live/vmlinuz"), "{cfg}");
    }

    #[test]
    fn grub_loads_both_archives() {
        let cfg = grub_cfg(&entry());
        assert!(
            cfg.contains("initrd /live/initrd.img /live/live.img"),
            "{cfg}"
        );
        assert!(
            cfg.contains("linux /live/vmlinuz root=osbuild-live:X osbuild.live"),
            "{cfg}"
        );
        assert!(cfg.contains("serial --unit=0"), "{cfg}");
    }

    #[test]
    fn embedded_config_finds_the_iso_without_conditionals() {
        let cfg = embedded_config("OSBUILD_LIVE");
        assert!(cfg.contains("--label OSBUILD_LIVE"), "{cfg}");
        for word in ["if ", "else", "fi\n"] {
            assert!(!cfg.contains(word), "{cfg}");
        }
    }

    #[test]
    fn needs_follow_the_firmware() {
        use crate::Firmware;
        let packages = |f| -> Vec<&str> { needs(f).iter().map(|n| n.package).collect() };
        assert!(packages(Firmware::Bios).contains(&"isolinux"));
        assert!(!packages(Firmware::Bios).contains(&"grub-efi-amd64-bin"));
        assert!(packages(Firmware::Uefi).contains(&"grub-efi-amd64-bin"));
        assert!(!packages(Firmware::Uefi).contains(&"isolinux"));
        let hybrid = packages(Firmware::Hybrid);
        assert!(hybrid.contains(&"isolinux") && hybrid.contains(&"mtools"));
    }
}
