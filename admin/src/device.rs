//! What osbuild puts into every tree it builds so that the device keeps its boot menu
//! right on its own: the menu generator and the units that run it after deploys.

use std::path::{Path, PathBuf};

/// Where the menu generator is installed in the tree.
pub const BOOT_MENU_BIN: &str = "/usr/libexec/osbuild/boot-menu";
/// Where the root grower is installed in the tree.
pub const GROW_ROOT_BIN: &str = "/usr/libexec/osbuild/grow-root";
/// The binaries built with osbuild that go into every tree: (cargo's name, path in the tree).
pub const BINARIES: &[(&str, &str)] = &[
    // `osbuild admin …` on the device: the device build of osbuild.
    ("osbuild-device", "/usr/bin/osbuild"),
    ("osbuild-boot-menu", BOOT_MENU_BIN),
    ("osbuild-grow-root", GROW_ROOT_BIN),
];
/// libostree's unit that writes a staged deployment at shutdown (its ExecStop).
pub const FINALIZE_STAGED: &str = "ostree-finalize-staged.service";
/// The units to enable in the tree: the path unit that updates the menu when libostree
/// swaps `/boot/loader`, the menu's update at every boot (which completes one a power cut
/// interrupted), and the root grower.
pub const ENABLED_UNITS: &[&str] = &[
    "osbuild-boot-menu.path",
    "osbuild-boot-menu.service",
    "osbuild-grow-root.service",
    "osbuild-health.service",
    "osbuild-boot-good.service",
];

/// An OpenRC service of ours, for trees whose init is OpenRC (where the units above are
/// never started): its script goes to `/etc/init.d/NAME`, and it is added to `runlevel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRcService {
    /// The service's name.
    pub name: &'static str,
    /// The runlevel it is added to.
    pub runlevel: &'static str,
    /// The openrc-run script.
    pub script: String,
}

/// The OpenRC services: the same jobs as the systemd units, at the same moments.
pub fn openrc_services() -> Vec<OpenRcService> {
    vec![
        // What systemd-tmpfiles-setup.service does: /var is seeded from the tree's
        // factory copy (tmpfiles.d), before anything that writes there (dhclient's
        // leases under `networking`) starts.
        OpenRcService {
            name: "osbuild-tmpfiles",
            runlevel: "sysinit",
            script: "#!/sbin/openrc-run\n\
                     description=\"Create the files tmpfiles.d names, /var's content among them\"\n\n\
                     depend() {\n\tafter mountall mountall-bootclean\n\tbefore networking bootmisc\n}\n\n\
                     start() {\n\tebegin \"Creating tmpfiles.d's files\"\n\
                     \t/usr/bin/systemd-tmpfiles --create --remove --boot --exclude-prefix=/dev\n\teend $?\n}\n"
                .to_string(),
        },
        OpenRcService {
            name: "osbuild-ssh-keygen",
            runlevel: "default",
            script: "#!/sbin/openrc-run\n\
                     description=\"Generate the SSH host keys this device does not have yet\"\n\n\
                     depend() {\n\tbefore sshd\n}\n\n\
                     start() {\n\t[ -x /usr/bin/ssh-keygen ] || return 0\n\
                     \tebegin \"Generating SSH host keys\"\n\t/usr/bin/ssh-keygen -A\n\teend $?\n}\n"
                .to_string(),
        },
        // What osbuild-grow-root, osbuild-boot-menu, osbuild-health and osbuild-boot-good
        // do under systemd, late in the boot: the health checks decide whether this boot
        // is good, or reboot / roll back. Not `after *`: gendepends.sh lets the shell
        // expand the `*` (to / 's entries on a device), and Debian 12's OpenRC 0.45
        // then corrupts its heap while caching the dependencies, and starts nothing.
        OpenRcService {
            name: "osbuild-boot",
            runlevel: "default",
            script: format!(
                "#!/sbin/openrc-run\n\
                 description=\"osbuild at boot: grow the root, update the boot menu, run the health checks, mark the boot good\"\n\n\
                 depend() {{\n\tafter networking sshd rc.local\n}}\n\n\
                 start() {{\n\
                 \tebegin \"Growing the root partition to fill the disk\"\n\t{GROW_ROOT_BIN}\n\teend $? || true\n\
                 \tebegin \"Updating the boot menu\"\n\t{BOOT_MENU_BIN}\n\teend $? || true\n\
                 \tebegin \"Running osbuild's health checks\"\n\
                 \t/usr/bin/osbuild admin health-check && /usr/bin/osbuild admin boot-good\n\teend $?\n}}\n"
            ),
        },
        // libostree writes a staged deployment only when asked at shutdown; Debian's
        // OpenRC shuts down through the `off` runlevel, whose services start once every
        // other service has stopped: this one runs before processes are killed and the
        // filesystems are unmounted or made read-only, and the boot menu follows it.
        OpenRcService {
            name: "ostree-finalize-staged",
            runlevel: "off",
            script: format!(
                "#!/sbin/openrc-run\n\
                 description=\"Write the ostree deployment staged for the next boot\"\n\n\
                 depend() {{\n\tbefore sendsigs umountnfs umountfs umountroot savecache\n}}\n\n\
                 start() {{\n\t[ -e /run/ostree/staged-deployment ] || return 0\n\
                 \tebegin \"Finalizing the staged ostree deployment\"\n\
                 \t/usr/bin/osbuild admin finalize-staged && {BOOT_MENU_BIN}\n\teend $?\n}}\n"
            ),
        },
    ]
}

/// A file of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFile {
    /// Absolute path in the tree.
    pub path: &'static str,
    /// What it holds.
    pub content: DeviceContent,
    /// Its mode.
    pub mode: u32,
}

/// A file's content: text, or a file of the build host (a binary) to copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceContent {
    /// Text.
    Text(String),
    /// Copied from this host path.
    Copy(PathBuf),
}

/// The files, with the [`BINARIES`] copied from `bin_dir` on the build host.
pub fn files(bin_dir: &Path) -> Vec<DeviceFile> {
    let text = |path, content: &str, mode| DeviceFile {
        path,
        content: DeviceContent::Text(content.to_string()),
        mode,
    };
    let mut files: Vec<DeviceFile> = BINARIES
        .iter()
        .map(|(name, path)| DeviceFile {
            path,
            content: DeviceContent::Copy(bin_dir.join(name)),
            mode: 0o755,
        })
        .collect();
    files.extend([
        // Staged deploys (`ostree admin upgrade`) write their entries at shutdown.
        text(
            "/usr/lib/systemd/system/ostree-finalize-staged.service.d/50-osbuild-boot-menu.conf",
            &format!(
                "# osbuild: the boot menu (GRUB's, or systemd-boot's on the ESP) follows the\n\
                 # entries finalize-staged has just written.\n\
                 [Service]\nExecStop={BOOT_MENU_BIN}\n"
            ),
            0o644,
        ),
        // Deploys made while the system runs (`ostree admin upgrade` and `deploy` without
        // --stage, undeploy): libostree writes a new /boot/loader.N and swaps the
        // /boot/loader link, which changes the directory watched.
        text(
            "/usr/lib/systemd/system/osbuild-boot-menu.path",
            "[Unit]\nDescription=Watch for new ostree boot entries\n\n\
             [Path]\nPathChanged=/sysroot/boot\nUnit=osbuild-boot-menu.service\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            0o644,
        ),
        text(
            "/usr/lib/systemd/system/osbuild-boot-menu.service",
            &format!(
                "[Unit]\nDescription=Update the boot menu from ostree's boot entries\n\
                 After=local-fs.target\n\n\
                 [Service]\nType=oneshot\n\
                 # Keep finalize-staged active from boot on: libostree 2022.7 starts it\n\
                 # only from a path unit, which a reboot right after staging can outrun,\n\
                 # and the staged deploy is then lost (ostree#3389). Started in its own\n\
                 # transaction: in the boot's, its ordering makes a cycle with basic.target.\n\
                 ExecStartPre=-/bin/systemctl start --no-block {FINALIZE_STAGED}\n\
                 ExecStart={BOOT_MENU_BIN}\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        ),
        // The automatic fallback (osbuild_admin::fallback): the checks gate
        // boot-complete.target, and only a complete boot is marked good.
        text(
            "/usr/lib/systemd/system/osbuild-health.service",
            "[Unit]\nDescription=Run osbuild's health checks\n\
             After=multi-user.target\nBefore=boot-complete.target\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/usr/bin/osbuild admin health-check\n\n\
             [Install]\nWantedBy=multi-user.target\nRequiredBy=boot-complete.target\n",
            0o644,
        ),
        text(
            "/usr/lib/systemd/system/osbuild-boot-good.service",
            // After multi-user.target too: the health checks it waits for run after it,
            // and a unit multi-user.target wants is otherwise ordered before it, which
            // made a cycle that systemd broke by dropping this unit (never marked good).
            "[Unit]\nDescription=Mark the boot good for osbuild's automatic fallback\n\
             Requires=boot-complete.target\nAfter=multi-user.target boot-complete.target\n\n\
             [Service]\nType=oneshot\nRemainAfterExit=yes\n\
             ExecStart=/usr/bin/osbuild admin boot-good\n\n\
             [Install]\nWantedBy=multi-user.target\n",
            0o644,
        ),
        // An image written to a larger disk uses all of it, from the first boot on.
        text(
            "/usr/lib/systemd/system/osbuild-grow-root.service",
            &format!(
                "[Unit]\nDescription=Grow the root partition and filesystem to fill the disk\n\
                 After=local-fs.target\nBefore=multi-user.target\n\n\
                 [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart={GROW_ROOT_BIN}\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        ),
    ]);
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_enabled_unit_is_shipped_and_installable() {
        let files = files(Path::new("/nonexistent"));
        for unit in ENABLED_UNITS {
            let path = format!("/usr/lib/systemd/system/{unit}");
            let file = files
                .iter()
                .find(|f| f.path == path)
                .unwrap_or_else(|| panic!("{unit} is enabled but not shipped"));
            match &file.content {
                DeviceContent::Text(text) => assert!(
                    text.contains("\n[Install]\nWantedBy=multi-user.target\n"),
                    "{unit} cannot be enabled:\n{text}"
                ),
                DeviceContent::Copy(p) => panic!("{unit} is copied from {}", p.display()),
            }
        }
        // Every boot starts finalize-staged (see the menu service).
        let menu = files
            .iter()
            .find(|f| f.path.ends_with("/osbuild-boot-menu.service"))
            .expect("the menu service is shipped");
        assert!(
            matches!(&menu.content, DeviceContent::Text(t) if t.contains(&format!(" start --no-block {FINALIZE_STAGED}\n"))),
            "{menu:?}"
        );
        // The menu's hook runs the binary shipped beside it.
        assert!(files.iter().any(|f| f.path == BOOT_MENU_BIN));
    }

    #[test]
    fn openrc_services_are_openrc_run_scripts_in_debian_runlevels() {
        let services = openrc_services();
        for s in &services {
            assert!(s.script.starts_with("#!/sbin/openrc-run\n"), "{}", s.name);
            assert!(s.script.contains("\ndepend() {\n"), "{}", s.name);
            assert!(s.script.contains("\nstart() {\n"), "{}", s.name);
            // Debian's OpenRC: `sysinit` and `default` at boot, `off` at shutdown
            // (there is no `shutdown` runlevel in its inittab's path).
            assert!(
                ["sysinit", "default", "off"].contains(&s.runlevel),
                "{}",
                s.name
            );
        }
        let finalize = services
            .iter()
            .find(|s| s.name == "ostree-finalize-staged")
            .expect("the finalize service");
        assert_eq!(finalize.runlevel, "off");
        assert!(finalize
            .script
            .contains("before sendsigs umountnfs umountfs umountroot"));
        assert!(finalize.script.contains(BOOT_MENU_BIN));
        // A `*` in depend() is expanded by the shell (see osbuild-boot).
        for s in &services {
            assert!(!s.script.contains(" *\n"), "{}: {}", s.name, s.script);
        }
    }

    /// The health checks run after multi-user.target and gate boot-complete.target; a
    /// unit multi-user.target wants that waits for boot-complete.target must say it comes
    /// after multi-user.target, or multi-user.target is ordered after it: a cycle, which
    /// systemd breaks by dropping a unit (it dropped osbuild-boot-good, seen in qemu).
    #[test]
    fn units_after_boot_complete_come_after_multi_user() {
        for f in files(Path::new("/nonexistent")) {
            let DeviceContent::Text(text) = &f.content else {
                continue;
            };
            let after: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("After="))
                .flat_map(str::split_whitespace)
                .collect();
            if after.contains(&"boot-complete.target")
                && text.contains("WantedBy=multi-user.target")
            {
                assert!(after.contains(&"multi-user.target"), "{}:\n{text}", f.path);
            }
        }
    }
}
