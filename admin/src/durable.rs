//! Replacing a file so that a crash or power cut leaves either the old file or the new
//! one, whole: written beside it under a temporary name, synced, renamed over it, and the
//! directory synced.

use anyhow::{Context, Result};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The suffix of files being written; one is left over only by an interrupted write.
pub(crate) const TMP_SUFFIX: &str = ".osbuild-tmp";

/// Sync a directory's entries to disk (after a rename or removal in it).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Write `dest` through a temporary file beside it: written, synced, renamed.
pub(crate) fn replace(
    dest: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = dest.parent().context("a file has a parent")?;
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    (|| -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dest)?;
        sync_dir(dir)
    })()
    .with_context(|| format!("writing {}", dest.display()))
}

/// Make everything written to the filesystem holding `dir` visible to a reader that does
/// not replay its journal, as GRUB and syslinux read ext4: a freeze and thaw, which
/// writes the journal back into place, as libostree does after its own writes. Its
/// `/boot/loader` swap and cleanup come after that, and so does a regenerated menu.
/// Filesystems that cannot freeze are synced instead.
// The ioctls have no safe binding in libc or rustix.
#[allow(unsafe_code)]
pub(crate) fn flush_for_bootloader(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // _IOWR('X', 119, int) and _IOWR('X', 120, int) of <linux/fs.h>.
    const FIFREEZE: libc::c_ulong = 0xC004_5877;
    const FITHAW: libc::c_ulong = 0xC004_5878;
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let fd = d.as_raw_fd();
    // SAFETY: plain ioctls on an open descriptor, with an int argument the kernel ignores.
    let frozen = unsafe { libc::ioctl(fd, FIFREEZE as _, 0) } == 0;
    if frozen {
        // Thawed at once: nothing of ours writes in between.
        // SAFETY: as above.
        if unsafe { libc::ioctl(fd, FITHAW as _, 0) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("thawing the filesystem of {}", dir.display()));
        }
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Cannot freeze (tmpfs, FAT), or someone else holds it frozen: sync what we can.
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::EBUSY) => {
            // SAFETY: syncfs on an open descriptor.
            if unsafe { libc::syncfs(fd) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("syncing the filesystem of {}", dir.display()));
            }
            Ok(())
        }
        _ => Err(err).with_context(|| format!("freezing the filesystem of {}", dir.display())),
    }
}
