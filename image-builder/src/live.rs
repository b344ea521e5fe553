//! What makes a deployment boot live from an ISO, with nothing added to the OS tree:
//!
//! - an initramfs archive appended after the tree's own (the kernel unpacks both, the
//!   second over the first) that adds the kernel modules the tree's generic dracut
//!   initramfs lacks for a CD (copied from the tree's `/usr/lib/modules/KVER`), a dracut
//!   cmdline hook that accepts `root=osbuild-live:LABEL`, a service that finds the medium
//!   by its label and mounts it and its root image read-only, and a `sysroot.mount` that
//!   overlays a tmpfs on that image at /sysroot. ostree-prepare-root then finds the
//!   deployment named by `ostree=` there as on a disk; /etc and /var are writable, in
//!   memory.
//! - in the deployment's /etc (which is the ISO's own): a note that the system is live,
//!   and the units that only make sense on a disk masked (growing the root partition,
//!   regenerating GRUB's menu).

use crate::cpio::Entry;
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

/// The kernel argument that names the medium: `root=osbuild-live:LABEL`.
pub(crate) const ROOT_PREFIX: &str = "osbuild-live:";
/// The kernel argument every live boot carries, for the guest and for units to test.
pub(crate) const LIVE_KARG: &str = "osbuild.live";
/// Written by the initramfs once the live root is mounted; survives the switch to the
/// real root (systemd moves /run over).
pub(crate) const RUN_MARKER: &str = "/run/osbuild/live";
/// What the guest is told, in the marker, /etc/motd and /etc/issue.
pub(crate) const NOTICE: &str =
    "This is a live system (osbuild live ISO): changes to /etc and /var are kept in memory and lost at shutdown.";

/// Modules the live boot may need, by name, loaded in this order with their dependencies
/// first. Those the kernel has built in, or does not have, are left out: CD drives (AHCI,
/// PATA, virtio-scsi), USB sticks (an isohybrid image), and the filesystems.
const MODULES: &[&str] = &[
    "ahci",
    "ata_piix",
    "virtio_scsi",
    "virtio_blk",
    "xhci_pci",
    "ehci_pci",
    "usb_storage",
    "uas",
    "sd_mod",
    "sr_mod",
    "isofs",
    "loop",
    "squashfs",
    "overlay",
];

/// Where the added modules go in the initramfs, and the list of them in load order.
const MODULE_DIR: &str = "usr/lib/osbuild-live/modules";
const SCRIPT: &str = "usr/lib/osbuild-live/mount-live-root";

/// The kernel arguments of a live boot from a medium labelled `label`.
pub(crate) fn kernel_args(label: &str) -> Vec<String> {
    vec![
        format!("root={ROOT_PREFIX}{label}"),
        LIVE_KARG.to_string(),
        "console=ttyS0,115200".to_string(),
    ]
}

/// The dracut cmdline hook: dracut refuses a `root=` no module claims.
fn cmdline_hook() -> String {
    format!(
        "# osbuild live ISO: the root is mounted by osbuild-live-root.service.\n\
         case \"$root\" in {ROOT_PREFIX}*) rootok=1 ;; esac\n"
    )
}

/// The script osbuild-live-root.service runs.
fn mount_script() -> String {
    format!(
        r#"#!/bin/bash
# osbuild live ISO: mount the medium and its root image read-only, and a tmpfs for the
# changes; sysroot.mount overlays them at /sysroot.
set -e
label=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root={ROOT_PREFIX}*) label="${{arg#root={ROOT_PREFIX}}}" ;; esac
done
if [ -z "$label" ]; then
    echo "osbuild-live: no root={ROOT_PREFIX}LABEL on the kernel command line" >&2
    exit 1
fi
while read -r file; do
    name="${{file##*/}}"
    name="${{name%%.ko*}}"
    name="${{name//-/_}}"
    if [ ! -d "/sys/module/$name" ]; then
        insmod "/{MODULE_DIR}/$file" 2>/dev/null || [ -d "/sys/module/$name" ] ||
            echo "osbuild-live: could not load $file" >&2
    fi
done < /{MODULE_DIR}/order
dev="/dev/disk/by-label/$label"
tries=0
while [ ! -b "$dev" ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 240 ]; then
        echo "osbuild-live: no medium labelled $label after 120 s" >&2
        exit 1
    fi
    udevadm settle -t 1 >/dev/null 2>&1 || true
    sleep 0.5
done
live=/run/osbuild-live
mkdir -p "$live/medium" "$live/root" "$live/rw"
mount -t iso9660 -o ro "$dev" "$live/medium"
mount -t squashfs -o ro,loop "$live/medium/live/root.squashfs" "$live/root"
mount -t tmpfs -o mode=0755,size=50% osbuild-live "$live/rw"
mkdir -p "$live/rw/upper" "$live/rw/work"
mkdir -p {run_dir}
echo "{NOTICE} Medium: $label ($dev)." > {RUN_MARKER}
echo "osbuild-live: root image on $dev mounted read-only; changes go to memory"
"#,
        run_dir = RUN_MARKER.rsplit_once('/').map_or("/run", |(d, _)| d),
    )
}

const SERVICE: &str = "[Unit]
Description=osbuild live ISO: mount the medium and its root image
DefaultDependencies=no
ConditionKernelCommandLine=osbuild.live
Wants=systemd-udevd.service systemd-udev-trigger.service
After=systemd-udevd.service systemd-udev-trigger.service
Before=sysroot.mount initrd-root-fs.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/osbuild-live/mount-live-root
StandardOutput=journal+console
StandardError=journal+console
";

/// Replaces the unit systemd-fstab-generator would make from a block device `root=`.
const SYSROOT_MOUNT: &str = "[Unit]
Description=osbuild live ISO: the root image with changes in memory
DefaultDependencies=no
Requires=osbuild-live-root.service
After=osbuild-live-root.service
Before=initrd-root-fs.target

[Mount]
What=osbuild-live
Where=/sysroot
Type=overlay
Options=lowerdir=/run/osbuild-live/root,upperdir=/run/osbuild-live/rw/upper,workdir=/run/osbuild-live/rw/work
";

/// The modules of `MODULES` the tree's kernel `modules` (`/usr/lib/modules/KVER`) has as
/// files, with their dependencies, in load order: paths relative to `modules`.
pub(crate) fn module_files(modules: &Path) -> Result<Vec<String>> {
    let dep_path = modules.join("modules.dep");
    let text = fs::read_to_string(&dep_path)
        .with_context(|| format!("reading {} (the tree's kernel modules)", dep_path.display()))?;
    Ok(resolve(&parse_deps(&text), MODULES))
}

/// modules.dep: module name -> (file, dependency files).
fn parse_deps(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (file, deps) = line.split_once(':')?;
            let deps = deps.split_whitespace().map(str::to_string).collect();
            Some((module_name(file), (file.to_string(), deps)))
        })
        .collect()
}

/// `kernel/drivers/ata/pata-foo.ko.xz` -> `pata_foo`.
fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Files to load for `wanted`, dependencies before the modules that need them.
fn resolve(deps: &BTreeMap<String, (String, Vec<String>)>, wanted: &[&str]) -> Vec<String> {
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) {
        let Some((file, needs)) = deps.get(name) else {
            return;
        };
        if !seen.insert(name.to_string()) {
            return;
        }
        for dep in needs {
            visit(&module_name(dep), deps, seen, out);
        }
        out.push(file.clone());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in wanted {
        visit(name, deps, &mut seen, &mut out);
    }
    out
}

/// The archive appended to the tree's initramfs, for kernel modules in `modules`.
pub(crate) fn initramfs(modules: &Path) -> Result<Vec<u8>> {
    let entries = entries(modules)?;
    let mut out = Vec::new();
    crate::cpio::write(&mut out, &entries).context("writing the live initramfs archive")?;
    Ok(out)
}

fn entries(modules: &Path) -> Result<Vec<Entry>> {
    let files = module_files(modules)?;
    let mut entries = Vec::new();
    // Parents first; the tree's initramfs has /usr, /usr/lib and /etc as directories (and
    // /lib as a link, which must not be replaced by a directory: nothing goes there).
    for dir in [
        "usr",
        "usr/lib",
        "usr/lib/osbuild-live",
        MODULE_DIR,
        "usr/lib/dracut",
        "usr/lib/dracut/hooks",
        "usr/lib/dracut/hooks/cmdline",
        "etc",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/initrd-root-fs.target.requires",
        "etc/systemd/system/initrd.target.wants",
    ] {
        entries.push(Entry::dir(dir));
    }
    let mut order = String::new();
    let mut names = HashSet::new();
    for file in &files {
        let src = modules.join(file);
        let data = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let base = file.rsplit('/').next().unwrap_or(file);
        // Two modules of one name cannot be in one kernel; keep the first.
        if names.insert(base.to_string()) {
            entries.push(Entry::file(&format!("{MODULE_DIR}/{base}"), 0o644, data));
            order.push_str(base);
            order.push('\n');
        }
    }
    entries.push(Entry::file(&format!("{MODULE_DIR}/order"), 0o644, order));
    entries.push(Entry::file(SCRIPT, 0o755, mount_script()));
    entries.push(Entry::file(
        "usr/lib/dracut/hooks/cmdline/90-osbuild-live.sh",
        0o644,
        cmdline_hook(),
    ));
    entries.push(Entry::file(
        "etc/systemd/system/osbuild-live-root.service",
        0o644,
        SERVICE,
    ));
    entries.push(Entry::file(
        "etc/systemd/system/sysroot.mount",
        0o644,
        SYSROOT_MOUNT,
    ));
    entries.push(Entry::symlink(
        "etc/systemd/system/initrd-root-fs.target.requires/sysroot.mount",
        "../sysroot.mount",
    ));
    entries.push(Entry::symlink(
        "etc/systemd/system/initrd.target.wants/osbuild-live-root.service",
        "../osbuild-live-root.service",
    ));
    Ok(entries)
}

/// Units of the tree that act on a disk, masked on the live system.
const MASKED: &[&str] = &["osbuild-grow-root.service", "osbuild-boot-menu.path"];

/// Mark the deployment at `root` (its /etc is the live system's) as live.
pub(crate) fn prepare_deployment(root: &Path) -> Result<()> {
    let etc = root.join("etc");
    let note = format!("\n{NOTICE}\n\n");
    let motd = etc.join("motd");
    let old = fs::read_to_string(&motd).unwrap_or_default();
    // A fresh file: the deployment's /etc files may be hard links shared with others.
    let _ = fs::remove_file(&motd);
    fs::write(&motd, format!("{note}{old}"))
        .with_context(|| format!("writing {}", motd.display()))?;
    let issue_d = etc.join("issue.d");
    fs::create_dir_all(&issue_d).with_context(|| format!("creating {}", issue_d.display()))?;
    let issue = issue_d.join("osbuild-live.issue");
    fs::write(&issue, format!("{NOTICE}\n\n"))
        .with_context(|| format!("writing {}", issue.display()))?;
    let units = etc.join("systemd/system");
    fs::create_dir_all(&units).with_context(|| format!("creating {}", units.display()))?;
    for unit in MASKED {
        let link = units.join(unit);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)
            .with_context(|| format!("masking {}", link.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/ata/libata.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko
kernel/drivers/cdrom/cdrom.ko:
kernel/fs/isofs/isofs.ko: kernel/drivers/cdrom/cdrom.ko
kernel/drivers/scsi/sr_mod.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/cdrom/cdrom.ko
kernel/drivers/virtio/virtio-foo.ko:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let deps = parse_deps(DEP);
        let order = resolve(&deps, &["ahci", "sr_mod", "isofs", "missing", "virtio_foo"]);
        let pos = |f: &str| order.iter().position(|o| o.ends_with(f)).unwrap();
        assert!(pos("scsi_common.ko") < pos("scsi_mod.ko"));
        assert!(pos("scsi_mod.ko") < pos("libata.ko"));
        assert!(pos("libata.ko") < pos("libahci.ko"));
        assert!(pos("libahci.ko") < pos("ahci.ko.xz"));
        assert!(pos("cdrom.ko") < pos("sr_mod.ko"));
        assert!(order.iter().any(|o| o.ends_with("virtio-foo.ko")));
        let unique: HashSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len(), "{order:?}");
        assert_eq!(order.len(), 9);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/a/b/ahci.ko"), "ahci");
        assert_eq!(module_name("kernel/a/virtio-foo.ko.zst"), "virtio_foo");
    }

    #[test]
    fn boot_pieces_agree() {
        let args = kernel_args("OSBUILD_LIVE");
        assert!(args.contains(&"root=osbuild-live:OSBUILD_LIVE".to_string()));
        assert!(args.contains(&LIVE_KARG.to_string()));
        assert!(cmdline_hook().contains(&format!("{ROOT_PREFIX}*) rootok=1")));
        assert!(SERVICE.contains(&format!("ConditionKernelCommandLine={LIVE_KARG}")));
        assert!(SERVICE.contains(&format!("ExecStart=/{SCRIPT}")));
        let script = mount_script();
        assert!(script.contains(&format!("/{MODULE_DIR}/order")));
        assert!(script.contains("/live/root.squashfs"));
        assert!(script.contains("mkdir -p /run/osbuild\n"), "{script}");
        // Every shell expansion is the script's own variables.
        for var in script.split("${").skip(1) {
            let name: String = var
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            assert!(
                ["arg", "name", "file"].contains(&name.as_str()),
                "${{{name}}} in {script}"
            );
        }
        for dir in ["/run/osbuild-live/root", "/run/osbuild-live/rw/upper"] {
            assert!(SYSROOT_MOUNT.contains(dir), "{dir}");
        }
    }

    #[test]
    fn initramfs_holds_the_modules_and_units() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path();
        fs::write(m.join("modules.dep"), DEP).unwrap();
        for line in DEP.lines() {
            let file = line.split(':').next().unwrap();
            fs::create_dir_all(m.join(file).parent().unwrap()).unwrap();
            fs::write(m.join(file), file).unwrap();
        }
        let bytes = initramfs(m).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in [
            "usr/lib/osbuild-live/modules/ahci.ko.xz",
            "etc/systemd/system/sysroot.mount",
            "usr/lib/dracut/hooks/cmdline/90-osbuild-live.sh",
            "TRAILER!!!",
        ] {
            assert!(text.contains(needle), "{needle}");
        }
        // /lib is a link in dracut's initramfs: a directory entry would replace it.
        let entries = entries(m).unwrap();
        assert!(entries.iter().all(|e| !e.path().starts_with("lib")));
        // Every parent comes before what it holds.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.path().rsplit_once('/') {
                assert!(
                    entries[..i].iter().any(|p| p.path() == parent),
                    "{} before its parent",
                    e.path()
                );
            }
        }
    }

    #[test]
    fn deployment_says_it_is_live() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/motd"), "Debian\n").unwrap();
        prepare_deployment(dir.path()).unwrap();
        let motd = fs::read_to_string(dir.path().join("etc/motd")).unwrap();
        assert!(
            motd.contains("live system") && motd.ends_with("Debian\n"),
            "{motd}"
        );
        let masked = dir
            .path()
            .join("etc/systemd/system/osbuild-grow-root.service");
        assert_eq!(fs::read_link(masked).unwrap(), Path::new("/dev/null"));
    }
}
