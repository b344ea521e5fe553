//! A Debian base: mmdebstrap installs the kernel, the boot integration and the packages,
//! and rebuilds the initramfs generic, with ostree's dracut module.

use super::Source;
use crate::manifest::{AptRepository, AptSources};
use anyhow::{Context, Result};
use osbuild_core::cmd;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Packages every bootable tree needs besides its init ([`Init::packages`]): udev, the
/// ostree boot integration (prepare-root, finalize-staged, the dracut module) and dracut
/// to build the initramfs.
const BASE_PACKAGES: &[&str] = &[
    "udev",
    "dbus",
    "ostree",
    "ostree-boot",
    "dracut",
    "e2fsprogs",
    "kmod",
    "iproute2",
];

/// The init system (PID 1) of a Debian base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// systemd, with ostree-boot's own units (prepare-root, remount, finalize-staged).
    #[default]
    Systemd,
    /// OpenRC on sysvinit: the deployment is mounted by our dracut module
    /// (`osbuild-prepare-root`) and finalized by our OpenRC service.
    OpenRc,
}

impl Init {
    /// Every init, for table-driven tests and messages.
    pub const ALL: [Init; 2] = [Init::Systemd, Init::OpenRc];

    /// The name a manifest and `--init` use.
    pub fn name(self) -> &'static str {
        match self {
            Init::Systemd => "systemd",
            Init::OpenRc => "openrc",
        }
    }

    /// The init named `name`; the error lists the choices.
    pub fn parse(name: &str) -> Result<Init, String> {
        Init::ALL
            .into_iter()
            .find(|i| i.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Init::ALL.iter().map(|i| i.name()).collect();
                format!(
                    "init {name:?} is not known: use one of {}",
                    names.join(", ")
                )
            })
    }

    /// The packages that make it PID 1, with what brings the network up under it
    /// (systemd-networkd is part of systemd; OpenRC runs ifupdown's DHCP) and what
    /// creates /var's content at boot (tmpfiles.d).
    pub fn packages(self) -> &'static [&'static str] {
        match self {
            Init::Systemd => &["systemd-sysv"],
            // systemd-tmpfiles without systemd: it seeds /var from the tree's
            // factory copy at boot, as on a systemd tree.
            Init::OpenRc => &[
                "sysvinit-core",
                "openrc",
                "systemd-standalone-tmpfiles",
                "ifupdown",
                "isc-dhcp-client",
            ],
        }
    }

    /// The dracut module that mounts the deployment from the initramfs: ostree's own
    /// needs systemd in the initramfs.
    pub fn dracut_module(self) -> &'static str {
        match self {
            Init::Systemd => "ostree",
            Init::OpenRc => OPENRC_DRACUT_MODULE,
        }
    }
}

/// Our dracut module for initramfs images without systemd.
const OPENRC_DRACUT_MODULE: &str = "osbuild-prepare-root";

/// Its files under /usr/lib/dracut/modules.d/98osbuild-prepare-root.
const OPENRC_DRACUT_FILES: &[(&str, &str)] = &[
    (
        "module-setup.sh",
        "#!/bin/bash\n\
         # osbuild: mount the ostree deployment from an initramfs without systemd, where\n\
         # ostree's own module cannot run: ostree-prepare-root on the root before switch_root.\n\
         check() {\n    [[ -x /usr/lib/ostree/ostree-prepare-root ]] || return 1\n    return 255\n}\n\
         depends() {\n    return 0\n}\n\
         install() {\n    inst_binary /usr/lib/ostree/ostree-prepare-root\n    \
         inst_hook pre-pivot 50 \"$moddir/osbuild-prepare-root.sh\"\n}\n",
    ),
    (
        "osbuild-prepare-root.sh",
        "#!/bin/sh\n\
         # osbuild: without systemd nothing mounts the stateroot's /var after switch_root,\n\
         # so ostree-prepare-root is asked to; it then moves the deployment onto $NEWROOT.\n\
         mkdir -p /run/ostree\n\
         : > /run/ostree/initramfs-mount-var\n\
         /usr/lib/ostree/ostree-prepare-root \"$NEWROOT\" || die \"ostree-prepare-root failed on $NEWROOT\"\n",
    ),
];

/// A Debian suite, with the packages to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Debian {
    /// The suite, e.g. `bookworm` or `trixie`.
    pub suite: String,
    /// The archive mirror; mmdebstrap's default when unset.
    pub mirror: Option<String>,
    /// Archive components, e.g. `main`, `contrib`.
    pub components: Vec<String>,
    /// The kernel package.
    pub kernel: String,
    /// The init system.
    pub init: Init,
    /// Packages beyond the kernel and the base set.
    pub packages: Vec<String>,
    /// Extra APT repositories, used while packages are installed and left configured in
    /// the tree.
    pub repositories: Vec<AptRepository>,
}

impl Default for Debian {
    fn default() -> Self {
        Debian {
            suite: "bookworm".into(),
            mirror: None,
            components: vec!["main".into()],
            kernel: "linux-image-cloud-amd64".into(),
            init: Init::default(),
            packages: Vec::new(),
            repositories: Vec::new(),
        }
    }
}

impl Debian {
    /// The complete package list given to mmdebstrap: the kernel, the init, the base set,
    /// then the extra packages sorted, each once (apt installs a set: the order changes
    /// nothing, and so must not change the base cache's key).
    pub fn package_list(&self) -> Vec<String> {
        let mut pkgs = vec![self.kernel.clone()];
        pkgs.extend(self.init.packages().iter().map(|s| s.to_string()));
        pkgs.extend(BASE_PACKAGES.iter().map(|s| s.to_string()));
        let mut extra: Vec<&String> = self.packages.iter().filter(|p| !pkgs.contains(p)).collect();
        extra.sort();
        extra.dedup();
        pkgs.extend(extra.into_iter().cloned());
        pkgs
    }

    /// The mmdebstrap command that builds the tree into `dir`, keeping the packages it
    /// downloads in `packages` when given (mmdebstrap's local package cache recipe: what
    /// is there is copied in before apt runs, what apt downloaded is copied out after; its
    /// cleanup step then empties /var/cache/apt, so no package ends up in the tree).
    fn mmdebstrap(&self, dir: &Path, packages: Option<&Path>) -> Command {
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--mode=root")
            .arg("--variant=minbase")
            .arg(format!("--components={}", self.components.join(",")))
            .arg(format!("--include={}", self.package_list().join(",")));
        if let Some(packages) = packages {
            let packages = shell_quote(&packages.to_string_lossy());
            // The essential packages too are kept in /var/cache/apt/archives until
            // sync-out, rather than deleted once extracted.
            cmd.arg("--skip=essential/unlink")
                .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
                .arg(format!(
                    "--setup-hook=sync-in {packages} /var/cache/apt/archives/"
                ))
                .arg(format!(
                    "--customize-hook=sync-out /var/cache/apt/archives {packages}"
                ));
        }
        // Each extra repository is written where apt looks before `apt update` runs; the
        // build's apt runs outside the chroot, so its Signed-By is the keyring's path on
        // this machine until `install_repositories` points it into the tree.
        for (i, repo) in self.repositories.iter().enumerate() {
            let file = repository_files(i, repo).0;
            let stanza = deb822(&repo.sources, &repo.keyring.to_string_lossy());
            cmd.arg(format!(
                "--setup-hook=mkdir -p \"$1\"/etc/apt/sources.list.d && printf '%s' {} > \"$1\"/{file}",
                shell_quote(&stanza)
            ));
        }
        if self.init == Init::OpenRc {
            // Before the kernel's postinst runs dracut: our module, and a conf read after
            // ostree-boot's, which asks for ostree's module and systemd (neither can be
            // installed here, and the kernel's install would fail) and so is undone.
            let dir = format!("/usr/lib/dracut/modules.d/98{OPENRC_DRACUT_MODULE}");
            let mut hook = format!("--setup-hook=mkdir -p \"$1\"{dir} \"$1\"/etc/dracut.conf.d");
            for (name, content) in OPENRC_DRACUT_FILES {
                hook += &format!(
                    " && printf '%s' {} > \"$1\"{dir}/{name} && chmod 755 \"$1\"{dir}/{name}",
                    shell_quote(content)
                );
            }
            hook += &format!(
                " && printf '%s' {} > \"$1\"/etc/dracut.conf.d/zz-osbuild-openrc.conf",
                shell_quote(&format!(
                    "# osbuild: an OpenRC tree has no systemd for its initramfs, so\n\
                     # {OPENRC_DRACUT_MODULE} mounts the deployment, not ostree's module.\n\
                     add_dracutmodules=\"${{add_dracutmodules// ostree / }}\"\n\
                     add_dracutmodules=\"${{add_dracutmodules// systemd / }}\"\n\
                     add_dracutmodules+=\" {OPENRC_DRACUT_MODULE} \"\n"
                ))
            );
            cmd.arg(hook);
        }
        // dracut needs /proc, /sys and /dev, which mmdebstrap mounts only while hooks run.
        // The distro initramfs is host-only at best: rebuild it generic, with the module
        // that mounts the deployment. --reproducible clamps the archive's times to
        // SOURCE_DATE_EPOCH (inherited through chroot) and sorts its entries.
        cmd.arg(format!(
            "--customize-hook=for m in \"$1\"/usr/lib/modules/*; do k=${{m##*/}}; \
             chroot \"$1\" dracut --no-hostonly --force --reproducible -a {} \
             --kver \"$k\" \"/usr/lib/modules/$k/initramfs.img\" || exit 1; \
             rm -f \"$1/boot/initrd.img-$k\"; done",
            self.init.dracut_module()
        ))
        .arg(&self.suite)
        .arg(dir);
        if let Some(mirror) = &self.mirror {
            cmd.arg(mirror);
        }
        cmd
    }
}

/// `s` as one shell word: mmdebstrap runs hooks through the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The extra repository number `i`'s files in the tree: its deb822 sources and its
/// keyring (`.asc` when armored, as apt tells them by name).
fn repository_files(i: usize, repo: &AptRepository) -> (String, String) {
    let n = i + 1;
    let ext = if repo.keyring.extension().is_some_and(|e| e == "asc") {
        "asc"
    } else {
        "gpg"
    };
    (
        format!("etc/apt/sources.list.d/osbuild-{n}.sources"),
        format!("etc/apt/keyrings/osbuild-{n}.{ext}"),
    )
}

/// `sources` as one deb822 stanza signed by the keyring at `signed_by`.
fn deb822(sources: &AptSources, signed_by: &str) -> String {
    let mut out = match sources {
        AptSources::Deb822(stanza) => stanza.clone(),
        AptSources::OneLine(line) => {
            // deb [opt=v ...] URI SUITE [COMPONENT...]; the load checked the shape.
            let (kind, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']').unwrap_or((r, "")),
                None => ("", rest),
            };
            let mut out = format!("Types: {kind}\n");
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [uri, suite, components @ ..] = words.as_slice() {
                out += &format!("URIs: {uri}\nSuites: {suite}\n");
                if !components.is_empty() {
                    out += &format!("Components: {}\n", components.join(" "));
                }
            }
            for option in options.split_whitespace() {
                let (k, v) = option.split_once('=').unwrap_or((option, ""));
                // The one-line names whose deb822 field is spelt differently.
                let field = match k {
                    "arch" => "Architectures",
                    "lang" => "Languages",
                    "target" => "Targets",
                    other => other,
                };
                out += &format!("{field}: {}\n", v.replace(',', " "));
            }
            out
        }
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out + &format!("Signed-By: {signed_by}\n")
}

/// The keyring's SHA-256, for the base key: the key's content, not where it lies,
/// determines the base.
fn keyring_digest(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => osbuild_core::hex(Sha256::digest(bytes)),
        // `check` refuses it before any build.
        Err(_) => "unreadable".into(),
    }
}

/// Leave the extra repositories configured for apt on the device: the keyrings copied
/// to /etc/apt/keyrings and the sources signed by them there.
fn install_repositories(repos: &[AptRepository], dir: &Path) -> Result<()> {
    for (i, repo) in repos.iter().enumerate() {
        let (sources, keyring) = repository_files(i, repo);
        let target = dir.join(&keyring);
        fs::create_dir_all(dir.join("etc/apt/keyrings"))
            .with_context(|| format!("creating {}", dir.join("etc/apt/keyrings").display()))?;
        fs::copy(&repo.keyring, &target).with_context(|| {
            format!(
                "copying keyring {} to {}",
                repo.keyring.display(),
                target.display()
            )
        })?;
        let path = dir.join(&sources);
        fs::write(&path, deb822(&repo.sources, &format!("/{keyring}")))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Where a device's /etc/resolv.conf points when systemd-resolved is in the tree.
const RESOLVED_STUB: &str = "../run/systemd/resolve/stub-resolv.conf";

/// mmdebstrap copies the build host's /etc/resolv.conf into the tree (and
/// systemd-resolved's postinst keeps a backup of it): the build host's DNS is no
/// device's. With systemd-resolved, /etc/resolv.conf is its stub (the link the package
/// makes); without it, there is none, and the device has no DNS until it gets one.
fn resolv_conf(dir: &Path) -> Result<()> {
    let etc = dir.join("etc");
    osbuild_core::fsutil::remove_all(&etc.join(".resolv.conf.systemd-resolved.bak"))?;
    let conf = etc.join("resolv.conf");
    let is_link = fs::symlink_metadata(&conf).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        osbuild_core::fsutil::remove_all(&conf)?;
        if dir.join("usr/lib/systemd/systemd-resolved").exists() {
            std::os::unix::fs::symlink(RESOLVED_STUB, &conf)
                .with_context(|| format!("linking {} to {RESOLVED_STUB}", conf.display()))?;
        }
    }
    Ok(())
}

impl Debian {
    /// The base cache key with SOURCE_DATE_EPOCH at `epoch`: exactly what determines the
    /// tree, that is the command line, with the paths that vary from build to build
    /// replaced (keyrings by their digest), and SOURCE_DATE_EPOCH, which mmdebstrap, dpkg
    /// and dracut write into it.
    fn key_at(&self, epoch: Option<&str>) -> String {
        let mut line =
            cmd::display(&self.mmdebstrap(Path::new("@TARGET@"), Some(Path::new("@PACKAGES@"))));
        for (i, repo) in self.repositories.iter().enumerate() {
            line = line.replace(
                &*repo.keyring.to_string_lossy(),
                &format!(
                    "@KEYRING-{} sha256:{}@",
                    i + 1,
                    keyring_digest(&repo.keyring)
                ),
            );
        }
        format!("{line}\nSOURCE_DATE_EPOCH={epoch:?}\n")
    }
}

impl Source for Debian {
    fn describe(&self) -> String {
        format!("Debian {}", self.suite)
    }

    fn check(&self) -> Result<()> {
        if self.components.is_empty() {
            anyhow::bail!(
                "no archive components for Debian {}: give at least main",
                self.suite
            );
        }
        for repo in &self.repositories {
            fs::File::open(&repo.keyring).with_context(|| {
                format!(
                    "keyring {} of an extra repository cannot be read: fix the path in [[base.repositories]] keyring",
                    repo.keyring.display()
                )
            })?;
        }
        Ok(())
    }

    fn cache_key(&self) -> Option<String> {
        Some(self.key_at(std::env::var("SOURCE_DATE_EPOCH").ok().as_deref()))
    }

    fn build(&self, dir: &Path, packages: Option<&Path>) -> Result<super::Built> {
        if let Some(packages) = packages {
            std::fs::create_dir_all(packages)
                .with_context(|| format!("creating the package cache {}", packages.display()))?;
        }
        // mmdebstrap takes minutes: its progress goes to the terminal as it runs, and on
        // failure the tail of its stderr is in the error.
        cmd::run_inherit(&mut self.mmdebstrap(dir, packages))
            .with_context(|| format!("bootstrapping Debian {} with mmdebstrap", self.suite))?;
        install_repositories(&self.repositories, dir)?;
        resolv_conf(dir).context("removing the build host's /etc/resolv.conf")?;
        Ok(super::Built::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmdebstrap_gets_suite_components_packages_and_mirror() {
        let debian = Debian {
            suite: "trixie".into(),
            mirror: Some("http://deb.debian.org/debian".into()),
            components: vec!["main".into(), "contrib".into()],
            packages: vec!["curl".into()],
            ..Debian::default()
        };
        let line = cmd::display(&debian.mmdebstrap(Path::new("/tmp/root"), None));
        assert!(line.contains("--components=main,contrib"), "{line}");
        assert!(
            line.contains("--include=linux-image-cloud-amd64,systemd-sysv,"),
            "{line}"
        );
        assert!(line.contains(",curl "), "{line}");
        assert!(
            line.ends_with(" trixie /tmp/root http://deb.debian.org/debian"),
            "{line}"
        );
        let none = Debian {
            components: Vec::new(),
            ..Debian::default()
        };
        assert!(none.check().is_err());
    }

    #[test]
    fn each_init_gets_its_packages_and_initramfs_module() {
        for init in Init::ALL {
            assert_eq!(Init::parse(init.name()), Ok(init));
            let debian = Debian {
                init,
                ..Debian::default()
            };
            let line = cmd::display(&debian.mmdebstrap(Path::new("/t"), None));
            let include = format!(
                "--include=linux-image-cloud-amd64,{},udev,",
                init.packages().join(",")
            );
            assert!(line.contains(&include), "{line}");
            assert!(
                line.contains(&format!(" -a {} ", init.dracut_module())),
                "{line}"
            );
            let ours = line.contains("98osbuild-prepare-root");
            assert_eq!(ours, init == Init::OpenRc, "{line}");
        }
        // The systemd line is the one bases were cached under before OpenRC existed.
        let line = cmd::display(&Debian::default().mmdebstrap(Path::new("/t"), None));
        assert!(line.contains("--include=linux-image-cloud-amd64,systemd-sysv,udev,dbus,"));
        assert!(!line.contains("zz-osbuild-openrc.conf"));
        let err = Init::parse("runit").unwrap_err();
        assert!(err.contains("systemd, openrc"), "{err}");
    }

    #[test]
    fn the_openrc_dracut_conf_drops_ostree_and_systemd() {
        let line = cmd::display(
            &Debian {
                init: Init::OpenRc,
                ..Debian::default()
            }
            .mmdebstrap(Path::new("/t"), None),
        );
        assert!(line.contains("${add_dracutmodules// ostree / }"), "{line}");
        assert!(line.contains("${add_dracutmodules// systemd / }"), "{line}");
        assert!(line.contains("inst_hook pre-pivot 50"), "{line}");
    }

    #[test]
    fn the_package_cache_is_synced_in_and_out() {
        let debian = Debian::default();
        let cmd = debian.mmdebstrap(Path::new("/t"), Some(Path::new("/c/my packages")));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            args.iter().any(|a| a == "--skip=essential/unlink"),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a == "--setup-hook=sync-in '/c/my packages' /var/cache/apt/archives/"),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a == "--customize-hook=sync-out /var/cache/apt/archives '/c/my packages'"),
            "{args:?}"
        );
        let line = cmd::display(&debian.mmdebstrap(Path::new("/t"), None));
        assert!(!line.contains("sync-"), "{line}");
    }

    #[test]
    fn the_cache_key_is_what_makes_the_base() {
        let key = Debian::default().cache_key().unwrap();
        assert!(key.contains(" bookworm @TARGET@"), "{key}");
        assert!(
            key.contains("sync-in") && key.contains("@PACKAGES@"),
            "{key}"
        );
        // Each input that changes the base changes the key.
        for other in [
            Debian {
                suite: "trixie".into(),
                ..Debian::default()
            },
            Debian {
                mirror: Some("http://mirror.example/debian".into()),
                ..Debian::default()
            },
            Debian {
                components: vec!["main".into(), "contrib".into()],
                ..Debian::default()
            },
            Debian {
                kernel: "linux-image-amd64".into(),
                ..Debian::default()
            },
            Debian {
                packages: vec!["curl".into()],
                ..Debian::default()
            },
        ] {
            assert_ne!(other.cache_key().unwrap(), key, "{other:?}");
        }
        // The packages are a set.
        let ab = Debian {
            packages: vec!["jq".into(), "curl".into()],
            ..Debian::default()
        };
        let ba = Debian {
            packages: vec!["curl".into(), "jq".into(), "curl".into(), "dbus".into()],
            ..Debian::default()
        };
        assert_eq!(ab.cache_key(), ba.cache_key());
        let base = Debian::default();
        assert_ne!(base.key_at(Some("1700000000")), base.key_at(None));
        assert_ne!(
            base.key_at(Some("1700000000")),
            base.key_at(Some("1700000001"))
        );
        assert!(ab.package_list().ends_with(&["curl".into(), "jq".into()]));
    }

    fn repo(keyring: &Path) -> AptRepository {
        AptRepository {
            sources: AptSources::OneLine(
                "deb [arch=amd64,i386 trusted=yes] http://deb.debian.org/debian trixie-backports main contrib".into(),
            ),
            keyring: keyring.to_path_buf(),
        }
    }

    #[test]
    fn one_line_sources_become_deb822_signed_by_the_keyring() {
        let stanza = deb822(
            &repo(Path::new("/k.gpg")).sources,
            "/etc/apt/keyrings/osbuild-1.gpg",
        );
        assert_eq!(
            stanza,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie-backports\n\
             Components: main contrib\nArchitectures: amd64 i386\ntrusted: yes\n\
             Signed-By: /etc/apt/keyrings/osbuild-1.gpg\n"
        );
        let own = AptSources::Deb822("Types: deb\nURIs: http://x\nSuites: y\n".into());
        assert!(deb822(&own, "/k.asc").ends_with("Suites: y\nSigned-By: /k.asc\n"));
    }

    #[test]
    fn extra_repositories_reach_mmdebstrap_and_the_base_key() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("vendor.gpg");
        fs::write(&keyring, b"key one").unwrap();
        let debian = Debian {
            repositories: vec![repo(&keyring)],
            ..Debian::default()
        };
        let args: Vec<String> = debian
            .mmdebstrap(Path::new("/t"), None)
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let hook = args
            .iter()
            .find(|a| a.contains("osbuild-1.sources"))
            .unwrap_or_else(|| panic!("{args:?}"));
        assert!(hook.starts_with("--setup-hook="), "{hook}");
        // While building, apt runs outside the chroot: the keyring where it lies here.
        assert!(
            hook.contains(&format!("Signed-By: {}", keyring.display())),
            "{hook}"
        );
        // No mirror is given, so mmdebstrap still adds the updates and security suites.
        assert!(args.last().is_some_and(|a| a == "/t"), "{args:?}");
        assert_eq!(
            repository_files(0, &debian.repositories[0]).1,
            "etc/apt/keyrings/osbuild-1.gpg"
        );

        // The key holds the keyring's digest, not its path: moved, the same base;
        // changed, another.
        let key = debian.cache_key().unwrap();
        assert!(!key.contains(&*keyring.to_string_lossy()), "{key}");
        assert_ne!(key, Debian::default().cache_key().unwrap());
        let moved = dir.path().join("elsewhere.gpg");
        fs::copy(&keyring, &moved).unwrap();
        let same = Debian {
            repositories: vec![repo(&moved)],
            ..Debian::default()
        };
        assert_eq!(same.cache_key(), debian.cache_key());
        fs::write(&moved, b"key two").unwrap();
        assert_ne!(same.cache_key(), debian.cache_key());

        // A keyring that went away is refused before anything runs, by its path.
        fs::remove_file(&moved).unwrap();
        let err = format!("{:#}", same.check().unwrap_err());
        assert!(err.contains(&*moved.to_string_lossy()), "{err}");
    }

    #[test]
    fn install_repositories_points_apt_at_the_copied_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let keyring = dir.path().join("vendor.gpg");
        fs::write(&keyring, b"key").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("etc/apt/sources.list.d")).unwrap();
        install_repositories(&[repo(&keyring)], &tree).unwrap();
        assert_eq!(
            fs::read(tree.join("etc/apt/keyrings/osbuild-1.gpg")).unwrap(),
            b"key"
        );
        let sources =
            fs::read_to_string(tree.join("etc/apt/sources.list.d/osbuild-1.sources")).unwrap();
        assert!(
            sources.ends_with("Signed-By: /etc/apt/keyrings/osbuild-1.gpg\n"),
            "{sources}"
        );
    }

    #[test]
    fn the_build_hosts_resolv_conf_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("resolv.conf"), "nameserver 10.255.255.53\n").unwrap();
        fs::write(
            etc.join(".resolv.conf.systemd-resolved.bak"),
            "nameserver 10.255.255.53\n",
        )
        .unwrap();
        resolv_conf(dir.path()).unwrap();
        assert!(fs::symlink_metadata(etc.join("resolv.conf")).is_err());
        assert!(!etc.join(".resolv.conf.systemd-resolved.bak").exists());
        // With systemd-resolved: its stub, as the package itself links it.
        fs::write(etc.join("resolv.conf"), "nameserver 10.255.255.53\n").unwrap();
        fs::create_dir_all(dir.path().join("usr/lib/systemd")).unwrap();
        fs::write(dir.path().join("usr/lib/systemd/systemd-resolved"), "").unwrap();
        resolv_conf(dir.path()).unwrap();
        assert_eq!(
            fs::read_link(etc.join("resolv.conf")).unwrap(),
            Path::new(RESOLVED_STUB)
        );
    }
}
