//! systemd-boot on UEFI: the loader on the ESP, and its menu there too, since systemd-boot
//! reads entries only from a FAT partition. libostree keeps `/boot` on the root
//! filesystem; osbuild_admin::esp copies the kernels, initramfs images and rewritten boot
//! entries onto the ESP: here at build time into a staging directory that is copied into
//! the FAT image, and on the device after every deploy by the same code (the tree's
//! `osbuild-boot-menu`, which finds the ESP by the PARTUUID in the marker written here).
//!
//! Bookworm's systemd-boot is not signed: no Secure Boot (options::check says so).

use super::{Needed, Sources};
use crate::layout::{Layout, Role};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// The loader, from the tree when it carries it, else the host.
const LOADER: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// Room for this many kernel and initramfs sets on the ESP: the booted one, the upgrade
/// being staged, and the rollback.
const KERNEL_SETS: u64 = 3;
/// The ESP's size when the kernels need less.
const MIN_ESP: u64 = 128 << 20;

pub(super) fn needs() -> Vec<Needed> {
    vec![Needed::data(LOADER, "systemd-boot-efi")]
}

/// The kernel command line's addition: systemd must not mount the ESP itself (its GPT
/// auto-generator would, at /efi or /boot); osbuild mounts it only while syncing.
pub(crate) const KARGS: &[&str] = &["systemd.gpt_auto=0"];

/// The ESP's size: room for [`KERNEL_SETS`] times the kernels and initramfs images the
/// sysroot has now, plus a quarter for the loader and the file system, in whole MiB.
pub(super) fn esp_size(sysroot: &Path) -> Result<u64> {
    let boot = sysroot.join("boot/ostree");
    let mut kernels = 0;
    for dir in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
        let dir = dir
            .with_context(|| format!("reading {}", boot.display()))?
            .path();
        for f in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let f = f.with_context(|| format!("reading {}", dir.display()))?;
            kernels += f
                .metadata()
                .with_context(|| format!("reading {}", f.path().display()))?
                .len();
        }
    }
    let size = kernels * KERNEL_SETS;
    Ok((size + size / 4 + (16 << 20))
        .next_multiple_of(1 << 20)
        .max(MIN_ESP))
}

/// Mark the sysroot as booting systemd-boot from this disk's ESP.
pub(super) fn install_sysroot(sysroot: &Path, layout: &Layout) -> Result<()> {
    let esp = layout
        .get(Role::Esp)
        .context("a systemd-boot disk has an EFI system partition")?;
    let marker = sysroot.join(osbuild_admin::esp::MARKER);
    fs::write(&marker, osbuild_admin::esp::marker_text(&esp.uuid))
        .with_context(|| format!("writing {}", marker.display()))
}

/// The ESP's files: the loader at its own path and the removable-media path, and the
/// menu synced from the sysroot's boot entries into `work/esp`.
pub(super) fn esp_files(
    sources: &Sources,
    sysroot: &Path,
    work: &Path,
) -> Result<Vec<(String, PathBuf)>> {
    let staging = work.join("esp");
    osbuild_admin::esp::sync(sysroot, &staging)
        .context("copying the kernels and boot entries for the ESP")?;
    let loader = sources.find(LOADER);
    let mut files = vec![
        (
            "EFI/systemd/systemd-bootx64.efi".to_string(),
            loader.clone(),
        ),
        // Found by any firmware without boot variables (a fresh disk).
        ("EFI/BOOT/BOOTX64.EFI".to_string(), loader),
    ];
    let mut stack = vec![staging.clone()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = item
                .with_context(|| format!("reading {}", dir.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(&staging)
                    .context("a staged file is in the staging directory")?;
                files.push((rel.to_string_lossy().into_owned(), path));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_esp_holds_three_kernel_sets() {
        let dir = tempfile::tempdir().unwrap();
        assert!(esp_size(dir.path()).is_err());
        let k = dir.path().join("boot/ostree/debian-abc");
        fs::create_dir_all(&k).unwrap();
        assert_eq!(esp_size(dir.path()).unwrap(), MIN_ESP);
        // Sparse files: only their lengths count.
        fs::File::create(k.join("vmlinuz"))
            .and_then(|f| f.set_len(10 << 20))
            .unwrap();
        fs::File::create(k.join("initramfs.img"))
            .and_then(|f| f.set_len(40 << 20))
            .unwrap();
        let size = esp_size(dir.path()).unwrap();
        assert!(size >= 3 * (50 << 20), "{size}");
        assert_eq!(size % (1 << 20), 0);
    }
}
