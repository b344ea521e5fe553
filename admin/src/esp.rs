//! systemd-boot's menu on the EFI system partition, kept in step with libostree's boot
//! entries: by make-image into a staging directory, and on the device after every deploy
//! and every finalized staged deploy (the same hooks as GRUB's generated menu, see
//! [`crate::device`]).
//!
//! systemd-boot reads entries only from a FAT partition (the ESP), while libostree 2022.7
//! keeps `/boot` on the root filesystem. [`sync`] mirrors the sysroot's
//! `/boot/loader/entries/*.conf` and the kernels and initramfs images they name onto the
//! ESP, in an order chosen so that a power cut at any point leaves a menu that boots:
//!
//! 1. **Boot links** in the sysroot: libostree's entries say
//!    `ostree=/ostree/boot.N/OS/BOOTCSUM/SERIAL`, naming the boot version N that every
//!    deploy flips, and libostree deletes the old `boot.N` right after it swaps
//!    `/boot/loader`. An ESP entry naming it would stop booting the moment the next deploy
//!    is written. So each ESP entry names a link that stays while the entry does:
//!    `/ostree/boot-0/OS/COMMIT/DEPLOYSERIAL -> ../../../deploy/OS/deploy/COMMIT.DEPLOYSERIAL`.
//!    Its odd name is forced by ostree 2022.7: `ostree-prepare-root` only needs `ostree=`
//!    to be a symbolic link (it `realpath`s it), but `ostree-system-generator` takes the
//!    stateroot for `var.mount` from `ostree=` with the regex `^/ostree/boot.[01]/([^/]+)/`
//!    (an unescaped dot), and later releases parse all of it with
//!    `^/ostree/boot.([01])/([^/]+)/([^/]+)/([0-9]+)$`. `boot-0` matches both and is not a
//!    name libostree uses (`boot.0`, `boot.1`, `boot.N.M`), nor removes. libostree finds
//!    the booted deployment by the device and inode of `/`, not by the karg
//!    (`ostree-sysroot.c`), so `ostree admin status` and `upgrade` are unaffected.
//! 2. **Kernels and initramfs images** under `/ostree/OS-BOOTCSUM/` on the ESP: the
//!    directory name is the checksum of its content, so a new kernel is a new directory.
//!    Each file is copied to a temporary name, synced, and renamed into place.
//! 3. **Entries** under `/loader/entries/`, one file per deployment
//!    (`osbuild-OS-COMMIT-DEPLOYSERIAL.conf`), each written to a temporary name, synced
//!    and renamed; then `/loader/loader.conf`.
//! 4. Stale entries are removed, then unreferenced kernel directories, then stale boot
//!    links: whatever an entry names is removed only after the entry.
//!
//! The result is fail-safe, not atomic with libostree's `/boot/loader` swap. Between the
//! swap and the end of the sync the ESP shows the previous menu: its default entry is the
//! previous default deployment, which libostree keeps (as the booted or rollback
//! deployment) except when it was explicitly undeployed; entries of deployments that
//! libostree has already pruned fail in the initramfs and the menu offers the others. The
//! device also syncs at every boot, so an interrupted sync is completed by the next boot.
//! The ordering holds file by file; FAT itself has no journal, so a cut in the middle of
//! one rename or removal can leave the ESP needing `fsck.vfat` (systemd-boot still reads
//! it; the entries and kernels it names were complete before their names appeared).
//!
//! Order: every entry carries `sort-key osbuild` and libostree's `version` (highest for the
//! default deployment); systemd-boot sorts entries with the same sort key by version,
//! newest first, and boots the first.

use crate::bootmenu::boot_relative;
use crate::durable::{replace, sync_dir, TMP_SUFFIX};
use anyhow::{Context, Result};
use osbuild_core::cmd;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the boot links live in the sysroot (see the module documentation for the name).
pub const BOOT_LINKS: &str = "ostree/boot-0";
/// The file in the sysroot's `/boot` that says the device boots systemd-boot from the ESP
/// with this PARTUUID (`PARTUUID=…`): written by make-image, read by the device's hook.
pub const MARKER: &str = "boot/osbuild-systemd-boot";
/// The sort key of every entry osbuild writes.
pub const SORT_KEY: &str = "osbuild";
/// Only entries whose file names start with this are osbuild's (and removed when stale).
const ENTRY_PREFIX: &str = "osbuild-";
/// systemd-boot's configuration: a short menu on the serial console too, no editor.
pub const LOADER_CONF: &str = "# Written by osbuild: the entries follow ostree's deployments.\n\
timeout 3\nconsole-mode keep\neditor no\n";

/// A libostree boot entry as it goes onto the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspEntry {
    /// The file name under `/loader/entries/` on the ESP.
    pub file_name: String,
    /// Its text.
    pub text: String,
    /// The kernel and initramfs files it names, relative to the ESP's (and `/boot`'s) root.
    pub files: Vec<String>,
    /// The boot link it names, relative to the sysroot, and the link's target.
    pub link: (String, String),
    /// The deployment it boots, `COMMIT.SERIAL`.
    pub deployment: String,
    /// libostree's `version`: the default deployment's is the highest.
    pub version: u64,
}

/// One step of a sync, in the order [`plan`] gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the boot link (sysroot-relative path) pointing at the target.
    Link(String, String),
    /// Copy a kernel or initramfs from the sysroot's `/boot` to the same path on the ESP.
    Copy(String),
    /// Write an entry file (ESP-relative path, text).
    Write(String, String),
    /// Remove a file from the ESP (a stale entry or leftover temporary file).
    RemoveFile(String),
    /// Remove a directory of kernels from the ESP.
    RemoveDir(String),
    /// Remove a boot link from the sysroot.
    Unlink(String),
}

/// The deployment the entry's `ostree=` names: (stateroot, commit, deploy serial), found
/// by resolving libostree's boot link in the sysroot.
fn deployment_of(sysroot: &Path, bootlink: &str) -> Result<(String, String, String)> {
    let link = sysroot.join(bootlink.trim_start_matches('/'));
    let target =
        fs::canonicalize(&link).with_context(|| format!("resolving {}", link.display()))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a deployment", target.display()))?;
    let os = target
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a deployment", target.display()))?;
    let (commit, serial) = name
        .rsplit_once('.')
        .with_context(|| format!("{} is not a deployment (COMMIT.SERIAL)", target.display()))?;
    Ok((os.to_string(), commit.to_string(), serial.to_string()))
}

/// The ESP entry for libostree's entry `text` in `sysroot`.
pub fn esp_entry(sysroot: &Path, text: &str) -> Result<EspEntry> {
    let mut files = Vec::new();
    let mut out = String::new();
    let mut link = None;
    let mut name = None;
    let mut deployment = None;
    let mut version = 0;
    for line in text.lines() {
        let trimmed = line.trim();
        let (key, value) = trimmed
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .unwrap_or((trimmed, ""));
        match key {
            "linux" | "initrd" | "devicetree" => {
                let rel = boot_relative(value).to_string();
                out.push_str(&format!("{key} /{rel}\n"));
                files.push(rel);
            }
            "options" => {
                let mut args = Vec::new();
                for arg in value.split_whitespace() {
                    match arg.strip_prefix("ostree=") {
                        Some(bootlink) => {
                            let (os, commit, serial) = deployment_of(sysroot, bootlink)?;
                            let path = format!("{BOOT_LINKS}/{os}/{commit}/{serial}");
                            let target = format!("../../../deploy/{os}/deploy/{commit}.{serial}");
                            args.push(format!("ostree=/{path}"));
                            name = Some(format!("{ENTRY_PREFIX}{os}-{commit}-{serial}.conf"));
                            deployment = Some(format!("{commit}.{serial}"));
                            link = Some((path, target));
                        }
                        None => args.push(arg.to_string()),
                    }
                }
                out.push_str(&format!("options {}\n", args.join(" ")));
            }
            "sort-key" | "" => {}
            "version" => {
                version = value.parse().unwrap_or(0);
                out.push_str(trimmed);
                out.push('\n');
            }
            _ => {
                out.push_str(trimmed);
                out.push('\n');
            }
        }
    }
    out.push_str(&format!("sort-key {SORT_KEY}\n"));
    let (Some(link), Some(file_name), Some(deployment)) = (link, name, deployment) else {
        anyhow::bail!("the entry has no ostree= kernel argument");
    };
    anyhow::ensure!(!files.is_empty(), "the entry has no `linux` line");
    Ok(EspEntry {
        file_name,
        text: out,
        files,
        link,
        deployment,
        version,
    })
}

/// The ESP entries for the sysroot's current libostree entries.
pub fn entries(sysroot: &Path) -> Result<Vec<EspEntry>> {
    let dir = sysroot.join("boot/loader/entries");
    let mut found = Vec::new();
    for (path, text) in crate::bootmenu::entry_files(sysroot)? {
        found.push(esp_entry(sysroot, &text).with_context(|| format!("{}", path.display()))?);
    }
    found.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    anyhow::ensure!(
        !found.is_empty(),
        "{} has no boot entries: refusing to empty the boot menu",
        dir.display()
    );
    Ok(found)
}

/// Names in `dir`, or none when it does not exist.
fn names(dir: &Path) -> Result<Vec<String>> {
    match fs::read_dir(dir) {
        Ok(items) => {
            let mut out = Vec::new();
            for item in items {
                let item = item.with_context(|| format!("reading {}", dir.display()))?;
                out.push(item.file_name().to_string_lossy().into_owned());
            }
            out.sort();
            Ok(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Whether `esp/rel` already holds `src`'s content: kernel directories are named by the
/// checksum of their content and files only ever appear complete (renamed into place), so
/// the size tells a complete copy from none.
fn copied(src: &Path, dest: &Path) -> bool {
    match (fs::metadata(src), fs::metadata(dest)) {
        (Ok(s), Ok(d)) => s.len() == d.len(),
        _ => false,
    }
}

/// An entry file's name without systemd-boot's boot counter (`NAME+LEFT[-DONE].conf`),
/// and the tries left when it has one.
pub fn split_counter(file_name: &str) -> (String, Option<u32>) {
    let Some(stem) = file_name.strip_suffix(".conf") else {
        return (file_name.to_string(), None);
    };
    if let Some((base, counter)) = stem.rsplit_once('+') {
        let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
        if let (Ok(left), Ok(_)) = (left.parse::<u32>(), done.parse::<u32>()) {
            return (format!("{base}.conf"), Some(left));
        }
    }
    (file_name.to_string(), None)
}

/// The ESP's entry files by their name without a counter.
fn entry_names(esp: &Path) -> Result<BTreeMap<String, String>> {
    Ok(names(&esp.join("loader/entries"))?
        .into_iter()
        .filter(|n| n.starts_with(ENTRY_PREFIX) && n.ends_with(".conf"))
        .map(|n| (split_counter(&n).0, n))
        .collect())
}

/// How an entry's trial is decided: the running deployment (None off a device, where
/// nothing goes on trial) and the tries a new default gets.
#[derive(Debug, Clone, Default)]
pub struct Counting {
    /// The running deployment, `COMMIT.SERIAL`.
    pub booted: Option<String>,
    /// Tries for a new default deployment.
    pub tries: u32,
}

/// The steps that bring `esp` in line with the sysroot's entries, new before old. A
/// default deployment that is not the running one gets its first entry with
/// systemd-boot's boot counter (`+TRIES`), which systemd-boot counts down at each boot
/// and osbuild removes once a boot passes its health checks (crate::fallback); an entry
/// keeps its counter, whatever its count, while its deployment stays.
pub fn plan(sysroot: &Path, esp: &Path) -> Result<Vec<Step>> {
    plan_counting(sysroot, esp, &Counting::default())
}

/// [`plan`], with the trial decided by `counting`.
pub fn plan_counting(sysroot: &Path, esp: &Path, counting: &Counting) -> Result<Vec<Step>> {
    let wanted = entries(sysroot)?;
    let existing = entry_names(esp)?;
    let default = wanted
        .iter()
        .max_by_key(|e| e.version)
        .map(|e| e.deployment.clone());
    let target_name = |e: &EspEntry| -> String {
        if let Some(name) = existing.get(&e.file_name) {
            return name.clone();
        }
        let on_trial = counting.booted.is_some()
            && default.as_ref() == Some(&e.deployment)
            && counting.booted.as_ref() != Some(&e.deployment);
        match (on_trial, e.file_name.strip_suffix(".conf")) {
            (true, Some(stem)) => format!("{stem}+{}.conf", counting.tries.max(1)),
            _ => e.file_name.clone(),
        }
    };
    let mut steps = Vec::new();
    // 1. Boot links, so that every new entry's ostree= exists before the entry.
    for e in &wanted {
        let (path, target) = &e.link;
        let current = fs::read_link(sysroot.join(path)).ok();
        if current.as_deref() != Some(Path::new(target)) {
            steps.push(Step::Link(path.clone(), target.clone()));
        }
    }
    // 2. Kernels and initramfs images.
    let mut files = BTreeSet::new();
    for e in &wanted {
        files.extend(e.files.iter().cloned());
    }
    for f in &files {
        if !copied(&sysroot.join("boot").join(f), &esp.join(f)) {
            steps.push(Step::Copy(f.clone()));
        }
    }
    // 3. Entries, then the loader's config.
    for e in &wanted {
        let rel = format!("loader/entries/{}", target_name(e));
        if fs::read_to_string(esp.join(&rel)).ok().as_deref() != Some(e.text.as_str()) {
            steps.push(Step::Write(rel, e.text.clone()));
        }
    }
    if fs::read_to_string(esp.join("loader/loader.conf"))
        .ok()
        .as_deref()
        != Some(LOADER_CONF)
    {
        steps.push(Step::Write(
            "loader/loader.conf".into(),
            LOADER_CONF.to_string(),
        ));
    }
    // 4. Stale entries, then kernels no entry names, then boot links no entry names.
    let keep: BTreeSet<&str> = wanted.iter().map(|e| e.file_name.as_str()).collect();
    for name in names(&esp.join("loader/entries"))? {
        let ours = name.starts_with(ENTRY_PREFIX) && name.ends_with(".conf");
        let base = split_counter(&name).0;
        if (ours && !keep.contains(base.as_str())) || name.ends_with(TMP_SUFFIX) {
            steps.push(Step::RemoveFile(format!("loader/entries/{name}")));
        }
    }
    let dirs: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    for name in names(&esp.join("ostree"))? {
        let dir = format!("ostree/{name}");
        if !dirs.contains(&dir) {
            steps.push(Step::RemoveDir(dir));
        } else {
            for file in names(&esp.join(&dir))? {
                let rel = format!("{dir}/{file}");
                if !files.contains(&rel) {
                    steps.push(Step::RemoveFile(rel));
                }
            }
        }
    }
    let links: BTreeSet<&str> = wanted.iter().map(|e| e.link.0.as_str()).collect();
    for os in names(&sysroot.join(BOOT_LINKS))? {
        for commit in names(&sysroot.join(BOOT_LINKS).join(&os))? {
            for serial in names(&sysroot.join(BOOT_LINKS).join(&os).join(&commit))? {
                let path = format!("{BOOT_LINKS}/{os}/{commit}/{serial}");
                if !links.contains(path.as_str()) {
                    steps.push(Step::Unlink(path));
                }
            }
        }
    }
    Ok(steps)
}

/// Do one step.
pub fn apply(sysroot: &Path, esp: &Path, step: &Step) -> Result<()> {
    match step {
        Step::Link(path, target) => {
            let link = sysroot.join(path);
            let dir = link.parent().context("a link has a parent")?;
            let mut tmp = link.as_os_str().to_owned();
            tmp.push(TMP_SUFFIX);
            let tmp = PathBuf::from(tmp);
            (|| -> std::io::Result<()> {
                fs::create_dir_all(dir)?;
                let _ = fs::remove_file(&tmp);
                symlink(target, &tmp)?;
                fs::rename(&tmp, &link)?;
                sync_dir(dir)
            })()
            .with_context(|| format!("linking {} to {target}", link.display()))
        }
        Step::Copy(rel) => {
            let src = sysroot.join("boot").join(rel);
            let mut from =
                File::open(&src).with_context(|| format!("opening {}", src.display()))?;
            replace(&esp.join(rel), |to| {
                std::io::copy(&mut from, to)?;
                to.flush()
            })
        }
        Step::Write(rel, text) => replace(&esp.join(rel), |f| f.write_all(text.as_bytes())),
        Step::RemoveFile(rel) => {
            let path = esp.join(rel);
            fs::remove_file(&path)
                .and_then(|()| sync_dir(path.parent().unwrap_or(esp)))
                .with_context(|| format!("removing {}", path.display()))
        }
        Step::RemoveDir(rel) => {
            let path = esp.join(rel);
            fs::remove_dir_all(&path)
                .and_then(|()| sync_dir(path.parent().unwrap_or(esp)))
                .with_context(|| format!("removing {}", path.display()))
        }
        Step::Unlink(path) => {
            let link = sysroot.join(path);
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            // Empty parents (the commit's, the stateroot's) go too.
            let mut dir = link.parent();
            while let Some(d) = dir {
                if d == sysroot.join(BOOT_LINKS) || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        }
    }
}

/// Bring the ESP mounted (or staged) at `esp` in line with the boot entries of the
/// sysroot at `sysroot`. Returns the number of steps taken (0: it already was).
pub fn sync(sysroot: &Path, esp: &Path) -> Result<usize> {
    sync_counting(sysroot, esp, &Counting::default())
}

/// [`sync`], putting a new default deployment on trial as `counting` says.
pub fn sync_counting(sysroot: &Path, esp: &Path, counting: &Counting) -> Result<usize> {
    let steps = plan_counting(sysroot, esp, counting)?;
    for step in &steps {
        apply(sysroot, esp, step)?;
    }
    Ok(steps.len())
}

/// The marker's text for an ESP with this PARTUUID.
pub fn marker_text(partuuid: &str) -> String {
    format!("PARTUUID={}\n", partuuid.to_ascii_lowercase())
}

/// The ESP's PARTUUID when the sysroot boots systemd-boot, from its marker.
pub fn marked_partuuid(sysroot: &Path) -> Result<Option<String>> {
    let path = sysroot.join(MARKER);
    match fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .find_map(|l| l.trim().strip_prefix("PARTUUID="))
            .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            .map(|u| Some(u.to_string()))
            .with_context(|| format!("{} names no PARTUUID", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The ESP mounted on a private directory under /run, unmounted when dropped.
#[derive(Debug)]
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn new(device: &Path) -> Result<Mounted> {
        let dir = PathBuf::from(format!("/run/osbuild-esp.{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mounted = cmd::run(
            Command::new("mount")
                .args(["-t", "vfat", "-o", "rw,nosuid,nodev,noexec,umask=0077"])
                .arg(device)
                .arg(&dir),
        );
        if let Err(e) = mounted {
            let _ = fs::remove_dir(&dir);
            return Err(e).with_context(|| format!("mounting {}", device.display()));
        }
        Ok(Mounted { dir })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = cmd::run(Command::new("umount").arg(&self.dir)) {
            eprintln!(
                "osbuild-boot-menu: unmounting {}: {e:#}",
                self.dir.display()
            );
            return;
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// On the device: when the sysroot boots systemd-boot, mount its ESP, sync it (a new
/// default deployment goes on trial), unmount. Returns the number of steps taken, or None
/// when the sysroot does not boot systemd-boot.
pub fn update(sysroot: &Path) -> Result<Option<usize>> {
    let counting = Counting {
        booted: crate::fallback::booted_id(sysroot),
        tries: crate::fallback::configured_tries(Path::new("/")),
    };
    with_esp(sysroot, |esp| {
        sync_counting(sysroot, esp, &counting).context("syncing the boot menu onto the ESP")
    })
}

/// On the device: run `f` on the ESP of a sysroot that boots systemd-boot, mounted for
/// the call; None when it does not boot systemd-boot.
pub fn with_esp<T>(sysroot: &Path, f: impl FnOnce(&Path) -> Result<T>) -> Result<Option<T>> {
    let Some(partuuid) = marked_partuuid(sysroot)? else {
        return Ok(None);
    };
    // The path unit and finalize-staged's ExecStop may both run it: one at a time.
    let lock_path = Path::new("/run/osbuild-boot-menu.lock");
    let lock =
        File::create(lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("locking {}", lock_path.display()))?;
    let device = Path::new("/dev/disk/by-partuuid").join(&partuuid);
    // At boot udev may not have made the link yet.
    for _ in 0..30 {
        if device.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let mounted = Mounted::new(&device)?;
    let result = f(&mounted.dir).with_context(|| format!("on the ESP {}", device.display()))?;
    drop(mounted);
    Ok(Some(result))
}

/// The entry file of `deployment` (`COMMIT.SERIAL`) on the mounted `esp`, with its
/// counter's tries left when it is on trial.
pub fn entry_of(esp: &Path, deployment: &str) -> Result<Option<(String, Option<u32>)>> {
    let suffix = format!("-{}.conf", deployment.replace('.', "-"));
    Ok(entry_names(esp)?
        .into_iter()
        .find(|(base, _)| base.ends_with(&suffix))
        .map(|(_, name)| {
            let left = split_counter(&name).1;
            (name, left)
        }))
}

/// End the trial of `deployment`'s entry on the mounted `esp`: drop its counter, as
/// systemd-bless-boot does (which needs EFI variables that TCG guests do not show).
pub fn bless(esp: &Path, deployment: &str) -> Result<bool> {
    let Some((name, Some(_))) = entry_of(esp, deployment)? else {
        return Ok(false);
    };
    let dir = esp.join("loader/entries");
    let plain = split_counter(&name).0;
    fs::rename(dir.join(&name), dir.join(&plain))
        .and_then(|()| sync_dir(&dir))
        .with_context(|| format!("renaming {name} to {plain} on the ESP"))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysroot as libostree lays it out, with deployments and their entries.
    struct Fake {
        dir: tempfile::TempDir,
    }

    /// (commit, deploy serial, bootcsum, kernel bytes)
    type Dep<'a> = (&'a str, u32, &'a str, &'a str);

    impl Fake {
        fn new() -> Fake {
            Fake {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        /// What libostree writes for `deps` (default first) at boot version `bootversion`:
        /// deployment directories, kernels, boot links, entries; and removes what is gone.
        fn deploy(&self, bootversion: u32, deps: &[Dep]) {
            let r = self.root();
            let old = 1 - bootversion;
            let _ = fs::remove_dir_all(r.join(format!("ostree/boot.{old}.0")));
            let _ = fs::remove_file(r.join(format!("ostree/boot.{old}")));
            let _ = fs::remove_dir_all(r.join("boot/ostree"));
            let _ = fs::remove_dir_all(r.join("boot/loader/entries"));
            let keep: Vec<String> = deps.iter().map(|(c, s, _, _)| format!("{c}.{s}")).collect();
            for name in names(&r.join("ostree/deploy/debian/deploy")).unwrap() {
                if !keep.contains(&name) {
                    fs::remove_dir_all(r.join("ostree/deploy/debian/deploy").join(name)).unwrap();
                }
            }
            fs::create_dir_all(r.join("boot/loader/entries")).unwrap();
            let n = deps.len();
            for (i, (commit, serial, bootcsum, kernel)) in deps.iter().enumerate() {
                fs::create_dir_all(
                    r.join(format!("ostree/deploy/debian/deploy/{commit}.{serial}")),
                )
                .unwrap();
                let kdir = r.join(format!("boot/ostree/debian-{bootcsum}"));
                fs::create_dir_all(&kdir).unwrap();
                fs::write(kdir.join("vmlinuz-6.1"), kernel).unwrap();
                fs::write(
                    kdir.join("initramfs-6.1.img"),
                    format!("initrd of {kernel}"),
                )
                .unwrap();
                let bootlink = format!("ostree/boot.{bootversion}.0/debian/{bootcsum}/{i}");
                fs::create_dir_all(r.join(&bootlink).parent().unwrap()).unwrap();
                symlink(
                    format!("../../../deploy/debian/deploy/{commit}.{serial}"),
                    r.join(&bootlink),
                )
                .unwrap();
                fs::write(
                    r.join(format!("boot/loader/entries/ostree-{}-debian.conf", n - i)),
                    format!(
                        "title Debian (ostree:{i})\nversion {}\n\
                         options root=LABEL=r rw ostree=/ostree/boot.{bootversion}/debian/{bootcsum}/{i}\n\
                         linux /boot/ostree/debian-{bootcsum}/vmlinuz-6.1\n\
                         initrd /boot/ostree/debian-{bootcsum}/initramfs-6.1.img\n",
                        n - i
                    ),
                )
                .unwrap();
            }
            let _ = fs::remove_file(r.join(format!("ostree/boot.{bootversion}")));
            symlink(
                format!("boot.{bootversion}.0"),
                r.join(format!("ostree/boot.{bootversion}")),
            )
            .unwrap();
        }
    }

    #[test]
    fn a_new_default_goes_on_trial_and_keeps_its_counter() {
        let f = Fake::new();
        let esp = tempfile::tempdir().unwrap();
        let (c1, c2) = ("a".repeat(64), "b".repeat(64));
        f.deploy(1, &[(&c1, 0, "k1", "kernel 1")]);
        let booted = Counting {
            booted: Some(format!("{c1}.0")),
            tries: 3,
        };
        // The running deployment is not on trial, and nothing is off a device.
        sync_counting(f.root(), esp.path(), &booted).unwrap();
        assert_eq!(
            entry_of(esp.path(), &format!("{c1}.0")).unwrap().unwrap().1,
            None
        );
        // The upgrade's entry gets the counter; systemd-boot counts it down by renaming.
        f.deploy(0, &[(&c2, 0, "k2", "kernel 2"), (&c1, 0, "k1", "kernel 1")]);
        sync_counting(f.root(), esp.path(), &booted).unwrap();
        let (name, left) = entry_of(esp.path(), &format!("{c2}.0")).unwrap().unwrap();
        assert_eq!(
            (name.as_str(), left),
            (format!("osbuild-debian-{c2}-0+3.conf").as_str(), Some(3))
        );
        let dir = esp.path().join("loader/entries");
        fs::rename(
            dir.join(&name),
            dir.join(format!("osbuild-debian-{c2}-0+1-2.conf")),
        )
        .unwrap();
        // A later sync (every boot) keeps the count; blessing drops it.
        assert_eq!(
            plan_counting(f.root(), esp.path(), &booted).unwrap(),
            vec![]
        );
        assert_eq!(
            entry_of(esp.path(), &format!("{c2}.0")).unwrap().unwrap().1,
            Some(1)
        );
        assert!(bless(esp.path(), &format!("{c2}.0")).unwrap());
        assert!(!bless(esp.path(), &format!("{c2}.0")).unwrap());
        assert_eq!(
            entry_of(esp.path(), &format!("{c2}.0")).unwrap().unwrap().0,
            format!("osbuild-debian-{c2}-0.conf")
        );
        check_bootable(f.root(), esp.path());
        assert_eq!(split_counter("x+0-3.conf"), ("x.conf".to_string(), Some(0)));
        assert_eq!(split_counter("x+a.conf"), ("x+a.conf".to_string(), None));
    }

    /// The entries on the ESP: (file name, version, options, linux, initrd).
    fn esp_entries(esp: &Path) -> Vec<(String, u64, String, String, String)> {
        let mut out = Vec::new();
        for name in names(&esp.join("loader/entries")).unwrap() {
            if !name.ends_with(".conf") {
                continue;
            }
            let text = fs::read_to_string(esp.join("loader/entries").join(&name)).unwrap();
            let get = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} ")))
                    .unwrap_or_default()
                    .to_string()
            };
            assert_eq!(get("sort-key"), SORT_KEY, "{text}");
            out.push((
                name,
                get("version").parse().unwrap(),
                get("options"),
                get("linux"),
                get("initrd"),
            ));
        }
        // systemd-boot's order: same sort key, version descending.
        out.sort_by_key(|e| std::cmp::Reverse(e.1));
        out
    }

    /// Every ESP entry's kernel and initramfs exist on the ESP and its ostree= is a link in
    /// the sysroot; the default (first) entry's link resolves to a deployment.
    fn check_bootable(sysroot: &Path, esp: &Path) {
        let entries = esp_entries(esp);
        assert!(!entries.is_empty(), "the ESP has no entries");
        for (i, (name, _, options, linux, initrd)) in entries.iter().enumerate() {
            for f in [linux, initrd] {
                assert!(esp.join(f.trim_start_matches('/')).is_file(), "{name}: {f}");
            }
            let karg = options
                .split(' ')
                .find_map(|a| a.strip_prefix("ostree="))
                .unwrap();
            assert!(karg.starts_with("/ostree/boot-0/debian/"), "{karg}");
            let link = sysroot.join(karg.trim_start_matches('/'));
            assert!(
                fs::symlink_metadata(&link)
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{name}: {karg}"
            );
            if i == 0 {
                assert!(link.is_dir(), "the default entry {name} does not boot");
            }
        }
    }

    const A: Dep = ("aaaa", 0, "k1", "kernel one");
    const B: Dep = ("bbbb", 0, "k1", "kernel one");
    const C: Dep = ("cccc", 0, "k2", "kernel two");

    #[test]
    fn entries_are_rewritten_for_the_esp() {
        let f = Fake::new();
        f.deploy(1, &[A]);
        let e = entries(f.root()).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].file_name, "osbuild-debian-aaaa-0.conf");
        assert_eq!(
            e[0].text,
            "title Debian (ostree:0)\nversion 1\n\
             options root=LABEL=r rw ostree=/ostree/boot-0/debian/aaaa/0\n\
             linux /ostree/debian-k1/vmlinuz-6.1\n\
             initrd /ostree/debian-k1/initramfs-6.1.img\nsort-key osbuild\n"
        );
        assert_eq!(
            e[0].link,
            (
                "ostree/boot-0/debian/aaaa/0".to_string(),
                "../../../deploy/debian/deploy/aaaa.0".to_string()
            )
        );
        // Both regexes ostree applies to ostree= accept the link's path.
        let karg = "/ostree/boot-0/debian/aaaa/0";
        let (head, rest) = karg.split_at("/ostree/boot".len());
        assert!(head == "/ostree/boot" && rest.as_bytes()[1] == b'0' && &rest[2..3] == "/");
    }

    #[test]
    fn sync_mirrors_then_is_idempotent_and_removes_stale() {
        let f = Fake::new();
        let esp = tempfile::tempdir().unwrap();
        f.deploy(1, &[A]);
        assert!(sync(f.root(), esp.path()).unwrap() > 0);
        check_bootable(f.root(), esp.path());
        let link = f.root().join("ostree/boot-0/debian/aaaa/0");
        assert_eq!(
            fs::canonicalize(&link).unwrap(),
            fs::canonicalize(f.root().join("ostree/deploy/debian/deploy/aaaa.0")).unwrap()
        );
        assert_eq!(
            fs::read_to_string(esp.path().join("loader/loader.conf")).unwrap(),
            LOADER_CONF
        );
        // Nothing to do the second time.
        assert_eq!(plan(f.root(), esp.path()).unwrap(), Vec::new());
        assert_eq!(sync(f.root(), esp.path()).unwrap(), 0);

        // An upgrade to C (new kernel), A kept as rollback; then B replaces both.
        f.deploy(0, &[C, A]);
        sync(f.root(), esp.path()).unwrap();
        check_bootable(f.root(), esp.path());
        let e = esp_entries(esp.path());
        assert_eq!(e[0].0, "osbuild-debian-cccc-0.conf");
        assert_eq!(e[1].0, "osbuild-debian-aaaa-0.conf");
        assert!(esp.path().join("ostree/debian-k2/vmlinuz-6.1").is_file());

        f.deploy(1, &[B]);
        sync(f.root(), esp.path()).unwrap();
        check_bootable(f.root(), esp.path());
        assert_eq!(
            names(&esp.path().join("ostree")).unwrap(),
            vec!["debian-k1"]
        );
        assert_eq!(
            names(&esp.path().join("loader/entries")).unwrap(),
            vec!["osbuild-debian-bbbb-0.conf"]
        );
        assert_eq!(
            names(&f.root().join(BOOT_LINKS).join("debian")).unwrap(),
            vec!["bbbb"]
        );
        // Entries that are not osbuild's are left alone.
        fs::write(esp.path().join("loader/entries/other.conf"), "title x\n").unwrap();
        assert_eq!(sync(f.root(), esp.path()).unwrap(), 0);
    }

    #[test]
    fn new_files_come_before_old_ones_are_removed() {
        let f = Fake::new();
        let esp = tempfile::tempdir().unwrap();
        f.deploy(1, &[A]);
        sync(f.root(), esp.path()).unwrap();
        f.deploy(0, &[C]);
        let steps = plan(f.root(), esp.path()).unwrap();
        let pos = |pred: &dyn Fn(&Step) -> bool| steps.iter().position(pred).unwrap();
        let link = pos(&|s| matches!(s, Step::Link(..)));
        let copy = pos(&|s| matches!(s, Step::Copy(p) if p.contains("k2")));
        let write = pos(&|s| matches!(s, Step::Write(p, _) if p.contains("cccc")));
        let remove = pos(&|s| matches!(s, Step::RemoveFile(p) if p.contains("aaaa")));
        let rmdir = pos(&|s| matches!(s, Step::RemoveDir(p) if p.contains("k1")));
        let unlink = pos(&|s| matches!(s, Step::Unlink(p) if p.contains("aaaa")));
        assert!(link < write && copy < write, "{steps:#?}");
        assert!(
            write < remove && remove < rmdir && rmdir < unlink,
            "{steps:#?}"
        );
    }

    #[test]
    fn an_interrupted_sync_leaves_a_bootable_menu() {
        // For every step of every transition: stop after it (a power cut), check, and let
        // the next sync finish the job. Each deploy keeps the previous default, as
        // libostree keeps the booted deployment; what it prunes is gone before any hook
        // runs, so only the default entry must boot at every point.
        let transitions: &[(u32, &[Dep])] = &[(0, &[C, A]), (1, &[B, C]), (0, &[A, B])];
        for cut in 0.. {
            let f = Fake::new();
            let esp = tempfile::tempdir().unwrap();
            f.deploy(1, &[A]);
            sync(f.root(), esp.path()).unwrap();
            // Steps are counted over all transitions: `cut` picks one of them.
            let mut before = 0;
            let mut cut_somewhere = false;
            for (bootversion, deps) in transitions {
                f.deploy(*bootversion, deps);
                let steps = plan(f.root(), esp.path()).unwrap();
                if !cut_somewhere && cut < before + steps.len() {
                    for step in &steps[..=cut - before] {
                        apply(f.root(), esp.path(), step).unwrap();
                        if let Step::Copy(rel) = step {
                            // A copy cut short leaves its temporary file behind.
                            fs::write(
                                esp.path().join(format!("{rel}.part{TMP_SUFFIX}")),
                                "partial",
                            )
                            .unwrap();
                        }
                    }
                    check_bootable(f.root(), esp.path());
                    cut_somewhere = true;
                }
                before += steps.len();
                sync(f.root(), esp.path()).unwrap();
                check_bootable(f.root(), esp.path());
                assert_eq!(plan(f.root(), esp.path()).unwrap(), Vec::new());
            }
            if !cut_somewhere {
                assert!(cut > 10, "too few steps to test: {cut}");
                break;
            }
        }
    }

    #[test]
    fn marker_names_the_partuuid() {
        let f = Fake::new();
        assert_eq!(marked_partuuid(f.root()).unwrap(), None);
        fs::create_dir_all(f.root().join("boot")).unwrap();
        fs::write(
            f.root().join(MARKER),
            marker_text("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
        )
        .unwrap();
        assert_eq!(
            marked_partuuid(f.root()).unwrap().as_deref(),
            Some("0fc63daf-8483-4772-8e79-3d69d8477de4")
        );
        fs::write(f.root().join(MARKER), "PARTUUID=../../etc\n").unwrap();
        assert!(marked_partuuid(f.root()).is_err());
    }
}
