//! A physical sysroot in a directory, set up and deployed through libostree's Sysroot API:
//! what `ostree admin init-fs`, `os-init` and `deploy` do, without the CLI.

use crate::bootloader::Boot;
use crate::ImageSpec;
use anyhow::{Context, Result};
use osbuild_core::gio::prelude::FileExt;
use osbuild_core::glib;
use osbuild_core::{gio, ostree};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A sysroot being built for an image.
#[derive(Debug)]
pub struct Sysroot {
    path: PathBuf,
    inner: ostree::Sysroot,
}

/// The deployment written into the sysroot.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The deployed commit.
    pub checksum: String,
    /// The stateroot it was deployed into.
    pub osname: String,
    /// The deployment's root directory inside the sysroot.
    pub root: PathBuf,
}

impl Sysroot {
    /// Create the physical root's directories and an initialized sysroot at `path`, with
    /// the boot loader configuration libostree will maintain (none without `boot`: a live
    /// ISO's loaders boot the one deployment it has).
    pub(crate) fn create(path: &Path, boot: Option<Boot>) -> Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        // The mount points of the physical root, as `ostree admin init-fs` makes them.
        for (dir, mode) in [
            ("boot", 0o755),
            ("dev", 0o755),
            ("home", 0o755),
            ("proc", 0o755),
            ("run", 0o755),
            ("sys", 0o755),
            ("tmp", 0o1777),
            ("root", 0o700),
        ] {
            let p = path.join(dir);
            fs::create_dir_all(&p)
                .and_then(|()| fs::set_permissions(&p, fs::Permissions::from_mode(mode)))
                .with_context(|| format!("creating {}", p.display()))?;
        }
        let inner = ostree::Sysroot::new(Some(&gio::File::for_path(path)));
        inner
            .ensure_initialized(gio::Cancellable::NONE)
            .context("initializing the sysroot")?;
        if let Some(boot) = boot {
            boot.prepare_sysroot(path)?;
        }
        let repo = ostree::Repo::new_for_path(path.join("ostree/repo"));
        repo.open(gio::Cancellable::NONE)
            .context("opening the sysroot repository")?;
        let config = repo.copy_config();
        let backend = boot.map_or("none", |b| b.bootloader.ostree_backend());
        config.set_string("sysroot", "bootloader", backend);
        // /boot lives on the root filesystem, so boot entries must name /boot/ostree/….
        config.set_boolean("sysroot", "bootprefix", true);
        repo.write_config(&config)
            .context("writing the sysroot repository config")?;
        inner
            .load(gio::Cancellable::NONE)
            .context("loading the sysroot")?;
        // A scratch sysroot: nothing in it needs to survive a crash, and the image
        // written from it is synced once at the end. libostree's per-object and per-file
        // fsyncs (pull, checkout, deploy) would otherwise dominate the build's time. This
        // is in-memory only; the device's repo config keeps fsync on.
        inner.repo().set_disable_fsync(true);
        Ok(Sysroot {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// Add the device's remote, pull the ref and deploy it as the default deployment.
    pub fn deploy_from_remote(&self, spec: &ImageSpec) -> Result<Deployed> {
        let cancellable = gio::Cancellable::NONE;
        self.inner
            .init_osname(&spec.os, cancellable)
            .with_context(|| format!("creating the stateroot {}", spec.os))?;
        let repo = self.inner.repo();
        let remote_url = spec.remote_url.as_deref().unwrap_or(&spec.url);
        let opts = glib::VariantDict::new(None);
        // With a key, the device refuses commits it does not sign, and so does this pull.
        opts.insert("gpg-verify", spec.gpg_key.is_some());
        repo.remote_add(
            &spec.remote_name,
            Some(remote_url),
            Some(&opts.end()),
            cancellable,
        )
        .with_context(|| format!("adding remote {} ({remote_url})", spec.remote_name))?;
        if let Some(key) = &spec.gpg_key {
            import_gpg_key(&repo, &spec.remote_name, key)?;
        }

        let branch = match &spec.branch {
            Some(branch) => branch.clone(),
            None => crate::pull::only_ref(&spec.url)?,
        };
        let checksum = crate::pull::pull(&repo, &spec.remote_name, &branch, &spec.url)
            .with_context(|| match &spec.gpg_key {
                Some(key) => format!(
                    "{branch} must be signed by the key in --gpg-key {} (sign it with `ostree gpg-sign`, or leave --gpg-key out)",
                    key.display()
                ),
                None => format!("fetching {branch}"),
            })?;
        self.deploy(
            &spec.os,
            &format!("{}:{branch}", spec.remote_name),
            &checksum,
            &spec.kernel_args(),
        )
    }

    /// Deploy `checksum` (already in the sysroot repo) with `refspec` as its origin.
    pub fn deploy(
        &self,
        os: &str,
        refspec: &str,
        checksum: &str,
        kargs: &[String],
    ) -> Result<Deployed> {
        let cancellable = gio::Cancellable::NONE;
        let origin = self.inner.origin_new_from_refspec(refspec);
        let kargs: Vec<&str> = kargs.iter().map(String::as_str).collect();
        let opts = ostree::SysrootDeployTreeOpts {
            override_kernel_argv: Some(&kargs),
            ..Default::default()
        };
        let deployment = self
            .inner
            .deploy_tree_with_options(
                Some(os),
                checksum,
                Some(&origin),
                None,
                Some(&opts),
                cancellable,
            )
            .with_context(|| format!("deploying {checksum}"))?;
        self.inner
            .simple_write_deployment(
                Some(os),
                &deployment,
                None,
                ostree::SysrootSimpleWriteDeploymentFlags::NONE,
                cancellable,
            )
            .context("writing the deployment and boot loader configuration")?;
        self.inner
            .load(cancellable)
            .context("reloading the sysroot")?;
        let root = self
            .path
            .join(self.inner.deployment_dirpath(&deployment).as_str());
        Ok(Deployed {
            checksum: checksum.to_string(),
            osname: os.to_string(),
            root,
        })
    }

    /// Where the sysroot is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Clear the immutable flag libostree sets on deployment directories, so the sysroot
    /// can be removed once the image is written.
    pub fn release(&self) -> Result<()> {
        let _ = self.inner.load(gio::Cancellable::NONE);
        for d in self.inner.deployments() {
            self.inner
                .deployment_set_mutable(&d, true, gio::Cancellable::NONE)
                .with_context(|| format!("making deployment {} removable", d.csum()))?;
        }
        Ok(())
    }
}

/// Import every public key in `key` into `remote`'s keyring (`ostree remote gpg-import`).
fn import_gpg_key(repo: &ostree::Repo, remote: &str, key: &Path) -> Result<()> {
    let not_a_key = || {
        format!(
            "--gpg-key {}: not a GPG public key (export one with `gpg --export KEYID > FILE`)",
            key.display()
        )
    };
    // The binding takes key IDs as a slice, where an empty one selects no key (libostree
    // takes all only from a NULL list): name the file's keys, as gpg lists them.
    let ids = key_ids(key).with_context(not_a_key)?;
    anyhow::ensure!(!ids.is_empty(), "{}", not_a_key());
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let stream = gio::File::for_path(key)
        .read(gio::Cancellable::NONE)
        .with_context(|| format!("reading the GPG key {}", key.display()))?;
    let imported = repo
        .remote_gpg_import(remote, Some(&stream), &ids, gio::Cancellable::NONE)
        .with_context(not_a_key)?;
    anyhow::ensure!(imported > 0, "{}", not_a_key());
    Ok(())
}

/// The fingerprints of the public keys in the file `key` (binary or armored).
fn key_ids(key: &Path) -> Result<Vec<String>> {
    // A throwaway home: listing a file must not create or touch the user's ~/.gnupg.
    let home = tempfile::tempdir().context("creating a GPG home")?;
    let listing = osbuild_core::cmd::run(
        std::process::Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(key),
    )?;
    // The primary key's fingerprint follows its `pub` line; subkeys' follow `sub`.
    let mut ids = Vec::new();
    let mut after_pub = false;
    for line in listing.lines() {
        let field = |n: usize| line.split(':').nth(n).unwrap_or_default();
        match field(0) {
            "pub" => after_pub = true,
            "fpr" if after_pub => {
                ids.push(field(9).to_string());
                after_pub = false;
            }
            _ => after_pub = false,
        }
    }
    Ok(ids)
}
