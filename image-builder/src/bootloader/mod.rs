//! The boot loaders, one file each (as libostree keeps one file per backend): what each
//! needs from the host or the tree, how it prepares the sysroot so libostree keeps its menu
//! right on every deploy, and what it writes to the disk.

pub(crate) mod eltorito;
mod grub;
mod shim;
mod syslinux;
mod systemd_boot;

pub(crate) use systemd_boot::KARGS as SYSTEMD_BOOT_KARGS;

use crate::layout::Layout;
use crate::options::{Bootloader, Firmware};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// A file a boot loader needs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Needed {
    /// Absolute path on the host (or in the tree, for files the OS may carry).
    pub(crate) path: &'static str,
    /// The package to install when it is missing.
    pub(crate) package: &'static str,
    /// Whether the OS tree may carry it instead of the host (boot loader images and
    /// modules may; the tools that run on the host may not).
    pub(crate) in_tree: bool,
}

impl Needed {
    pub(crate) const fn host(path: &'static str, package: &'static str) -> Needed {
        Needed {
            path,
            package,
            in_tree: false,
        }
    }

    pub(crate) const fn data(path: &'static str, package: &'static str) -> Needed {
        Needed {
            path,
            package,
            in_tree: true,
        }
    }
}

/// Everything that decides how the disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boot {
    pub(crate) bootloader: Bootloader,
    pub(crate) firmware: Firmware,
    /// UEFI boots through the signed chain (shim, signed GRUB, signed kernel).
    pub(crate) secure_boot: bool,
}

/// Where the boot loader's files come from: the deployed tree when it carries them (so the
/// loader is updated with the OS, as bootupd does), else the host.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// The deployment's root directory in the sysroot, once deployed.
    pub(crate) deployment: Option<PathBuf>,
}

impl Sources {
    /// `path` inside the deployment if it is there, else on the host.
    pub(crate) fn find(&self, path: &str) -> PathBuf {
        if let Some(dep) = &self.deployment {
            let inside = dep.join(path.trim_start_matches('/'));
            if inside.exists() {
                return inside;
            }
        }
        PathBuf::from(path)
    }
}

impl Boot {
    /// The files this boot needs; all are checked before anything is pulled or written.
    pub(crate) fn needs(self) -> Vec<Needed> {
        let mut needs = match self.bootloader {
            Bootloader::Syslinux => syslinux::needs(),
            Bootloader::Grub => grub::needs(self.firmware, self.secure_boot),
            Bootloader::SystemdBoot => systemd_boot::needs(),
        };
        if self.secure_boot {
            needs.extend(shim::needs());
        }
        if self.firmware.boots_uefi() {
            needs.extend([
                Needed::host("/usr/sbin/mkfs.vfat", "dosfstools"),
                Needed::host("/usr/bin/mcopy", "mtools"),
            ]);
        }
        needs
    }

    /// Fail, naming the package, when a needed file is missing: the host's tools before
    /// anything is pulled (`sources` without a deployment), the boot loader's own files
    /// once the deployment shows whether the tree carries them.
    pub(crate) fn check(self, sources: &Sources) -> Result<()> {
        check_needs(
            &format!(
                "--bootloader {} --firmware {}",
                self.bootloader, self.firmware
            ),
            &self.needs(),
            sources,
        )
    }

    /// The ESP's size when the disk has one: systemd-boot's holds the kernels too.
    pub(crate) fn esp_size(self, sysroot: &Path) -> Result<u64> {
        match self.bootloader {
            Bootloader::SystemdBoot => systemd_boot::esp_size(sysroot),
            Bootloader::Syslinux | Bootloader::Grub => Ok(128 << 20),
        }
    }

    /// Prepare the sysroot before the first deploy, so that libostree's backend finds a
    /// config to keep up to date.
    pub(crate) fn prepare_sysroot(self, sysroot: &Path) -> Result<()> {
        match self.bootloader {
            Bootloader::Syslinux => syslinux::prepare_sysroot(sysroot),
            Bootloader::Grub | Bootloader::SystemdBoot => Ok(()),
        }
    }

    /// Write the loader's own files into the sysroot after the deploy, once the disk is
    /// laid out and before the root filesystem is made from it.
    pub(crate) fn install_sysroot(self, sysroot: &Path, layout: &Layout) -> Result<()> {
        match self.bootloader {
            Bootloader::Syslinux => Ok(()),
            Bootloader::Grub => grub::install_sysroot(sysroot),
            Bootloader::SystemdBoot => systemd_boot::install_sysroot(sysroot, layout),
        }
    }

    /// The files of the EFI system partition: (path on the ESP, content).
    pub(crate) fn esp_files(
        self,
        sources: &Sources,
        sysroot: &Path,
        work: &Path,
    ) -> Result<Vec<(String, PathBuf)>> {
        match self.bootloader {
            Bootloader::Syslinux => Ok(Vec::new()),
            Bootloader::SystemdBoot => systemd_boot::esp_files(sources, sysroot, work),
            Bootloader::Grub if self.secure_boot => shim::esp_files(sources, work),
            Bootloader::Grub => grub::esp_files(sources, work),
        }
    }

    /// Write the BIOS boot code (and anything the loader installs into the filesystems
    /// once they exist) into the finished disk image.
    pub(crate) fn install_disk(
        self,
        sources: &Sources,
        layout: &Layout,
        image: &Path,
        work: &Path,
    ) -> Result<()> {
        match self.bootloader {
            Bootloader::Syslinux => syslinux::install_disk(layout, image),
            Bootloader::Grub if self.firmware.boots_bios() => {
                grub::install_bios(sources, layout, image, work)
            }
            Bootloader::Grub | Bootloader::SystemdBoot => Ok(()),
        }
    }
}

/// Fail when a needed file is missing, naming `what` needs it, the files and the packages
/// to install: the host's files before anything is pulled (`sources` without a
/// deployment), the data files once the deployment shows whether the tree carries them.
pub(crate) fn check_needs(what: &str, needs: &[Needed], sources: &Sources) -> Result<()> {
    let missing: Vec<&Needed> = needs
        .iter()
        .filter(|n| {
            let early = sources.deployment.is_none();
            match (n.in_tree, early) {
                // Data files may still come with the tree: checked after the deploy.
                (true, true) => false,
                (true, false) => !sources.find(n.path).exists(),
                (false, _) => !Path::new(n.path).exists(),
            }
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.sort_unstable();
    packages.dedup();
    anyhow::bail!(
        "{what} needs {} (install {})",
        missing
            .iter()
            .map(|n| n.path)
            .collect::<Vec<_>>()
            .join(", "),
        packages.join(" ")
    )
}

/// Open the image for patching boot code in place.
pub(crate) fn open_rw(image: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_their_packages_once() {
        let needs = [
            Needed::host("/nonexistent/usr/bin/xorriso", "xorriso"),
            Needed::host("/nonexistent/usr/lib/ISOLINUX/isolinux.bin", "isolinux"),
            Needed::host("/nonexistent/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux"),
            Needed::data(
                "/nonexistent/usr/lib/grub/x86_64-efi/linux.mod",
                "grub-efi-amd64-bin",
            ),
        ];
        let early = Sources { deployment: None };
        let err = check_needs("--format iso --firmware hybrid", &needs, &early)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--format iso --firmware hybrid needs /nonexistent/usr/bin/xorriso, "),
            "{err}"
        );
        assert!(err.ends_with("(install isolinux xorriso)"), "{err}");
        // Files the tree may carry are checked once it is deployed.
        assert!(!err.contains("linux.mod"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let deployed = Sources {
            deployment: Some(dir.path().to_path_buf()),
        };
        let err = check_needs("x", &needs[3..], &deployed)
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("(install grub-efi-amd64-bin)"), "{err}");
    }
}
