//! The choices an image is made of: boot loader, firmware, partition table and output
//! format. Each is an enum with the knowledge about it in methods; [`check`] rejects the
//! combinations that cannot boot before anything is pulled or written.

use std::fmt;
use std::path::Path;

/// The boot loader installed on the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Bootloader {
    /// extlinux on the ext4 root; BIOS only, MBR only.
    Syslinux,
    /// GRUB; BIOS (core.img in a BIOS-boot partition), UEFI (on the ESP) or both.
    Grub,
    /// systemd-boot on the ESP, with the kernels and boot entries copied there after every
    /// deploy; UEFI only, GPT only, no Secure Boot (Debian 12's is not signed).
    SystemdBoot,
}

impl Bootloader {
    /// Every boot loader, for table-driven tests and help texts.
    pub const ALL: [Bootloader; 3] = [
        Bootloader::Syslinux,
        Bootloader::Grub,
        Bootloader::SystemdBoot,
    ];

    /// The name on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Bootloader::Syslinux => "syslinux",
            Bootloader::Grub => "grub",
            Bootloader::SystemdBoot => "systemd-boot",
        }
    }

    /// The value of `sysroot.bootloader` in the sysroot's repo config: libostree's backend
    /// that rewrites the menu on every deploy. GRUB's menu is generated from the boot
    /// entries by osbuild (osbuild_admin::bootmenu), and systemd-boot's are copied to the
    /// ESP by osbuild (osbuild_admin::esp), so libostree writes only those.
    pub fn ostree_backend(self) -> &'static str {
        match self {
            Bootloader::Syslinux => "syslinux",
            Bootloader::Grub | Bootloader::SystemdBoot => "none",
        }
    }

    /// The firmware it boots with.
    pub fn supports(self, firmware: Firmware) -> bool {
        match self {
            Bootloader::Syslinux => firmware == Firmware::Bios,
            Bootloader::Grub => true,
            Bootloader::SystemdBoot => firmware == Firmware::Uefi,
        }
    }

    /// Whether it boots through a signed chain under Secure Boot.
    pub fn supports_secure_boot(self) -> bool {
        self == Bootloader::Grub
    }

    /// What to use instead when it does not boot with some firmware.
    fn firmware_hint(self) -> &'static str {
        match self {
            Bootloader::Syslinux => "syslinux is BIOS only: use --bootloader grub for UEFI",
            Bootloader::SystemdBoot => {
                "systemd-boot is UEFI only: use --firmware uefi, or --bootloader grub for BIOS"
            }
            Bootloader::Grub => "GRUB boots with every firmware",
        }
    }

    /// The partition table it is used with unless one is asked for.
    pub fn default_table(self) -> PartitionTable {
        match self {
            Bootloader::Syslinux => PartitionTable::Mbr,
            Bootloader::Grub | Bootloader::SystemdBoot => PartitionTable::Gpt,
        }
    }
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The firmware the image boots under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS in qemu).
    Bios,
    /// UEFI (OVMF in qemu).
    Uefi,
    /// Both: one GPT disk with a BIOS-boot partition and an ESP.
    Hybrid,
}

impl Firmware {
    /// Every firmware choice.
    pub const ALL: [Firmware; 3] = [Firmware::Bios, Firmware::Uefi, Firmware::Hybrid];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Hybrid => "hybrid",
        }
    }

    /// Whether BIOS boot code is written.
    pub fn boots_bios(self) -> bool {
        matches!(self, Firmware::Bios | Firmware::Hybrid)
    }

    /// Whether the disk gets an EFI system partition.
    pub fn boots_uefi(self) -> bool {
        matches!(self, Firmware::Uefi | Firmware::Hybrid)
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PartitionTable {
    /// A DOS partition table; BIOS only.
    Mbr,
    /// A GUID partition table (with a protective MBR).
    Gpt,
}

impl PartitionTable {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PartitionTable::Mbr => "mbr",
            PartitionTable::Gpt => "gpt",
        }
    }
}

impl fmt::Display for PartitionTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The file format of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// A raw disk image, sparse.
    Raw,
    /// qemu's copy-on-write format (`qemu-img convert`).
    Qcow2,
    /// A live ISO 9660 image (xorriso): isolinux for BIOS and GRUB for UEFI in El Torito
    /// boot images; it boots the deployment from a read-only root image on the ISO with
    /// /etc and /var writable in memory.
    Iso,
}

impl Format {
    /// Every format.
    pub const ALL: [Format; 3] = [Format::Raw, Format::Qcow2, Format::Iso];

    /// The name on the command line, and the usual file extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Iso => "iso",
        }
    }

    /// The format an output path asks for by its extension: `.qcow2` is qcow2, `.iso` an
    /// ISO, anything else (`.img`, `.raw`, none) is raw.
    pub fn from_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => Format::Qcow2,
            Some("iso") => Format::Iso,
            _ => Format::Raw,
        }
    }

    /// Whether it is a disk (partitions, a writable root filesystem), not a live medium.
    pub fn is_disk(self) -> bool {
        !matches!(self, Format::Iso)
    }

    /// How qemu's `-drive format=` reads it.
    pub fn qemu_format(self) -> &'static str {
        match self {
            Format::Raw | Format::Iso => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// The options that shape a disk and mean nothing on a live ISO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskOnly {
    /// `--size`: an ISO is as large as what it holds.
    Size,
    /// `--partition-table`: the ISO's layout is fixed (ISO 9660, El Torito).
    PartitionTable,
    /// `--secure-boot`: the live ISO does not boot through shim.
    SecureBoot,
    /// `--compress`: qcow2 only.
    Compress,
}

impl DiskOnly {
    /// Every such option.
    pub const ALL: [DiskOnly; 4] = [
        DiskOnly::Size,
        DiskOnly::PartitionTable,
        DiskOnly::SecureBoot,
        DiskOnly::Compress,
    ];

    /// The flag on the command line.
    pub fn flag(self) -> &'static str {
        match self {
            DiskOnly::Size => "--size",
            DiskOnly::PartitionTable => "--partition-table",
            DiskOnly::SecureBoot => "--secure-boot",
            DiskOnly::Compress => "--compress",
        }
    }

    /// What to do instead.
    pub fn hint(self) -> &'static str {
        match self {
            DiskOnly::Size => "an ISO is as large as its content; leave --size out",
            DiskOnly::PartitionTable => {
                "an ISO's layout is fixed (ISO 9660 with El Torito boot images); leave --partition-table out"
            }
            DiskOnly::SecureBoot => {
                "the live ISO does not boot through shim; make a disk image (--format raw or qcow2) for Secure Boot"
            }
            DiskOnly::Compress => "--compress is for qcow2 images",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a combination of choices cannot make a bootable image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    /// The boot loader does not run on that firmware.
    #[error("--bootloader {bootloader} does not boot with --firmware {firmware}; {hint}")]
    Firmware {
        /// The boot loader asked for.
        bootloader: Bootloader,
        /// The firmware asked for.
        firmware: Firmware,
        /// What would work.
        hint: &'static str,
    },
    /// UEFI needs a GPT disk here; syslinux needs MBR.
    #[error("--partition-table {table} does not go with --bootloader {bootloader} and --firmware {firmware}; {hint}")]
    Table {
        /// The table asked for.
        table: PartitionTable,
        /// The boot loader asked for.
        bootloader: Bootloader,
        /// The firmware asked for.
        firmware: Firmware,
        /// What would work.
        hint: &'static str,
    },
    /// Secure Boot needs GRUB (Debian's signed chain) and UEFI firmware.
    #[error("--secure-boot needs --bootloader grub and --firmware uefi or hybrid (it was --bootloader {bootloader} --firmware {firmware}){hint}")]
    SecureBoot {
        /// The boot loader asked for.
        bootloader: Bootloader,
        /// The firmware asked for.
        firmware: Firmware,
        /// Why, when the boot loader is the reason.
        hint: &'static str,
    },
    /// An option that shapes a disk, given for a live ISO.
    #[error("--format iso does not take {}: {}", .option.flag(), .option.hint())]
    Iso {
        /// The option given.
        option: DiskOnly,
    },
}

/// Check that none of the disk-only options `given` is used with `format`.
pub fn check_format(format: Format, given: &[DiskOnly]) -> Result<(), Incompatible> {
    match given.first() {
        Some(&option) if format == Format::Iso => Err(Incompatible::Iso { option }),
        _ => Ok(()),
    }
}

/// Check that `bootloader` on `firmware` with `table` can boot, with Secure Boot on when
/// `secure_boot`.
pub fn check(
    bootloader: Bootloader,
    firmware: Firmware,
    table: PartitionTable,
    secure_boot: bool,
) -> Result<(), Incompatible> {
    if !bootloader.supports(firmware) {
        return Err(Incompatible::Firmware {
            bootloader,
            firmware,
            hint: bootloader.firmware_hint(),
        });
    }
    match (bootloader, table) {
        (Bootloader::Syslinux, PartitionTable::Gpt) => Err(Incompatible::Table {
            table,
            bootloader,
            firmware,
            hint: "syslinux images use --partition-table mbr",
        }),
        (_, PartitionTable::Mbr) if firmware.boots_uefi() => Err(Incompatible::Table {
            table,
            bootloader,
            firmware,
            hint: "UEFI images use --partition-table gpt",
        }),
        _ if secure_boot && !(bootloader.supports_secure_boot() && firmware.boots_uefi()) => {
            Err(Incompatible::SecureBoot {
                bootloader,
                firmware,
                hint: match bootloader {
                    Bootloader::SystemdBoot => "; Debian 12's systemd-boot is not signed",
                    _ => "",
                },
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_combination_is_decided() {
        // (bootloader, firmware, table, secure boot) -> boots?
        for bootloader in Bootloader::ALL {
            for firmware in Firmware::ALL {
                for table in [PartitionTable::Mbr, PartitionTable::Gpt] {
                    for secure_boot in [false, true] {
                        use Bootloader::*;
                        use Firmware::*;
                        use PartitionTable::*;
                        let boots = match (bootloader, firmware, table) {
                            (Syslinux, Bios, Mbr) => true,
                            (Syslinux, _, _) => false,
                            (Grub, Bios, _) => true,
                            (Grub, _, Gpt) => true,
                            (Grub, _, Mbr) => false,
                            (SystemdBoot, Uefi, Gpt) => true,
                            (SystemdBoot, _, _) => false,
                        };
                        let signed = bootloader == Grub && firmware != Bios;
                        let expected = boots && (!secure_boot || signed);
                        let got = check(bootloader, firmware, table, secure_boot);
                        assert_eq!(
                            got.is_ok(),
                            expected,
                            "{bootloader} {firmware} {table} secure_boot={secure_boot}: {got:?}"
                        );
                        if let Err(e) = got {
                            let msg = e.to_string();
                            assert!(msg.contains(bootloader.name()), "{msg}");
                            assert!(msg.contains(firmware.name()), "{msg}");
                            if bootloader == SystemdBoot && !matches!(e, Incompatible::Table { .. })
                            {
                                assert!(
                                    msg.contains("UEFI only") || msg.contains("not signed"),
                                    "{msg}"
                                );
                            }
                        }
                    }
                }
            }
            // The defaults always boot with the firmware the boot loader supports.
            for firmware in Firmware::ALL
                .into_iter()
                .filter(|f| bootloader.supports(*f))
            {
                check(bootloader, firmware, bootloader.default_table(), false).unwrap();
            }
        }
    }

    #[test]
    fn format_from_extension() {
        for format in Format::ALL {
            let path = format!("disk.{}", format.name());
            assert_eq!(Format::from_path(Path::new(&path)), format);
        }
        assert_eq!(Format::from_path(Path::new("disk.img")), Format::Raw);
        assert_eq!(Format::from_path(Path::new("live.iso")), Format::Iso);
        assert_eq!(Format::from_path(Path::new("disk")), Format::Raw);
    }

    #[test]
    fn disk_only_options_are_refused_for_iso_only() {
        for format in Format::ALL {
            assert_eq!(check_format(format, &[]), Ok(()));
            for option in DiskOnly::ALL {
                let got = check_format(format, &[option]);
                assert_eq!(got.is_err(), !format.is_disk(), "{format} {option:?}");
                if let Err(e) = got {
                    let msg = e.to_string();
                    assert!(msg.starts_with("--format iso does not take "), "{msg}");
                    assert!(msg.contains(option.flag()), "{msg}");
                    assert!(!msg.contains('\n'), "one line: {msg}");
                }
            }
        }
        // qemu reads every format; an ISO as raw bytes.
        for format in Format::ALL {
            assert!(["raw", "qcow2"].contains(&format.qemu_format()));
        }
    }

    #[test]
    fn names_round_trip_through_clap() {
        use clap::ValueEnum;
        for b in Bootloader::ALL {
            assert_eq!(Bootloader::from_str(b.name(), false), Ok(b));
        }
        for f in Firmware::ALL {
            assert_eq!(Firmware::from_str(f.name(), false), Ok(f));
        }
        for f in Format::ALL {
            assert_eq!(Format::from_str(f.name(), false), Ok(f));
        }
    }
}
