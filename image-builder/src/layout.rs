//! Where each partition goes on the disk, and the partition table that says so: GPT
//! through `gptman` (with a protective MBR), or a DOS table through `mbrman` for syslinux.
//! Partitions are aligned to 1 MiB and only made when something needs them: a BIOS-boot
//! partition for GRUB's core.img on BIOS, an EFI system partition for UEFI, the ext4 root.

use crate::options::{Firmware, PartitionTable};
use anyhow::{Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Bytes per sector: what every table here is written for.
pub(crate) const SECTOR: u64 = 512;
/// Partitions start and end on 1 MiB boundaries.
pub(crate) const ALIGN: u64 = 1 << 20;
/// GRUB's core.img lives here on BIOS; 1 MiB is what grub-install asks for.
const BIOS_BOOT_SIZE: u64 = 1 << 20;
/// The backup GPT at the end of the disk: 32 sectors of entries and the header.
const GPT_BACKUP_SECTORS: u64 = 33;

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GRUB's core.img for BIOS boot; no filesystem.
    BiosBoot,
    /// The EFI system partition, FAT.
    Esp,
    /// The ext4 root holding the sysroot, /boot included.
    Root,
}

impl Role {
    /// The GPT partition name.
    pub fn name(self) -> &'static str {
        match self {
            Role::BiosBoot => "BIOS-boot",
            Role::Esp => "ESP",
            Role::Root => "root",
        }
    }

    /// The filesystem made on it, if any.
    pub fn filesystem(self) -> Option<&'static str> {
        match self {
            Role::BiosBoot => None,
            Role::Esp => Some("vfat"),
            Role::Root => Some("ext4"),
        }
    }

    /// The filesystem's label, which the boot loaders and the kernel find it by.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Role::BiosBoot => None,
            Role::Esp => Some(crate::ESP_LABEL),
            Role::Root => Some(crate::ROOT_LABEL),
        }
    }

    /// The GPT type GUID (the Discoverable Partitions Specification's for the root).
    fn gpt_type(self) -> &'static str {
        match self {
            Role::BiosBoot => "21686148-6449-6E6F-744E-656564454649",
            Role::Esp => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            Role::Root => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        }
    }
}

/// One partition: its byte range on the disk and its unique GUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// What it holds.
    pub role: Role,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// The partition's unique GUID (GPT) as text.
    pub uuid: String,
}

/// The partitions of a disk and the table that lists them.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The kind of table.
    pub table: PartitionTable,
    /// The disk's size in bytes.
    pub size: u64,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
}

impl Layout {
    /// Lay out a disk of `size` bytes (rounded down to whole MiB) for `firmware`, with an
    /// ESP of `esp_size` bytes when UEFI boots it.
    pub fn new(
        size: u64,
        table: PartitionTable,
        firmware: Firmware,
        esp_size: u64,
    ) -> Result<Layout> {
        let size = size / ALIGN * ALIGN;
        let mut roles = Vec::new();
        if table == PartitionTable::Gpt && firmware.boots_bios() {
            roles.push((Role::BiosBoot, BIOS_BOOT_SIZE));
        }
        if firmware.boots_uefi() {
            roles.push((Role::Esp, esp_size));
        }
        // After the primary table (GPT: 34 sectors) comes the first aligned MiB.
        let mut start = ALIGN;
        let mut partitions = Vec::new();
        for (role, len) in roles {
            partitions.push(Partition {
                role,
                start,
                size: len,
                uuid: random_uuid()?,
            });
            start += len;
        }
        // The root takes the rest, up to the last whole MiB before the backup GPT.
        let end = match table {
            PartitionTable::Gpt => (size - GPT_BACKUP_SECTORS * SECTOR) / ALIGN * ALIGN,
            PartitionTable::Mbr => size,
        };
        anyhow::ensure!(
            end > start + ALIGN,
            "a {} MiB disk leaves no room for the root partition",
            size >> 20
        );
        partitions.push(Partition {
            role: Role::Root,
            start,
            size: end - start,
            uuid: random_uuid()?,
        });
        Ok(Layout {
            table,
            size,
            partitions,
        })
    }

    /// The partition with `role`, if the disk has one.
    pub fn get(&self, role: Role) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    /// The root partition, which every layout has.
    pub fn root(&self) -> &Partition {
        // Layout::new always pushes it last.
        &self.partitions[self.partitions.len() - 1]
    }

    /// The bytes before the first partition that BIOS boot code may use (the MBR gap), or
    /// none on GPT, where the entries live there.
    pub fn mbr_gap(&self) -> Option<(u64, u64)> {
        match self.table {
            PartitionTable::Mbr => Some((SECTOR, self.partitions[0].start - SECTOR)),
            PartitionTable::Gpt => None,
        }
    }

    /// Write the partition table into `file`, which is at least `self.size` long. MBR boot
    /// code already in the first 440 bytes is kept.
    pub fn write_table(&self, file: &mut File) -> Result<()> {
        match self.table {
            PartitionTable::Gpt => self.write_gpt(file),
            PartitionTable::Mbr => self.write_mbr(file),
        }
    }

    fn write_gpt(&self, file: &mut File) -> Result<()> {
        let mut gpt = gptman::GPT::new_from(file, SECTOR, guid_bytes(&random_uuid()?)?)
            .context("creating the GUID partition table")?;
        for (i, p) in self.partitions.iter().enumerate() {
            gpt[i as u32 + 1] = gptman::GPTPartitionEntry {
                partition_type_guid: guid_bytes(p.role.gpt_type())?,
                unique_partition_guid: guid_bytes(&p.uuid)?,
                starting_lba: p.start / SECTOR,
                ending_lba: (p.start + p.size) / SECTOR - 1,
                attribute_bits: 0,
                partition_name: p.role.name().into(),
            };
        }
        gpt.write_into(file)
            .context("writing the GUID partition table")?;
        gptman::GPT::write_protective_mbr_into(file, SECTOR)
            .context("writing the protective MBR")?;
        Ok(())
    }

    fn write_mbr(&self, file: &mut File) -> Result<()> {
        // mbrman starts from zeros: keep boot code written before.
        let mut code = [0u8; 440];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut code))
            .context("reading the MBR boot code")?;
        let mut mbr =
            mbrman::MBR::new_from(file, SECTOR as u32, random_bytes("the disk signature")?)
                .context("creating the partition table")?;
        for (i, p) in self.partitions.iter().enumerate() {
            mbr[i + 1] = mbrman::MBRPartitionEntry {
                boot: if p.role == Role::Root {
                    mbrman::BOOT_ACTIVE
                } else {
                    mbrman::BOOT_INACTIVE
                },
                first_chs: mbrman::CHS::empty(),
                sys: match p.role {
                    Role::Esp => 0xef,
                    _ => 0x83,
                },
                last_chs: mbrman::CHS::empty(),
                starting_lba: u32::try_from(p.start / SECTOR).context("disk too large for MBR")?,
                sectors: u32::try_from(p.size / SECTOR).context("disk too large for MBR")?,
            };
        }
        mbr.header.bootstrap_code = code;
        mbr.write_into(file)
            .context("writing the partition table")?;
        file.flush().context("writing the partition table")
    }
}

impl fmt::Display for Layout {
    /// The table of partitions that make-image prints at the end.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<3} {:<10} {:>10}  {:<6} {:<13} partition uuid",
            "#", "name", "size", "fs", "label"
        )?;
        for (i, p) in self.partitions.iter().enumerate() {
            writeln!(
                f,
                "  {:<3} {:<10} {:>6} MiB  {:<6} {:<13} {}",
                i + 1,
                p.role.name(),
                p.size >> 20,
                p.role.filesystem().unwrap_or("-"),
                p.role.label().unwrap_or("-"),
                match self.table {
                    PartitionTable::Gpt => p.uuid.as_str(),
                    PartitionTable::Mbr => "-",
                }
            )?;
        }
        Ok(())
    }
}

/// `N` random bytes, for GUIDs and the MBR disk signature.
fn random_bytes<const N: usize>(what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .with_context(|| format!("reading /dev/urandom for {what}"))?;
    Ok(b)
}

/// A random (version 4) UUID as text.
fn random_uuid() -> Result<String> {
    let mut b: [u8; 16] = random_bytes("a partition UUID")?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex = osbuild_core::hex(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// A GUID in the on-disk byte order of GPT: the first three fields little-endian.
fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    anyhow::ensure!(hex.len() == 32, "invalid GUID {text:?}");
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("invalid GUID {text:?}"))?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_on_disk_order() {
        // The ESP type as it appears on disk (UEFI spec, mixed endian).
        assert_eq!(
            guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert!(guid_bytes("nope").is_err());
        let a = random_uuid().unwrap();
        assert_ne!(a, random_uuid().unwrap());
        assert_eq!(&a[14..15], "4");
        guid_bytes(&a).unwrap();
    }

    #[test]
    fn partitions_only_when_needed_and_aligned() {
        // (table, firmware) -> roles
        let cases = [
            (PartitionTable::Mbr, Firmware::Bios, vec![Role::Root]),
            (
                PartitionTable::Gpt,
                Firmware::Bios,
                vec![Role::BiosBoot, Role::Root],
            ),
            (
                PartitionTable::Gpt,
                Firmware::Uefi,
                vec![Role::Esp, Role::Root],
            ),
            (
                PartitionTable::Gpt,
                Firmware::Hybrid,
                vec![Role::BiosBoot, Role::Esp, Role::Root],
            ),
        ];
        for (table, firmware, roles) in cases {
            let l = Layout::new((1 << 30) + 12345, table, firmware, 64 << 20).unwrap();
            let got: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
            assert_eq!(got, roles, "{table} {firmware}");
            assert_eq!(l.size, 1 << 30);
            let mut end = ALIGN;
            for p in &l.partitions {
                assert_eq!(p.start % ALIGN, 0, "{p:?}");
                assert_eq!(p.size % ALIGN, 0, "{p:?}");
                assert!(p.start >= end, "overlap: {p:?}");
                end = p.start + p.size;
            }
            if table == PartitionTable::Gpt {
                assert!(end + GPT_BACKUP_SECTORS * SECTOR <= l.size);
            } else {
                assert_eq!(end, l.size);
            }
            assert_eq!(l.root().role, Role::Root);
        }
        assert!(Layout::new(2 << 20, PartitionTable::Gpt, Firmware::Uefi, 64 << 20).is_err());
    }

    #[test]
    fn gpt_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let mut f = File::options()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(256 << 20).unwrap();
        let l = Layout::new(256 << 20, PartitionTable::Gpt, Firmware::Hybrid, 64 << 20).unwrap();
        l.write_table(&mut f).unwrap();
        let gpt = gptman::GPT::find_from(&mut f).unwrap();
        let parts: Vec<_> = gpt.iter().filter(|(_, p)| p.is_used()).collect();
        assert_eq!(parts.len(), 3);
        for ((_, entry), p) in parts.iter().zip(&l.partitions) {
            assert_eq!(entry.starting_lba * SECTOR, p.start);
            assert_eq!(entry.partition_name.as_str(), p.role.name());
            assert_eq!(entry.unique_partition_guid, guid_bytes(&p.uuid).unwrap());
        }
        let mut mbr = [0u8; 512];
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_exact(&mut mbr).unwrap();
        assert_eq!(mbr[446 + 4], 0xee, "protective MBR");
        assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    }
}
