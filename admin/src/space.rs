//! Room on /boot for an upgrade: the new commit's kernel and initramfs must fit beside
//! what stays, counting what libostree prunes when it writes the new deployment list.

use crate::status::Deployment;
use anyhow::{Context, Result};
use osbuild_core::gio::prelude::*;
use osbuild_core::{gio, ostree};
use std::collections::BTreeMap;
use std::path::Path;

/// Room kept free beyond the files themselves (directory entries, allocation slack).
const SLACK: u64 = 64 * 1024;

/// The kernel and initramfs of `commit`: object checksum -> size.
fn boot_files(repo: &ostree::Repo, commit: &str) -> Result<BTreeMap<String, u64>> {
    let (root, _) = repo
        .read_commit(commit, gio::Cancellable::NONE)
        .with_context(|| format!("reading commit {commit}"))?;
    let modules = root.resolve_relative_path("usr/lib/modules");
    let mut files = BTreeMap::new();
    let kernels = modules
        .enumerate_children(
            "standard::name",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        )
        .with_context(|| format!("listing /usr/lib/modules of commit {commit}"))?;
    for info in kernels {
        let info = info.with_context(|| format!("listing /usr/lib/modules of {commit}"))?;
        let dir = modules.child(info.name());
        for name in ["vmlinuz", "initramfs.img"] {
            let file = dir.child(name);
            let Ok(meta) = file.query_info(
                "standard::size",
                gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
                gio::Cancellable::NONE,
            ) else {
                continue;
            };
            let checksum = file
                .downcast_ref::<ostree::RepoFile>()
                .map(|f| f.checksum().to_string())
                .unwrap_or_default();
            files.insert(checksum, u64::try_from(meta.size()).unwrap_or(0));
        }
    }
    Ok(files)
}

/// Refuse, naming how much is missing, when /boot under the sysroot at `path` cannot
/// hold `new`'s kernel and initramfs once the deployments not in `kept` are pruned.
pub(crate) fn check(
    path: &Path,
    repo: &ostree::Repo,
    new: &str,
    deployments: &[Deployment],
    kept: &[&Deployment],
) -> Result<()> {
    let wanted = boot_files(repo, new)?;
    let mut kept_files = BTreeMap::new();
    let mut dropped_files = BTreeMap::new();
    for d in deployments {
        let files = boot_files(repo, &d.checksum).unwrap_or_default();
        if kept
            .iter()
            .any(|k| k.checksum == d.checksum && k.serial == d.serial)
        {
            kept_files.extend(files);
        } else {
            dropped_files.extend(files);
        }
    }
    let needed: u64 = wanted
        .iter()
        .filter(|(c, _)| !kept_files.contains_key(*c) && !dropped_files.contains_key(*c))
        .map(|(_, s)| s)
        .sum();
    if needed == 0 {
        return Ok(());
    }
    let freed: u64 = dropped_files
        .iter()
        .filter(|(c, _)| !kept_files.contains_key(*c) && !wanted.contains_key(*c))
        .map(|(_, s)| s)
        .sum();
    let boot = path.join("boot");
    fits(&boot, &boot.display().to_string(), needed, freed)?;
    // systemd-boot reads copies on the ESP, which must hold them too.
    if path == Path::new("/") {
        let physical = Path::new(crate::sysroot::PHYSICAL_ROOT);
        crate::esp::with_esp(physical, |esp| fits(esp, "the ESP", needed, freed))?;
    }
    Ok(())
}

/// Refuse when the filesystem of `dir` cannot take `needed` bytes once `freed` are freed.
fn fits(dir: &Path, name: &str, needed: u64, freed: u64) -> Result<()> {
    use osbuild_core::progress::human_bytes;
    let fs = rustix::fs::statvfs(dir)
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    let room = free + freed;
    if needed + SLACK > room {
        anyhow::bail!(
            "{name} has no room for the new kernel and initramfs: they need {}, and {} is \
             free ({} free now, {} once old deployments are pruned); free {} more (remove a \
             pinned deployment with `ostree admin undeploy`, or unused files), then retry",
            human_bytes(needed),
            human_bytes(room),
            human_bytes(free),
            human_bytes(freed),
            human_bytes(needed + SLACK - room),
        );
    }
    Ok(())
}
