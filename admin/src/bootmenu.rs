//! GRUB's boot menu, generated from the boot loader entries libostree writes on every
//! deploy (`/boot/loader/entries/*.conf`, Boot Loader Specification files).
//!
//! libostree 2022.7 keeps no GRUB menu itself without grub-mkconfig, and GRUB's syslinux
//! parser cannot read the syslinux config libostree writes (entry titles contain spaces,
//! and its fixed buffers overflow on ostree's long kernel paths). So the menu is
//! regenerated from the entries: by make-image, and on the device after every deploy and
//! every finalized staged deploy (a drop-in for `ostree-finalize-staged.service` and a
//! path unit on `/boot/loader`).
//!
//! The replacement is fail-safe, not atomic with libostree's `/boot/loader` link swap:
//! the new `grub.cfg` is written beside the old one, synced, and renamed over it. A menu
//! that is stale (a power cut between the swap and the rename) still boots, because no
//! entry names the boot version that every deploy flips: GRUB finds the current
//! `/ostree/boot.N` link at boot, and an entry's `BOOTCSUM/SERIAL` then names the newest
//! deployment with that kernel (the new default when the kernel is unchanged, the previous
//! OS, kept as the rollback, when it changed).

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The first line of every generated menu: only a file starting with it is replaced.
pub const MARKER: &str = "# osbuild boot menu: generated from /boot/loader/entries";

/// One boot loader entry, as libostree writes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The menu title.
    pub title: String,
    /// libostree's ordering: the default deployment has the highest version.
    pub version: u64,
    /// The kernel, relative to the boot filesystem's root.
    pub linux: String,
    /// The initramfs, relative to the boot filesystem's root.
    pub initrd: Option<String>,
    /// The kernel command line.
    pub options: String,
}

impl Entry {
    /// Parse one `.conf` file's text.
    pub fn parse(text: &str) -> Option<Entry> {
        let mut e = Entry::default();
        for line in text.lines() {
            let (key, value) = match line.trim().split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => continue,
            };
            match key {
                "title" => e.title = value.to_string(),
                "version" => e.version = value.parse().unwrap_or(0),
                "linux" => e.linux = value.to_string(),
                "initrd" => e.initrd = Some(value.to_string()),
                "options" => e.options = value.to_string(),
                _ => {}
            }
        }
        (!e.linux.is_empty()).then_some(e)
    }
}

/// The boot loader entry files libostree wrote in the sysroot at `sysroot`
/// (`/boot/loader/entries/*.conf`), each with its text, in no particular order.
pub(crate) fn entry_files(sysroot: &Path) -> Result<Vec<(PathBuf, String)>> {
    let dir = sysroot.join("boot/loader/entries");
    let mut files = Vec::new();
    for item in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = item
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.extension().is_none_or(|e| e != "conf") {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push((path, text));
    }
    Ok(files)
}

/// `path` of a `linux`/`initrd` line relative to the boot filesystem's root: libostree
/// writes `/boot/ostree/…` when `sysroot.bootprefix` is set, `/ostree/…` otherwise.
pub fn boot_relative(path: &str) -> &str {
    let p = path.strip_prefix("/boot/").unwrap_or(path);
    p.trim_start_matches('/')
}

/// The entries of the sysroot at `sysroot`, default first.
pub fn read_entries(sysroot: &Path) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (path, text) in entry_files(sysroot)? {
        let entry = Entry::parse(&text)
            .with_context(|| format!("{} has no `linux` line", path.display()))?;
        entries.push(entry);
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.version));
    Ok(entries)
}

/// Quote `s` for GRUB's script parser: single quotes, with `'` written as `'\''`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The menu for `entries`. `boot` is where the boot filesystem's root is seen from GRUB's
/// root device: `/boot` when /boot is a directory of the root filesystem.
pub fn grub_cfg(entries: &[Entry], boot: &str, timeout: u32) -> String {
    let mut out = format!(
        "{MARKER}\n# by osbuild after every deploy; edits are lost.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set default=0\n\
         set timeout={timeout}\n\
         # libostree flips /ostree/boot.0 and boot.1 on every deploy: follow it here.\n\
         if [ -e /ostree/boot.1 ]; then set ostree_boot=boot.1; else set ostree_boot=boot.0; fi\n"
    );
    out.push_str(&countdown(&format!("{boot}/grub/grubenv")));
    let path = |p: &str| {
        if p.starts_with(&format!("{boot}/")) || boot.is_empty() {
            p.to_string()
        } else {
            format!("{boot}{p}")
        }
    };
    for e in entries {
        out.push_str(&format!("menuentry {} {{\n", quote(&e.title)));
        out.push_str(&format!(
            "\tlinux {} {}\n",
            path(&e.linux),
            unversioned(&e.options)
        ));
        if let Some(initrd) = &e.initrd {
            out.push_str(&format!("\tinitrd {}\n", path(initrd)));
        }
        out.push_str("}\n");
    }
    out
}

/// The automatic fallback's boot counting (crate::fallback): while the environment block
/// names a deployment on trial, each boot takes one try; with none left the second entry,
/// the previous deployment, boots. Debian's GRUB has no `increment`, so the count goes
/// down through comparisons.
fn countdown(env: &str) -> String {
    let mut out = format!(
        "# Automatic fallback: a new default deployment gets a few tries.\n\
         if [ -f {env} ]; then\n\
         \tload_env --file {env} {TRIES} {TRYING}\n\
         \tif [ -n \"${{{TRYING}}}\" ]; then\n",
        TRIES = crate::fallback::TRIES_VAR,
        TRYING = crate::fallback::TRYING_VAR,
    );
    for n in (1..=crate::fallback::MAX_TRIES).rev() {
        let kw = if n == crate::fallback::MAX_TRIES {
            "if"
        } else {
            "elif"
        };
        out.push_str(&format!(
            "\t\t{kw} [ \"${{{TRIES}}}\" = \"{n}\" ]; then set {TRIES}={}\n",
            n - 1,
            TRIES = crate::fallback::TRIES_VAR,
        ));
    }
    out.push_str(&format!(
        "\t\telse set default=1; fi\n\
         \t\tsave_env --file {env} {TRIES}\n\
         \tfi\n\
         fi\n",
        TRIES = crate::fallback::TRIES_VAR,
    ));
    out
}

/// `options` with `ostree=/ostree/boot.N/…` naming the boot version GRUB found instead.
fn unversioned(options: &str) -> String {
    options
        .split(' ')
        .map(|arg| match arg.strip_prefix("ostree=/ostree/boot.") {
            Some(rest) => match rest.split_once('/') {
                Some((n, tail)) if n.chars().all(|c| c.is_ascii_digit()) => {
                    format!("ostree=/ostree/${{ostree_boot}}/{tail}")
                }
                _ => arg.to_string(),
            },
            None => arg.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Where the generated menu lives in a sysroot.
pub fn grub_cfg_path(sysroot: &Path) -> PathBuf {
    sysroot.join("boot/grub/grub.cfg")
}

/// Write the menu for the sysroot's current entries: a new file beside the old one,
/// synced, then renamed over it, and the directory synced.
pub fn write_grub_cfg(sysroot: &Path) -> Result<()> {
    let entries = read_entries(sysroot)?;
    anyhow::ensure!(
        !entries.is_empty(),
        "{} has no boot entries: refusing to write an empty boot menu",
        sysroot.join("boot/loader/entries").display()
    );
    let text = grub_cfg(&entries, "/boot", 3);
    // The counter's block must exist at full size before GRUB can save to it.
    let env = crate::grubenv::path(sysroot);
    if !env.exists() {
        crate::grubenv::write(&env, &Default::default())?;
    }
    crate::durable::replace(&grub_cfg_path(sysroot), |f| f.write_all(text.as_bytes()))
}

/// On the device: regenerate the menu when the sysroot boots with a generated one, and
/// do nothing otherwise (syslinux, or a menu someone else manages).
pub fn update(sysroot: &Path) -> Result<bool> {
    let path = grub_cfg_path(sysroot);
    match fs::read_to_string(&path) {
        Ok(text) if text.starts_with(MARKER) => write_grub_cfg(sysroot).map(|()| true),
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What [`refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// Synced systemd-boot's entries onto the ESP, in this many steps.
    Esp(usize),
    /// Regenerated GRUB's menu.
    Grub,
    /// Nothing to regenerate (syslinux reads libostree's own config, or the menu is not
    /// ours).
    Nothing,
}

/// On the device (`osbuild-boot-menu`): bring the boot menu in step with libostree's
/// entries, then make the boot filesystem readable as the boot loader reads it.
///
/// It waits for libostree's sysroot lock, so that a deploy that triggered it (the path
/// unit fires on the `/boot/loader` swap) has finished its cleanup first, and ends with a
/// freeze and thaw of the boot filesystem: GRUB and syslinux do not replay the ext4
/// journal, and libostree's swap and cleanup come after its own flush, so without it a
/// reboot soon after a deploy can find the old `/ostree/boot.N` link still in place and
/// boot the previous deployment.
pub fn refresh(sysroot: &Path) -> Result<Refreshed> {
    let _lock = crate::sysroot::WaitedLock::acquire(sysroot, std::time::Duration::from_secs(120));
    let done = match crate::esp::update(sysroot)? {
        Some(steps) => Refreshed::Esp(steps),
        None if update(sysroot)? => {
            crate::fallback::arm(sysroot)?;
            Refreshed::Grub
        }
        None => Refreshed::Nothing,
    };
    crate::durable::flush_for_bootloader(&sysroot.join("boot"))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = "title Debian GNU/Linux 12 (bookworm) (ostree:0)\nversion 2\n\
        options root=LABEL=r rw ostree=/ostree/boot.1/debian/abc/0\n\
        linux /ostree/debian-abc/vmlinuz-6.1\ninitrd /ostree/debian-abc/initramfs-6.1.img\n";

    #[test]
    fn entries_become_menu_entries_default_first() {
        let dir = tempfile::tempdir().unwrap();
        let entries = dir.path().join("boot/loader/entries");
        fs::create_dir_all(&entries).unwrap();
        fs::write(entries.join("ostree-2-debian.conf"), ENTRY).unwrap();
        fs::write(
            entries.join("ostree-1-debian.conf"),
            ENTRY
                .replace("version 2", "version 1")
                .replace("(ostree:0)", "(ostree:1)")
                .replace("abc", "old"),
        )
        .unwrap();
        fs::write(entries.join("README"), "not an entry").unwrap();
        let read = read_entries(dir.path()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].version, 2);
        let cfg = grub_cfg(&read, "/boot", 3);
        assert!(cfg.starts_with(MARKER));
        let first = cfg.find("(ostree:0)").unwrap();
        let second = cfg.find("(ostree:1)").unwrap();
        assert!(first < second, "{cfg}");
        assert!(cfg.contains("menuentry 'Debian GNU/Linux 12 (bookworm) (ostree:0)' {"));
        assert!(cfg.contains(
            "\tlinux /boot/ostree/debian-abc/vmlinuz-6.1 root=LABEL=r rw ostree=/ostree/${ostree_boot}/debian/abc/0\n"
        ));
        assert!(cfg.contains("if [ -e /ostree/boot.1 ]; then set ostree_boot=boot.1;"));
        assert!(cfg.contains("\tinitrd /boot/ostree/debian-abc/initramfs-6.1.img\n"));

        // update() only replaces a menu it generated.
        assert!(!update(dir.path()).unwrap());
        write_grub_cfg(dir.path()).unwrap();
        assert!(update(dir.path()).unwrap());
        fs::write(grub_cfg_path(dir.path()), "# mine\n").unwrap();
        assert!(!update(dir.path()).unwrap());
        assert_eq!(
            fs::read_to_string(grub_cfg_path(dir.path())).unwrap(),
            "# mine\n"
        );
    }

    #[test]
    fn titles_are_quoted_and_paths_keep_a_boot_prefix() {
        let e = Entry {
            title: "it's".into(),
            linux: "/boot/ostree/k".into(),
            ..Entry::default()
        };
        let cfg = grub_cfg(&[e], "/boot", 1);
        assert!(cfg.contains("menuentry 'it'\\''s' {"), "{cfg}");
        assert!(cfg.contains("\tlinux /boot/ostree/k \n"), "{cfg}");
        assert_eq!(Entry::parse("title x\n"), None);
    }

    #[test]
    fn no_entries_no_menu() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("boot/loader/entries")).unwrap();
        let err = write_grub_cfg(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no boot entries"), "{err}");
        assert!(!grub_cfg_path(dir.path()).exists());
    }
}
