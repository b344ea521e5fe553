//! GRUB on BIOS and UEFI, without Secure Boot. Its menu, `/boot/grub/grub.cfg` on the
//! root filesystem, is generated from libostree's boot entries by osbuild_admin::bootmenu:
//! here at build time, and on the device after every deploy by the same code (GRUB 2.06's
//! syslinux parser cannot read the syslinux config libostree writes: see that module).
//!
//! Both images embed every module they need and a two-line config that finds the root
//! filesystem by label; GRUB's normal mode then reads `/boot/grub/grub.cfg` there. The BIOS boot code is written here, not
//! by grub-bios-setup (which refuses image files): boot.img into the MBR, core.img into the
//! BIOS-boot partition (GPT) or the gap after the MBR, and the sector pointers patched.

use super::{open_rw, Needed, Sources};
use crate::layout::{Layout, Role, SECTOR};
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub(super) const PC_DIR: &str = "/usr/lib/grub/i386-pc";
pub(super) const EFI_DIR: &str = "/usr/lib/grub/x86_64-efi";
/// GRUB's search path for its config, on the root filesystem.
pub(super) const PREFIX: &str = "/boot/grub";

/// Modules embedded in both images: disks, filesystems, the menu, the Linux
/// loader, the serial console.
const MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "ext2",
    "search",
    "search_label",
    "normal",
    "configfile",
    "ls",
    "cat",
    "linux",
    "boot",
    "serial",
    "terminal",
    "echo",
    "test",
    "gzio",
    // The automatic fallback's boot counter (osbuild_admin::fallback).
    "loadenv",
];
/// BIOS only: disk access through the BIOS.
const PC_MODULES: &[&str] = &["biosdisk"];
/// UEFI only: the ESP's filesystem and a graphics console.
const EFI_MODULES: &[&str] = &["fat", "efi_gop"];

// Offsets in GRUB's boot.img (include/grub/i386/pc/boot.h).
/// Where boot.img reads the LBA of core.img's first sector.
const KERNEL_SECTOR: u64 = 0x5c;
/// A jump that only floppies need; two NOPs make boot.img trust the BIOS's drive number
/// check as grub-bios-setup does for hard disks.
const DRIVE_CHECK: usize = 0x66;
/// boot.img's code ends where a partition table's fields begin (disk signature, entries).
const MBR_CODE_LEN: usize = 440;
/// The first sector of core.img (diskboot.img) ends with a block list: the LBA (u64) and
/// sector count (u16) of the rest of core.img, and the segment to load it at (u16).
const BLOCKLIST_START: usize = 512 - 12;

pub(super) fn needs(firmware: crate::Firmware, secure_boot: bool) -> Vec<Needed> {
    let mut needs = vec![Needed::host("/usr/bin/grub-mkimage", "grub-common")];
    if firmware.boots_bios() {
        needs.push(Needed::data(
            "/usr/lib/grub/i386-pc/boot.img",
            "grub-pc-bin",
        ));
        needs.push(Needed::data(
            "/usr/lib/grub/i386-pc/linux.mod",
            "grub-pc-bin",
        ));
    }
    // Under Secure Boot the signed GRUB image is used as it is.
    if firmware.boots_uefi() && !secure_boot {
        needs.push(Needed::data(
            "/usr/lib/grub/x86_64-efi/linux.mod",
            "grub-efi-amd64-bin",
        ));
    }
    needs
}

/// The config both images embed: it runs in GRUB's rescue parser (no `if`), finds the root
/// filesystem and points GRUB's normal mode at its grub.cfg.
fn embedded_config() -> String {
    format!(
        "search --no-floppy --label {} --set=root\nset prefix=($root){PREFIX}\n",
        crate::ROOT_LABEL
    )
}

pub(super) fn install_sysroot(sysroot: &Path) -> Result<()> {
    osbuild_admin::bootmenu::write_grub_cfg(sysroot).context("writing GRUB's boot menu")
}

/// Run grub-mkimage for `format` with the modules of `dir`.
fn mkimage(format: &str, dir: &Path, modules: &[&str], out: &Path, work: &Path) -> Result<()> {
    let all: Vec<&str> = MODULES.iter().chain(modules).copied().collect();
    mkimage_with(format, dir, &all, &embedded_config(), out, work)
}

/// Run grub-mkimage for `format` with exactly `modules` of `dir` and `config` embedded.
pub(super) fn mkimage_with(
    format: &str,
    dir: &Path,
    modules: &[&str],
    config: &str,
    out: &Path,
    work: &Path,
) -> Result<()> {
    let config_path = work.join("grub-embedded.cfg");
    fs::write(&config_path, config)
        .with_context(|| format!("writing {}", config_path.display()))?;
    cmd::run(
        Command::new("grub-mkimage")
            .args(["-O", format, "-p", PREFIX])
            .arg("-d")
            .arg(dir)
            .arg("-c")
            .arg(&config_path)
            .arg("-o")
            .arg(out)
            .args(modules),
    )
    .with_context(|| format!("making GRUB's {format} image"))?;
    Ok(())
}

pub(super) fn esp_files(sources: &Sources, work: &Path) -> Result<Vec<(String, PathBuf)>> {
    let efi = work.join("BOOTX64.EFI");
    mkimage(
        "x86_64-efi",
        &sources.find(EFI_DIR),
        EFI_MODULES,
        &efi,
        work,
    )?;
    // The removable-media path: found by any firmware without boot variables.
    Ok(vec![("EFI/BOOT/BOOTX64.EFI".to_string(), efi)])
}

pub(super) fn install_bios(
    sources: &Sources,
    layout: &Layout,
    image: &Path,
    work: &Path,
) -> Result<()> {
    let dir = sources.find(PC_DIR);
    let core_path = work.join("core.img");
    mkimage("i386-pc", &dir, PC_MODULES, &core_path, work)?;
    let core = fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    let (start, room) = match (layout.get(Role::BiosBoot), layout.mbr_gap()) {
        (Some(p), _) => (p.start, p.size),
        (None, Some(gap)) => gap,
        (None, None) => anyhow::bail!("the disk has no room for GRUB's core.img"),
    };
    anyhow::ensure!(
        core.len() as u64 <= room,
        "GRUB's core.img ({} bytes) does not fit the {room} bytes before the first partition",
        core.len()
    );
    let boot_path = dir.join("boot.img");
    let mut boot =
        fs::read(&boot_path).with_context(|| format!("reading {}", boot_path.display()))?;
    anyhow::ensure!(
        boot.len() == 512 && core.len() >= 512,
        "{} or {} is not a GRUB boot image",
        boot_path.display(),
        core_path.display()
    );
    let (boot, core) = patch(&mut boot, core, start / SECTOR);

    let mut f = open_rw(image)?;
    // Keep the partition table: only the code part of the MBR is boot.img's.
    (|| -> std::io::Result<()> {
        let mut mbr = [0u8; 512];
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut mbr)?;
        mbr[..MBR_CODE_LEN].copy_from_slice(&boot[..MBR_CODE_LEN]);
        f.seek(SeekFrom::Start(0))?;
        f.write_all(&mbr)?;
        f.seek(SeekFrom::Start(start))?;
        f.write_all(&core)?;
        f.flush()
    })()
    .with_context(|| format!("writing GRUB's BIOS boot code into {}", image.display()))
}

/// Point boot.img at core.img's first sector `lba`, and core.img's block list at the rest
/// of itself, which follows contiguously. grub-mkimage already wrote the sector count.
fn patch(boot: &mut [u8], mut core: Vec<u8>, lba: u64) -> (&[u8], Vec<u8>) {
    let k = KERNEL_SECTOR as usize;
    boot[k..k + 8].copy_from_slice(&lba.to_le_bytes());
    boot[DRIVE_CHECK] = 0x90;
    boot[DRIVE_CHECK + 1] = 0x90;
    core[BLOCKLIST_START..BLOCKLIST_START + 8].copy_from_slice(&(lba + 1).to_le_bytes());
    (boot, core)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_the_sector_pointers() {
        let mut boot = vec![0u8; 512];
        let core = vec![0u8; 4 * 512];
        let (boot, core) = patch(&mut boot, core, 2048);
        assert_eq!(&boot[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(&boot[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&core[0x1f4..0x1fc], &2049u64.to_le_bytes());
        // The sector count and segment grub-mkimage wrote are left alone.
        assert_eq!(&core[0x1fc..0x200], &[0, 0, 0, 0]);
    }

    #[test]
    fn embedded_config_has_no_conditionals() {
        // The rescue parser runs it: no if/else/fi.
        let cfg = embedded_config();
        for word in ["if ", "else", "fi\n"] {
            assert!(!cfg.contains(word), "{cfg}");
        }
        assert!(cfg.contains(crate::ROOT_LABEL));
    }
}
