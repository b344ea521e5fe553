//! Growing the root partition and filesystem to fill the disk, on the device at boot: an
//! image written to a larger disk uses all of it. Runs every boot and does nothing once
//! the root fills the disk (so a disk enlarged later is used too).
//!
//! The partition table is edited with gptman (GPT: the last partition's end, the backup
//! header moved to the new end, the protective MBR's size) or mbrman (MBR); the kernel is
//! told with util-linux's `resizepart`, and the mounted ext4 is grown with `resize2fs`.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

const SECTOR: u64 = 512;
/// Partition ends are kept on 1 MiB boundaries.
const ALIGN_SECTORS: u64 = 2048;

/// The root filesystem's block device: the source of the mount at `mount_point` in
/// /proc/self/mountinfo (`/sysroot`, the physical root, on a booted ostree system).
pub fn mounted_device(mountinfo: &str, mount_point: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&mount_point))
            .then(|| fields.get(sep + 2).map(PathBuf::from))
            .flatten()
            .filter(|p| p.starts_with("/dev/"))
    })
}

/// A partition `/dev/NAME` as the disk it is on and its number, from sysfs.
fn disk_and_number(part: &Path) -> Result<(PathBuf, u32)> {
    let name = part
        .file_name()
        .context("a partition device has a name")?
        .to_string_lossy()
        .into_owned();
    let sys = Path::new("/sys/class/block").join(&name);
    let number: u32 = fs::read_to_string(sys.join("partition"))
        .with_context(|| format!("{} is not a partition", part.display()))?
        .trim()
        .parse()
        .context("reading the partition number")?;
    let real = fs::canonicalize(&sys).with_context(|| format!("resolving {}", sys.display()))?;
    let disk = real
        .parent()
        .and_then(Path::file_name)
        .context("a partition's sysfs entry is inside its disk's")?;
    Ok((Path::new("/dev").join(disk), number))
}

/// The new end sector (inclusive) of partition `number` when it can grow to `last`, the
/// last usable sector: only the last partition on the disk grows, to a 1 MiB boundary.
fn new_end(ends: &[(u32, u64, u64)], number: u32, last: u64) -> Option<u64> {
    let (_, start, end) = *ends.iter().find(|(n, _, _)| *n == number)?;
    if ends.iter().any(|(n, s, _)| *n != number && *s > start) {
        return None;
    }
    let aligned = (last + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
    // Less than 1 MiB to gain is not worth a table rewrite.
    (aligned >= end + ALIGN_SECTORS).then_some(aligned)
}

/// Grow the partition `part` (e.g. /dev/vda3) and its ext4 filesystem to fill its disk.
/// Returns the partition's new size in bytes, or None when there was nothing to do.
pub fn grow(part: &Path) -> Result<Option<u64>> {
    let (disk, number) = disk_and_number(part)?;
    let mut f = File::options()
        .read(true)
        .write(true)
        .open(&disk)
        .with_context(|| format!("opening {}", disk.display()))?;
    let (start, end) = match gptman::GPT::find_from(&mut f) {
        Ok(mut gpt) => {
            gpt.header
                .update_from(&mut f, SECTOR)
                .context("reading the disk's size")?;
            let ends: Vec<(u32, u64, u64)> = gpt
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(n, p)| (n, p.starting_lba, p.ending_lba))
                .collect();
            let Some(end) = new_end(&ends, number, gpt.header.last_usable_lba) else {
                return Ok(None);
            };
            gpt[number].ending_lba = end;
            gpt.write_into(&mut f)
                .with_context(|| format!("writing the partition table of {}", disk.display()))?;
            gptman::GPT::write_protective_mbr_into(&mut f, SECTOR)
                .with_context(|| format!("writing the protective MBR of {}", disk.display()))?;
            (gpt[number].starting_lba, end)
        }
        Err(_) => {
            let mut mbr = mbrman::MBR::read_from(&mut f, SECTOR as u32)
                .with_context(|| format!("{} has neither a GPT nor an MBR", disk.display()))?;
            let sectors = {
                use std::io::Seek;
                f.seek(std::io::SeekFrom::End(0))
                    .context("reading the disk's size")?
                    / SECTOR
            };
            let ends: Vec<(u32, u64, u64)> = mbr
                .iter()
                .filter(|(_, p)| p.is_used())
                .map(|(n, p)| {
                    let s = u64::from(p.starting_lba);
                    (n as u32, s, s + u64::from(p.sectors) - 1)
                })
                .collect();
            let last = sectors.min(u64::from(u32::MAX)) - 1;
            let Some(end) = new_end(&ends, number, last) else {
                return Ok(None);
            };
            let entry = &mut mbr[number as usize];
            let start = u64::from(entry.starting_lba);
            entry.sectors =
                u32::try_from(end - start + 1).context("partition too large for MBR")?;
            mbr.write_into(&mut f)
                .with_context(|| format!("writing the partition table of {}", disk.display()))?;
            (start, end)
        }
    };
    f.sync_all()
        .with_context(|| format!("syncing {}", disk.display()))?;
    drop(f);
    let sectors = end - start + 1;
    cmd::run(
        Command::new("resizepart")
            .arg(&disk)
            .arg(number.to_string())
            .arg(sectors.to_string()),
    )
    .context("telling the kernel the partition's new size")?;
    cmd::run(Command::new("resize2fs").arg(part)).context("growing the root filesystem")?;
    Ok(Some(sectors * SECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_physical_root_is_found_in_mountinfo() {
        let info = "\
29 1 252:3 /ostree/deploy/debian/deploy/abc.0 / rw,relatime shared:1 - ext4 /dev/vda3 rw
30 29 252:3 / /sysroot rw,relatime shared:2 - ext4 /dev/vda3 rw
31 29 0:5 / /dev rw shared:3 - devtmpfs devtmpfs rw";
        assert_eq!(
            mounted_device(info, "/sysroot"),
            Some(PathBuf::from("/dev/vda3"))
        );
        assert_eq!(mounted_device(info, "/dev"), None);
        assert_eq!(mounted_device(info, "/boot"), None);
    }

    #[test]
    fn only_the_last_partition_grows_to_an_aligned_end() {
        // BIOS-boot, ESP, root ending at 3 GiB; the disk now ends at ~4 GiB.
        let parts = [(1, 2048, 4095), (2, 4096, 266239), (3, 266240, 6291455)];
        let last = 8388574; // a 4 GiB disk's last usable LBA
        assert_eq!(new_end(&parts, 3, last), Some(8386559));
        assert_eq!((8386559 + 1) % ALIGN_SECTORS, 0);
        assert_eq!(new_end(&parts, 2, last), None);
        // Already full.
        assert_eq!(new_end(&parts, 3, 6291455 + 100), None);
    }
}
