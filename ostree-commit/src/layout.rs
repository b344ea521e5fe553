//! Conversion of a plain root filesystem to the layout OSTree deploys, and the checks that
//! refuse a tree that could not boot.
//!
//! The layout follows what libostree and ostree-prepare-root expect: a read-only /usr with
//! the kernel in /usr/lib/modules/$kver, configuration defaults in /usr/etc, and an empty
//! /var that systemd-tmpfiles seeds on the device from /usr/share/factory/var.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Where the content of /var is kept in the commit, to be copied into /var on the device.
pub(crate) const FACTORY_VAR: &str = "usr/share/factory/var";
/// The tmpfiles.d file that seeds /var.
pub(crate) const TMPFILES_CONF: &str = "usr/lib/tmpfiles.d/osbuild-var.conf";
/// Package state lives in /usr so that it always matches the deployed tree.
pub(crate) const DPKG_STATE: &str = "usr/lib/sysimage/dpkg";

/// Directories in / that become links into /var: (link, target in var).
const VAR_LINKS: &[(&str, &str)] = &[
    ("home", "home"),
    ("root", "roothome"),
    ("opt", "opt"),
    ("srv", "srv"),
    ("mnt", "mnt"),
    ("usr/local", "usrlocal"),
];

/// Directories that `ostree admin os-init` already creates in the stateroot's /var: tmpfiles
/// `C` skips an existing directory, so their children get rules of their own.
const VAR_PRECREATED: &[&str] = &["lib", "log"];
/// Entries of /var that must never be seeded from the image.
const VAR_SKIP: &[&str] = &["tmp", "run", "lock"];

/// Why a tree cannot be committed as a bootable OSTree system.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The path does not exist.
    #[error("tree {0} does not exist")]
    Missing(PathBuf),
    /// The path is a file or something else that is not a directory.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// No `usr/lib/modules/<kver>/vmlinuz`.
    #[error("tree {tree} has no kernel: expected usr/lib/modules/<kver>/vmlinuz (run `osbuild bootstrap` or convert the tree to the OSTree layout)")]
    NoKernel {
        /// The tree checked.
        tree: PathBuf,
    },
    /// A kernel without its initramfs beside it.
    #[error("tree {tree} has no initramfs: expected {expected}")]
    NoInitramfs {
        /// The tree checked.
        tree: PathBuf,
        /// The initramfs path the kernel needs, relative to the tree.
        expected: String,
    },
    /// Neither `usr/lib/os-release` nor `usr/etc/os-release`.
    #[error("tree {tree} has no os-release: expected usr/lib/os-release")]
    NoOsRelease {
        /// The tree checked.
        tree: PathBuf,
    },
    /// A real `/etc`: the tree was not converted.
    #[error("tree {tree} has a top-level /etc: OSTree trees keep it in /usr/etc (the tree was not converted to the OSTree layout)")]
    EtcNotInUsr {
        /// The tree checked.
        tree: PathBuf,
    },
}

/// What validation learned about a bootable tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeInfo {
    /// The kernel version: the name of the directory under /usr/lib/modules.
    pub kver: String,
}

/// Check that `tree` is an OSTree-ready bootable tree.
pub fn validate(tree: &Path) -> Result<TreeInfo, TreeError> {
    if !tree.exists() {
        return Err(TreeError::Missing(tree.to_path_buf()));
    }
    if !tree.is_dir() {
        return Err(TreeError::NotADirectory(tree.to_path_buf()));
    }
    if tree.join("etc").is_dir() && !tree.join("etc").is_symlink() {
        return Err(TreeError::EtcNotInUsr {
            tree: tree.to_path_buf(),
        });
    }
    let kver = find_kernels(tree)
        .into_iter()
        .find(|k| {
            tree.join("usr/lib/modules")
                .join(k)
                .join("vmlinuz")
                .is_file()
        })
        .ok_or_else(|| TreeError::NoKernel {
            tree: tree.to_path_buf(),
        })?;
    let initramfs = format!("usr/lib/modules/{kver}/initramfs.img");
    if !tree.join(&initramfs).is_file() {
        return Err(TreeError::NoInitramfs {
            tree: tree.to_path_buf(),
            expected: initramfs,
        });
    }
    let has_os_release = ["usr/lib/os-release", "usr/etc/os-release"]
        .iter()
        .any(|p| tree.join(p).exists());
    if !has_os_release {
        return Err(TreeError::NoOsRelease {
            tree: tree.to_path_buf(),
        });
    }
    Ok(TreeInfo { kver })
}

/// Kernel versions present in the tree, sorted.
fn find_kernels(tree: &Path) -> Vec<String> {
    let mut kvers: Vec<String> = fs::read_dir(tree.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kvers.sort();
    kvers
}

/// Convert a plain (Debian-style, merged-/usr) root filesystem in place to the OSTree
/// layout, then validate it.
pub fn convert(root: &Path) -> Result<TreeInfo> {
    move_kernels(root).context("moving the kernel into /usr/lib/modules")?;
    move_etc(root).context("moving /etc to /usr/etc")?;
    move_var(root).context("moving /var into the factory copy")?;
    link_into_var(root).context("linking state directories into /var")?;
    // The rules are read off the converted tree, not off what this run moved, so converting
    // an already converted tree writes the same file again.
    let rules = seed_rules(root).context("listing the factory copy of /var")?;
    write_tmpfiles(root, &rules)?;
    setup_toplevel(root).context("creating the OSTree top-level directories")?;
    Ok(validate(root)?)
}

fn move_kernels(root: &Path) -> Result<()> {
    for kver in find_kernels(root) {
        let moddir = root.join("usr/lib/modules").join(&kver);
        let vmlinuz = root.join(format!("boot/vmlinuz-{kver}"));
        if vmlinuz.is_file() && !moddir.join("vmlinuz").exists() {
            rename(&vmlinuz, &moddir.join("vmlinuz"))?;
        }
        // A distro initramfs is only used if the tree brings no ostree-capable one.
        let initrd = root.join(format!("boot/initrd.img-{kver}"));
        if initrd.is_file() && !moddir.join("initramfs.img").exists() {
            rename(&initrd, &moddir.join("initramfs.img"))?;
        }
    }
    // Debian's convenience links and the rest of /boot (System.map, config) are not used:
    // ostree populates /boot on the device.
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let p = root.join(link);
        if p.is_symlink() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    empty_dir(&root.join("boot"))
}

fn move_etc(root: &Path) -> Result<()> {
    let etc = root.join("etc");
    let usr_etc = root.join("usr/etc");
    if etc.is_dir() && !etc.is_symlink() {
        if usr_etc.exists() {
            anyhow::bail!("both /etc and /usr/etc exist in {}", root.display());
        }
        rename(&etc, &usr_etc)?;
    }
    Ok(())
}

/// Move everything under /var to the factory copy (dpkg's database to /usr).
fn move_var(root: &Path) -> Result<()> {
    let var = root.join("var");
    let factory = root.join(FACTORY_VAR);
    fs::create_dir_all(&factory).with_context(|| format!("creating {}", factory.display()))?;
    if !var.is_dir() {
        fs::create_dir_all(&var).with_context(|| format!("creating {}", var.display()))?;
        return Ok(());
    }
    // dpkg's database must describe the /usr it lives beside, not a /var that survives upgrades.
    let dpkg = var.join("lib/dpkg");
    if dpkg.is_dir() && !dpkg.is_symlink() {
        let dest = root.join(DPKG_STATE);
        osbuild_core::fsutil::create_parent(&dest)?;
        rename(&dpkg, &dest)?;
    }
    for entry in sorted_entries(&var)? {
        let name = entry.file_name();
        if VAR_SKIP.iter().any(|s| name == *s) {
            continue;
        }
        if VAR_PRECREATED.iter().any(|s| name == *s) && entry.path().is_dir() {
            let dest = factory.join(&name);
            fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
            for child in sorted_entries(&entry.path())? {
                rename(&child.path(), &dest.join(child.file_name()))?;
            }
            continue;
        }
        rename(&entry.path(), &factory.join(&name))?;
    }
    empty_dir(&var)
}

/// The tmpfiles rules that recreate /var on the device from the factory copy: one per entry
/// (per child for the directories os-init precreates), and the link to dpkg's database.
fn seed_rules(root: &Path) -> Result<Vec<String>> {
    let factory = root.join(FACTORY_VAR);
    let mut rules = Vec::new();
    if root.join(DPKG_STATE).is_dir() {
        rules.push(format!("L /var/lib/dpkg - - - - /{DPKG_STATE}"));
    }
    for entry in sorted_entries(&factory)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if VAR_PRECREATED.contains(&name.as_str()) && entry.path().is_dir() {
            for child in sorted_entries(&entry.path())? {
                let rel = format!("{name}/{}", child.file_name().to_string_lossy());
                rules.push(seed_rule(&child.path(), &rel)?);
            }
        } else {
            rules.push(seed_rule(&entry.path(), &name)?);
        }
    }
    Ok(rules)
}

/// A tmpfiles rule that recreates `path` (relative to /var) on the device.
fn seed_rule(path: &Path, rel: &str) -> Result<String> {
    if path.is_symlink() {
        let target = fs::read_link(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(format!("L /var/{rel} - - - - {}", target.display()))
    } else {
        Ok(format!("C /var/{rel} - - - - /{FACTORY_VAR}/{rel}"))
    }
}

fn link_into_var(root: &Path) -> Result<()> {
    let factory = root.join(FACTORY_VAR);
    for (link, target) in VAR_LINKS {
        let path = root.join(link);
        let seed = factory.join(target);
        if path.is_dir() && !path.is_symlink() {
            if seed.is_dir() {
                // /var already had this directory (Debian ships /var/opt): merge into it.
                for child in sorted_entries(&path)? {
                    rename(&child.path(), &seed.join(child.file_name()))?;
                }
                fs::remove_dir(&path).with_context(|| format!("removing {}", path.display()))?;
            } else {
                rename(&path, &seed)?;
            }
        } else {
            if path.is_symlink() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
            fs::create_dir_all(&seed).with_context(|| format!("creating {}", seed.display()))?;
        }
        // Relative links, so they resolve inside the deployment wherever it is mounted.
        let depth = link.matches('/').count();
        let target_path = format!("{}var/{target}", "../".repeat(depth));
        symlink(&target_path, &path)
            .with_context(|| format!("linking {} to {target_path}", path.display()))?;
    }
    Ok(())
}

fn write_tmpfiles(root: &Path, rules: &[String]) -> Result<()> {
    let mut text = String::from(
        "# Generated by osbuild: seeds /var on the device from the image's factory copy.\n",
    );
    for rule in rules {
        let _ = writeln!(text, "{rule}");
    }
    let path = root.join(TMPFILES_CONF);
    osbuild_core::fsutil::create_parent(&path)?;
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn setup_toplevel(root: &Path) -> Result<()> {
    for dir in ["sysroot", "dev", "proc", "sys", "run", "boot"] {
        let p = root.join(dir);
        if p.is_symlink() || (p.exists() && !p.is_dir()) {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        empty_dir(&p)?;
    }
    for (link, target) in [("tmp", "sysroot/tmp"), ("ostree", "sysroot/ostree")] {
        let p = root.join(link);
        osbuild_core::fsutil::remove_all(&p)?;
        symlink(target, &p).with_context(|| format!("linking {} to {target}", p.display()))?;
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let mut entries = fs::read_dir(dir)
        .and_then(|d| d.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    Ok(entries)
}

fn empty_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in sorted_entries(dir)? {
        osbuild_core::fsutil::remove_all(&entry.path())?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny Debian-shaped tree: enough for the conversion, not for booting.
    fn debian_like(root: &Path) {
        for d in [
            "usr/lib/modules/6.1.0-test",
            "etc/systemd",
            "var/lib/dpkg/info",
            "var/lib/apt",
            "var/log/apt",
            "var/cache/apt",
            "var/tmp",
            "var/opt",
            "opt/vendor",
            "boot",
            "home",
            "root",
            "usr/local/bin",
            "dev",
            "tmp",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("boot/vmlinuz-6.1.0-test"), "kernel").unwrap();
        fs::write(root.join("boot/System.map-6.1.0-test"), "map").unwrap();
        fs::write(
            root.join("usr/lib/modules/6.1.0-test/initramfs.img"),
            "initramfs",
        )
        .unwrap();
        fs::write(root.join("usr/lib/os-release"), "ID=debian\n").unwrap();
        fs::write(root.join("etc/hostname"), "box\n").unwrap();
        fs::write(root.join("var/lib/dpkg/status"), "Package: x\n").unwrap();
        fs::write(root.join("var/log/apt/history.log"), "log").unwrap();
        fs::write(root.join("root/.bashrc"), "# rc").unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("boot/vmlinuz-6.1.0-test", root.join("vmlinuz")).unwrap();
    }

    #[test]
    fn converts_a_debian_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        debian_like(root);
        let info = convert(root).unwrap();
        assert_eq!(info.kver, "6.1.0-test");
        assert_eq!(
            fs::read_to_string(root.join("usr/lib/modules/6.1.0-test/vmlinuz")).unwrap(),
            "kernel"
        );
        assert_eq!(fs::read_dir(root.join("boot")).unwrap().count(), 0);
        assert!(!root.join("vmlinuz").exists() && !root.join("vmlinuz").is_symlink());
        assert_eq!(
            fs::read_to_string(root.join("usr/etc/hostname")).unwrap(),
            "box\n"
        );
        assert!(!root.join("etc").exists());
        assert_eq!(fs::read_dir(root.join("var")).unwrap().count(), 0);
        assert!(root.join(DPKG_STATE).join("status").is_file());
        assert_eq!(
            fs::read_link(root.join("home")).unwrap(),
            Path::new("var/home")
        );
        assert_eq!(
            fs::read_link(root.join("root")).unwrap(),
            Path::new("var/roothome")
        );
        assert_eq!(
            fs::read_link(root.join("usr/local")).unwrap(),
            Path::new("../var/usrlocal")
        );
        assert!(root.join(FACTORY_VAR).join("roothome/.bashrc").is_file());
        assert!(root.join(FACTORY_VAR).join("usrlocal/bin").is_dir());
        assert!(root.join(FACTORY_VAR).join("opt/vendor").is_dir());
        assert_eq!(
            fs::read_link(root.join("tmp")).unwrap(),
            Path::new("sysroot/tmp")
        );
        assert_eq!(
            fs::read_link(root.join("ostree")).unwrap(),
            Path::new("sysroot/ostree")
        );
        for d in ["sysroot", "dev", "proc", "sys", "run"] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        let rules = fs::read_to_string(root.join(TMPFILES_CONF)).unwrap();
        assert!(
            rules.contains("L /var/lib/dpkg - - - - /usr/lib/sysimage/dpkg"),
            "{rules}"
        );
        assert!(
            rules.contains("C /var/log/apt - - - - /usr/share/factory/var/log/apt"),
            "{rules}"
        );
        assert!(
            rules.contains("C /var/lib/apt - - - - /usr/share/factory/var/lib/apt"),
            "{rules}"
        );
        assert!(
            rules.contains("C /var/cache - - - - /usr/share/factory/var/cache"),
            "{rules}"
        );
        assert!(
            rules.contains("C /var/roothome - - - - /usr/share/factory/var/roothome"),
            "{rules}"
        );
        // os-init makes these; a C rule for them would be skipped on the device.
        assert!(!rules.contains("C /var/lib "), "{rules}");
        assert!(!rules.contains("/var/tmp"), "{rules}");
        assert!(!rules.contains("/var/run"), "{rules}");
        assert_eq!(rules.matches("C /var/opt ").count(), 1, "{rules}");
    }

    /// Every entry of a tree: its type, mode, and content or link target.
    fn snapshot(root: &Path) -> std::collections::BTreeMap<String, String> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = std::collections::BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mode = meta.permissions().mode();
            let what = if meta.file_type().is_symlink() {
                format!(
                    "link {mode:o} -> {}",
                    fs::read_link(&path).unwrap().display()
                )
            } else if meta.is_dir() {
                stack.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                format!("dir {mode:o}")
            } else {
                let content = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
                format!("file {mode:o} {content:?}")
            };
            out.insert(rel, what);
        }
        out
    }

    #[test]
    fn conversion_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        debian_like(dir.path());
        let first_info = convert(dir.path()).unwrap();
        let first = snapshot(dir.path());
        assert!(first.contains_key(TMPFILES_CONF), "{first:#?}");
        let second_info = convert(dir.path()).unwrap();
        let second = snapshot(dir.path());
        assert_eq!(first_info, second_info);
        // The whole tree, the tmpfiles rules included, is the same after a second run.
        for (path, first_entry) in &first {
            assert_eq!(Some(first_entry), second.get(path), "{path} changed");
        }
        assert_eq!(first.len(), second.len(), "entries were added");
    }

    #[test]
    fn refuses_unbootable_trees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(matches!(
            validate(&root.join("nope")),
            Err(TreeError::Missing(_))
        ));
        fs::create_dir_all(root.join("usr/lib/modules/6.1.0")).unwrap();
        let err = validate(root).unwrap_err();
        assert!(matches!(err, TreeError::NoKernel { .. }), "{err}");
        assert!(err.to_string().contains("vmlinuz"));
        fs::write(root.join("usr/lib/modules/6.1.0/vmlinuz"), "k").unwrap();
        let err = validate(root).unwrap_err();
        assert!(
            err.to_string()
                .contains("usr/lib/modules/6.1.0/initramfs.img"),
            "{err}"
        );
        fs::write(root.join("usr/lib/modules/6.1.0/initramfs.img"), "i").unwrap();
        assert!(matches!(validate(root), Err(TreeError::NoOsRelease { .. })));
        fs::write(root.join("usr/lib/os-release"), "ID=x").unwrap();
        fs::create_dir(root.join("etc")).unwrap();
        assert!(matches!(validate(root), Err(TreeError::EtcNotInUsr { .. })));
        fs::remove_dir(root.join("etc")).unwrap();
        assert_eq!(validate(root).unwrap().kver, "6.1.0");
    }
}
