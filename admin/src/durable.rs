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
/// not replay its journal, as GRUB and syslinux read ext4: `syncfs` commits the journal
/// and writes the metadata back in place. (Not a freeze and thaw, as libostree does: a
/// shutdown that kills the process between the two would leave the root filesystem
/// frozen, and every writer, the shutdown too, hangs. libostree guards that with a
/// watchdog process; a sync needs none.)
pub(crate) fn flush_for_bootloader(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    rustix::fs::syncfs(&d).with_context(|| format!("syncing the filesystem of {}", dir.display()))
}
