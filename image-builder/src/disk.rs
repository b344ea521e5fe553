//! The disk image: an MBR partition table, one ext4 root partition holding the sysroot
//! (with /boot in it), and the boot loader.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: u64 = 512;
/// The root partition starts at 1 MiB, the usual alignment.
const PART_START: u64 = 1 << 20;
/// Syslinux's MBR boot code; it chain-loads the active partition's boot sector.
const SYSLINUX_MBR: &str = "/usr/lib/syslinux/mbr/mbr.bin";

/// Boot loaders the builder can install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootloader {
    /// extlinux on the ext4 root, BIOS boot.
    Syslinux,
}

impl Bootloader {
    /// The value of `sysroot.bootloader` in the repo config, which selects libostree's
    /// backend that rewrites this loader's config on every deploy.
    pub fn ostree_name(self) -> &'static str {
        match self {
            Bootloader::Syslinux => "syslinux",
        }
    }

    /// Lay out /boot so that libostree's backend finds a config to update.
    pub fn prepare_sysroot(self, sysroot: &Path) -> Result<()> {
        match self {
            Bootloader::Syslinux => {
                // libostree's syslinux backend only updates an existing config, and it must
                // reach it through boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg so the
                // menu always follows the current boot/loader symlink.
                let boot = sysroot.join("boot");
                (|| {
                    fs::create_dir_all(boot.join("loader.0"))?;
                    fs::write(boot.join("loader.0/syslinux.cfg"), "")?;
                    symlink("loader.0", boot.join("loader"))?;
                    fs::create_dir_all(boot.join("syslinux"))?;
                    symlink("../loader/syslinux.cfg", boot.join("syslinux/syslinux.cfg"))
                })()
                .with_context(|| format!("preparing {} for syslinux", boot.display()))
            }
        }
    }
}

/// The geometry and contents of a disk image.
#[derive(Debug)]
pub struct Disk {
    size: u64,
    bootloader: Bootloader,
}

impl Disk {
    /// A disk of `size` bytes (rounded down to whole sectors) booting with `bootloader`.
    pub fn new(size: u64, bootloader: Bootloader) -> Result<Self> {
        if size < 256 << 20 {
            anyhow::bail!(
                "--size {size} bytes is too small for a bootable image; use at least 256M"
            );
        }
        Ok(Disk {
            size: size / SECTOR * SECTOR,
            bootloader,
        })
    }

    fn part_sectors(&self) -> u64 {
        (self.size - PART_START) / SECTOR
    }

    /// The size of the image in bytes (a whole number of sectors).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Write a raw disk image to `path` holding the sysroot at `sysroot`.
    pub fn write(&self, sysroot: &Path, path: &Path) -> Result<()> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        file.set_len(self.size)
            .with_context(|| format!("sizing {} to {} bytes", path.display(), self.size))?;
        drop(file);
        self.mkfs(sysroot, path)?;
        self.partition_table(path)?;
        match self.bootloader {
            Bootloader::Syslinux => self.install_extlinux(path)?,
        }
        Ok(())
    }

    /// Build the root filesystem from the directory, directly inside the image file.
    fn mkfs(&self, sysroot: &Path, image: &Path) -> Result<()> {
        let blocks_k = self.part_sectors() * SECTOR / 1024;
        cmd::run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", crate::ROOT_LABEL])
                // syslinux cannot read ext4 with 64-bit block numbers.
                .args(["-O", "^64bit"])
                .arg("-E")
                .arg(format!("offset={PART_START}"))
                .arg("-d")
                .arg(sysroot)
                .arg(image)
                .arg(format!("{blocks_k}k")),
        )
        .context("creating the root filesystem")?;
        Ok(())
    }

    fn partition_table(&self, image: &Path) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        let mut mbr = mbrman::MBR::new_from(&mut f, SECTOR as u32, disk_signature())
            .context("creating the partition table")?;
        mbr[1] = mbrman::MBRPartitionEntry {
            boot: mbrman::BOOT_ACTIVE,
            first_chs: mbrman::CHS::empty(),
            sys: 0x83,
            last_chs: mbrman::CHS::empty(),
            starting_lba: (PART_START / SECTOR) as u32,
            sectors: u32::try_from(self.part_sectors()).context("disk too large for MBR")?,
        };
        if self.bootloader == Bootloader::Syslinux {
            let code = fs::read(SYSLINUX_MBR).with_context(|| {
                format!("reading {SYSLINUX_MBR} (install the syslinux-common package)")
            })?;
            let n = code.len().min(440);
            mbr.header.bootstrap_code[..n].copy_from_slice(&code[..n]);
        }
        mbr.write_into(&mut f)
            .context("writing the partition table")?;
        f.flush()
            .with_context(|| format!("writing {}", image.display()))
    }

    fn install_extlinux(&self, image: &Path) -> Result<()> {
        let mount = LoopMount::new(image, PART_START, self.part_sectors() * SECTOR)?;
        cmd::run(
            Command::new("extlinux")
                .arg("--install")
                .arg(mount.path().join("boot/syslinux")),
        )
        .context("installing extlinux")?;
        mount.unmount()?;
        // The partition's boot sector must know where the partition starts; the loop
        // mount of a partition at an offset reports 0.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(image)
            .with_context(|| format!("opening {}", image.display()))?;
        f.seek(SeekFrom::Start(PART_START + 0x1c))
            .and_then(|_| f.write_all(&((PART_START / SECTOR) as u32).to_le_bytes()))
            .with_context(|| format!("patching the boot sector in {}", image.display()))
    }
}

fn disk_signature() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or(0x05b1_1d00);
    nanos.to_le_bytes()
}

/// A loop mount of a partition inside an image file, unmounted on drop.
#[derive(Debug)]
struct LoopMount {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl LoopMount {
    fn new(image: &Path, offset: u64, size: u64) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("osbuild-mnt-")
            .tempdir()
            .context("creating a mount point")?;
        cmd::run(
            Command::new("mount")
                .arg("-o")
                .arg(format!("loop,offset={offset},sizelimit={size}"))
                .arg(image)
                .arg(dir.path()),
        )
        .context("mounting the root partition")?;
        Ok(LoopMount { dir, mounted: true })
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Unmount now, reporting failure; the mount stays marked as mounted until umount
    /// succeeds, so that a failure here is retried on drop.
    fn unmount(mut self) -> Result<()> {
        umount(self.dir.path()).context("unmounting the root partition")?;
        self.mounted = false;
        Ok(())
    }
}

/// How often a busy mount is retried before falling back to a lazy unmount.
const UMOUNT_ATTEMPTS: u32 = 5;

fn umount(dir: &Path) -> Result<(), cmd::CommandError> {
    cmd::run(Command::new("umount").arg(dir)).map(drop)
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // A mount point can be busy for a moment (udev, a scanner): retry, then detach it
        // lazily so that neither the mount nor its loop device outlives the builder.
        let dir = self.dir.path();
        for attempt in 1..=UMOUNT_ATTEMPTS {
            match umount(dir) {
                Ok(()) => return,
                Err(e) => tracing::warn!(
                    "unmounting {} (attempt {attempt} of {UMOUNT_ATTEMPTS}): {e}",
                    dir.display()
                ),
            }
            std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)));
        }
        if let Err(e) = cmd::run(Command::new("umount").arg("--lazy").arg(dir)) {
            tracing::error!("could not unmount {}: {e}", dir.display());
        }
    }
}
