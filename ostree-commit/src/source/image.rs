//! A base taken from a container image: fetched through skopeo's image proxy (as bootc
//! does, so registry auth, mirrors and `/etc/containers/policy.json` behave as in
//! podman), its layers streamed and applied in order, then made bootable: the kernel
//! found, and an initramfs with ostree's dracut module built inside the tree unless the
//! image brings one: at `/usr/lib/modules/KVER/initramfs.img` (bootc's place for it), or
//! a `/boot/initrd.img-KVER` that already has the module.

use super::layers;
use super::Source;
use anyhow::{bail, Context, Result};
use containers_image_proxy::{ImageProxy, ImageProxyConfig, OpenedImage};
use osbuild_core::cmd;
use osbuild_core::progress::{human_bytes, Progress};
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image transports osbuild takes, as skopeo spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `containers-storage:`: what `podman build` made, in the local storage.
    ContainersStorage,
    /// `docker://`: a registry.
    Registry,
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciDir,
    /// `oci-archive:FILE`: a tar of an OCI image layout (`podman save --format oci-archive`).
    OciArchive,
    /// `docker-archive:FILE`: `docker save`'s or `podman save`'s default format.
    DockerArchive,
}

impl Transport {
    /// Every transport, in the order errors list them.
    pub const ALL: [Transport; 5] = [
        Transport::ContainersStorage,
        Transport::Registry,
        Transport::OciDir,
        Transport::OciArchive,
        Transport::DockerArchive,
    ];

    /// The reference's prefix that names the transport.
    pub fn prefix(self) -> &'static str {
        match self {
            Transport::ContainersStorage => "containers-storage:",
            Transport::Registry => "docker://",
            Transport::OciDir => "oci:",
            Transport::OciArchive => "oci-archive:",
            Transport::DockerArchive => "docker-archive:",
        }
    }

    /// The local file or directory a reference of this transport names, if any.
    fn local_path(self, rest: &str) -> Option<PathBuf> {
        match self {
            // `oci:DIR:TAG`: the tag follows the last colon, when there is one after a `/`.
            Transport::OciDir => Some(PathBuf::from(match rest.rsplit_once(':') {
                Some((dir, tag)) if !tag.contains('/') => dir,
                _ => rest,
            })),
            Transport::OciArchive | Transport::DockerArchive => {
                Some(PathBuf::from(rest.split(':').next().unwrap_or(rest)))
            }
            Transport::ContainersStorage | Transport::Registry => None,
        }
    }
}

/// A container image, by its skopeo reference (`TRANSPORT:REF`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference, e.g. `containers-storage:localhost/sampleos:latest`.
    pub reference: String,
    /// Its transport.
    pub transport: Transport,
}

/// Where a tree from an image came from, recorded in its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOrigin {
    /// The reference the image was fetched by.
    pub reference: String,
    /// The digest of its manifest (`sha256:…`), which names this exact image.
    pub digest: String,
}

impl Image {
    /// Parse `TRANSPORT:REF`; the error says which transports there are.
    pub fn parse(reference: &str) -> Result<Image, String> {
        let supported = || {
            Transport::ALL
                .iter()
                .map(|t| t.prefix())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(transport) = Transport::ALL
            .into_iter()
            .find(|t| reference.starts_with(t.prefix()))
        else {
            return Err(format!(
                "image {reference:?} has no supported transport: write TRANSPORT:REF with one of {}",
                supported()
            ));
        };
        if reference[transport.prefix().len()..].trim().is_empty() {
            return Err(format!(
                "image {reference:?} names no image after {}",
                transport.prefix()
            ));
        }
        Ok(Image {
            reference: reference.to_string(),
            transport,
        })
    }

    /// The same image with a relative local path (`oci-archive:img.tar`) taken from `dir`.
    pub fn relative_to(self, dir: &Path) -> Image {
        match self.transport.local_path(self.rest()) {
            Some(path) if path.is_relative() => Image {
                reference: format!(
                    "{}{}",
                    self.transport.prefix(),
                    dir.join(self.rest()).display()
                ),
                transport: self.transport,
            },
            _ => self,
        }
    }

    fn rest(&self) -> &str {
        &self.reference[self.transport.prefix().len()..]
    }

    /// A runtime for the proxy's client: one worker, so that blocking readers on other
    /// threads can wait on it.
    fn runtime(&self) -> Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the image fetcher's runtime")
    }

    /// Start skopeo's proxy and open the image.
    async fn open(&self) -> Result<(ImageProxy, OpenedImage)> {
        let mut skopeo = Command::new("skopeo");
        cmd::tie(&mut skopeo);
        // podman reads registries.conf from $CONTAINERS_REGISTRIES_CONF (insecure
        // registries, mirrors); Debian 12's skopeo only from its flag.
        if let Some(conf) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            skopeo.arg("--registries-conf").arg(conf);
        }
        let mut config = ImageProxyConfig::default();
        config.skopeo_cmd = Some(skopeo);
        let proxy = ImageProxy::new_with_config(config).await.map_err(|e| {
            anyhow::anyhow!(
                "image {}: starting skopeo's image proxy: {e} (apt-get install skopeo)",
                self.reference
            )
        })?;
        let opened = proxy
            .open_image(&self.reference)
            .await
            .map_err(|e| anyhow::anyhow!("image {}: {}", self.reference, one_line(&e)))?;
        Ok((proxy, opened))
    }

    /// The digest of the image's manifest, without fetching its layers.
    pub fn digest(&self) -> Result<String> {
        self.runtime()?.block_on(async {
            let (proxy, img) = self.open().await?;
            let (digest, _) = proxy.fetch_manifest(&img).await.map_err(|e| {
                anyhow::anyhow!(
                    "image {}: reading its manifest: {}",
                    self.reference,
                    one_line(&e)
                )
            })?;
            let _ = proxy.finalize().await;
            Ok(digest)
        })
    }

    /// Fetch the image and apply its layers to `dir`; returns its manifest digest and
    /// when it was created (seconds since 1970), if it says.
    fn unpack(&self, dir: &Path) -> Result<(String, Option<i64>)> {
        let rt = self.runtime()?;
        rt.block_on(async {
            let (proxy, img) = self.open().await?;
            let what = |m: &str, e: &dyn std::fmt::Display| {
                anyhow::anyhow!("image {}: {m}: {}", self.reference, one_line(e))
            };
            let (digest, manifest) = proxy
                .fetch_manifest(&img)
                .await
                .map_err(|e| what("reading its manifest", &e))?;
            let config = proxy
                .fetch_config(&img)
                .await
                .map_err(|e| what("reading its configuration", &e))?;
            let arch = config.architecture().to_string();
            if arch != "amd64" {
                bail!(
                    "image {} is for {arch}: osbuild makes x86_64 (amd64) systems",
                    self.reference
                );
            }
            let created = config
                .created()
                .as_deref()
                .and_then(rfc3339_seconds);
            let layers = manifest.layers();
            let total: u64 = layers.iter().map(|l| l.size()).sum();
            let progress = Progress::counter(format!("Fetching {}", self.reference));
            let mut done = 0u64;
            let mut skipped = Vec::new();
            for (i, layer) in layers.iter().enumerate() {
                progress.set(done, total);
                let named = |m: String| {
                    anyhow::anyhow!(
                        "image {}: layer {} of {} ({}): {m}",
                        self.reference,
                        i + 1,
                        layers.len(),
                        layer.digest()
                    )
                };
                let (mut blob, driver) = proxy
                    .get_blob(&img, layer.digest(), layer.size())
                    .await
                    .map_err(|e| named(one_line(&e)))?;
                // The tar is read on a thread of its own, from a pipe the async side fills:
                // the blob stream and its driver must be polled together.
                let (reader, writer) = std::io::pipe().context("creating a pipe")?;
                let root = dir.to_path_buf();
                let applier = std::thread::spawn(move || apply_all(&root, reader));
                let mut sink = tokio::fs::File::from_std(fs::File::from(OwnedFd::from(writer)));
                let copy = async {
                    let r = tokio::io::copy_buf(&mut blob, &mut sink).await;
                    drop(sink);
                    r
                };
                let (copied, driven) = tokio::join!(copy, driver);
                let applied = applier
                    .join()
                    .map_err(|_| named("applying it panicked".into()))?;
                // The applier's error says what is wrong with the layer; a write error on
                // the pipe is only its consequence.
                let applied = applied.map_err(|e| named(format!("{e:#}")))?;
                copied.map_err(|e| named(format!("reading it: {e}")))?;
                driven.map_err(|e| named(one_line(&e)))?;
                skipped.extend(applied.skipped);
                done += layer.size();
            }
            progress.finish(format!(
                "Fetched {} ({} layers, {})",
                self.reference,
                layers.len(),
                human_bytes(total)
            ));
            if !skipped.is_empty() {
                tracing::info!(
                    "image {}: {} device nodes or FIFOs left out (an OSTree commit holds none; udev and systemd make them at boot): {}",
                    self.reference,
                    skipped.len(),
                    skipped.join(" ")
                );
            }
            let _ = proxy.finalize().await;
            Ok((digest, created))
        })
    }
}

/// Apply a layer, then drain what is left of the stream so the writer side never blocks.
fn apply_all(root: &Path, mut reader: impl Read) -> Result<layers::Applied> {
    let applied = layers::apply(root, &mut reader)?;
    std::io::copy(&mut reader, &mut std::io::sink()).context("reading the layer's end")?;
    Ok(applied)
}

/// The first line of an error from skopeo, which can run to many, without the proxy
/// protocol's "failed to invoke method OpenImage: ".
fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    match line.strip_prefix("failed to invoke method ") {
        Some(rest) => rest.split_once(": ").map_or(rest, |(_, m)| m).to_string(),
        None => line.to_string(),
    }
}

/// Seconds since 1970 of an RFC 3339 time (`2026-12-01T10:00:00.123Z`, or with an offset).
fn rfc3339_seconds(t: &str) -> Option<i64> {
    let (date, rest) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let time: String = rest.chars().take(8).collect();
    let mut hms = time.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let tail = &rest[8.min(rest.len())..];
    let tail = tail.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match tail {
        "Z" | "z" | "" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + min * 60 + s - offset)
}

/// Kernel versions in a plain tree: Debian puts the kernel at /boot/vmlinuz-KVER, bootc
/// images at /usr/lib/modules/KVER/vmlinuz.
fn kernels(root: &Path) -> Vec<String> {
    let mut kvers: Vec<String> = fs::read_dir(root.join("usr/lib/modules"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|k| {
            root.join("boot").join(format!("vmlinuz-{k}")).is_file()
                || root
                    .join("usr/lib/modules")
                    .join(k)
                    .join("vmlinuz")
                    .is_file()
        })
        .collect();
    kvers.sort();
    kvers
}

/// `argv` run chrooted in `root` with /proc, /sys and /dev mounted (dracut and lsinitrd
/// need them; the image has none of its device nodes), in a mount namespace of its own so
/// that nothing stays mounted in the tree whatever happens.
fn chrooted(root: &Path, argv: &[&str]) -> Command {
    for d in ["proc", "sys", "dev"] {
        // An image without them gets them in its tree, as every OSTree tree has them.
        let _ = fs::create_dir_all(root.join(d));
    }
    let script = "set -e; r=\"$1\"; shift; \
         mount -t proc proc \"$r/proc\"; mount --rbind /sys \"$r/sys\"; mount --rbind /dev \"$r/dev\"; \
         exec chroot \"$r\" \"$@\"";
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(root)
    .args(argv);
    c
}

/// What ostree's dracut module puts into an initramfs: the unit that mounts the deployment.
const PREPARE_ROOT_UNIT: &str = "usr/lib/systemd/system/ostree-prepare-root.service";

/// The ostree dracut module, which Debian's ostree-boot ships.
const OSTREE_DRACUT_MODULE: &str = "usr/lib/dracut/modules.d/98ostree";

/// Give each kernel of the tree an initramfs that can boot an OSTree deployment, unless
/// the image brings its own at /usr/lib/modules/KVER/initramfs.img.
fn make_bootable(reference: &str, root: &Path, epoch: Option<i64>) -> Result<()> {
    let kvers = kernels(root);
    if kvers.is_empty() {
        bail!(
            "image {reference} has no kernel: install one in its Containerfile \
             (RUN apt-get install -y linux-image-amd64, or linux-image-cloud-amd64 for VMs)"
        );
    }
    let missing: Vec<&String> = kvers
        .iter()
        .filter(|k| {
            !root
                .join("usr/lib/modules")
                .join(k)
                .join("initramfs.img")
                .is_file()
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for kver in missing {
        // The image's own initramfs, when its dracut already added ostree's module
        // (ostree-boot's dracut.conf.d asks for it): what the image author built and
        // tested, and no time spent building another.
        let distro = format!("boot/initrd.img-{kver}");
        if root.join(&distro).is_file() && root.join("usr/bin/lsinitrd").is_file() {
            // One file printed, not the whole listing: 0.8 s instead of 3.7 s here.
            let mut probe = chrooted(
                root,
                &["lsinitrd", "-f", PREPARE_ROOT_UNIT, &format!("/{distro}")],
            );
            let out = cmd::output(&mut probe).with_context(|| {
                format!("image {reference}: reading the initramfs of kernel {kver}")
            })?;
            if out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("ostree-prepare-root")
            {
                tracing::info!("image {reference}: /{distro} has ostree's module: kept");
                continue;
            }
        }
        let lacks: Vec<&str> = [
            ("dracut", "usr/bin/dracut"),
            ("ostree-boot", OSTREE_DRACUT_MODULE),
        ]
        .into_iter()
        .filter(|(_, p)| !root.join(p).exists())
        .map(|(pkg, _)| pkg)
        .collect();
        if !lacks.is_empty() {
            bail!(
                "image {reference} has a kernel but no initramfs that can boot OSTree, and osbuild builds one with the image's own dracut: install {} in its Containerfile (RUN apt-get install -y {})",
                lacks.join(" and "),
                lacks.join(" ")
            );
        }
        let progress = Progress::spinner(format!("Building the initramfs of {kver} with dracut"));
        let target = format!("/usr/lib/modules/{kver}/initramfs.img");
        let mut dracut = chrooted(
            root,
            &[
                "dracut",
                "--no-hostonly",
                "--force",
                "--reproducible",
                "-a",
                "ostree",
                "--kver",
                kver,
                &target,
            ],
        );
        // --reproducible clamps the archive's times to SOURCE_DATE_EPOCH: the image's
        // creation time unless the build sets one, so one image gives one initramfs.
        if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
            if let Some(t) = epoch {
                dracut.env("SOURCE_DATE_EPOCH", t.to_string());
            }
        }
        cmd::run(&mut dracut).with_context(|| {
            format!("image {reference}: building the initramfs of kernel {kver} with dracut")
        })?;
        osbuild_core::fsutil::remove_all(&root.join(&distro))?;
        progress.finish(format!(
            "Built the initramfs of {kver} (with ostree's module)"
        ));
    }
    Ok(())
}

impl Source for Image {
    fn describe(&self) -> String {
        format!("image {}", self.reference)
    }

    fn check(&self) -> Result<()> {
        if let Some(path) = self.transport.local_path(self.rest()) {
            if !path.exists() {
                bail!(
                    "image {}: {} does not exist",
                    self.reference,
                    path.display()
                );
            }
        }
        if which("skopeo").is_none() {
            bail!(
                "image {}: skopeo is needed to fetch container images (apt-get install skopeo)",
                self.reference
            );
        }
        Ok(())
    }

    fn build(&self, dir: &Path, _packages: Option<&Path>) -> Result<super::Built> {
        let (digest, created) = self.unpack(dir)?;
        make_bootable(&self.reference, dir, created)?;
        Ok(super::Built {
            image: Some(ImageOrigin {
                reference: self.reference.clone(),
                digest,
            }),
        })
    }
}

/// The path of `tool` on the PATH.
fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_one_of_the_transports() {
        for t in Transport::ALL {
            let r = format!("{}x", t.prefix());
            assert_eq!(Image::parse(&r).unwrap().transport, t, "{r}");
        }
        for bad in [
            "quay.io/fedora/fedora",
            "dir:/tmp/x",
            "docker-daemon:x:1",
            "ostree:repo",
        ] {
            let err = Image::parse(bad).unwrap_err();
            assert!(err.contains("no supported transport"), "{err}");
            assert!(err.contains("containers-storage:, docker://"), "{err}");
        }
        let err = Image::parse("docker://").unwrap_err();
        assert!(err.contains("names no image"), "{err}");
        let oci = Image::parse("oci:/srv/layout:v1").unwrap();
        assert_eq!(
            oci.transport.local_path(oci.rest()),
            Some(PathBuf::from("/srv/layout"))
        );
        let archive = Image::parse("oci-archive:/tmp/a.tar").unwrap();
        assert_eq!(
            archive.transport.local_path(archive.rest()),
            Some(PathBuf::from("/tmp/a.tar"))
        );
    }

    #[test]
    fn a_missing_local_image_is_refused_before_skopeo_runs() {
        let image = Image::parse("oci-archive:/nonexistent/osbuild.tar").unwrap();
        let err = image.check().unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/osbuild.tar does not exist"),
            "{err}"
        );
        assert!(err.contains("image oci-archive:"), "{err}");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_seconds("2026-12-01T10:20:30.123456789Z"),
            Some(1_796_120_430)
        );
        assert_eq!(
            rfc3339_seconds("2026-12-01T12:20:30+02:00"),
            Some(1_796_120_430)
        );
        assert_eq!(rfc3339_seconds("yesterday"), None);
    }

    #[test]
    fn an_image_without_a_kernel_or_dracut_says_what_to_install() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = make_bootable("containers-storage:x", root, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has no kernel") && err.contains("linux-image-amd64"),
            "{err}"
        );
        fs::create_dir_all(root.join("usr/lib/modules/6.1.0-1-amd64")).unwrap();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinuz-6.1.0-1-amd64"), "k").unwrap();
        let err = make_bootable("containers-storage:x", root, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("install dracut and ostree-boot"), "{err}");
        // An image that brings its initramfs where bootc puts it needs nothing built.
        fs::write(
            root.join("usr/lib/modules/6.1.0-1-amd64/initramfs.img"),
            "i",
        )
        .unwrap();
        make_bootable("containers-storage:x", root, None).unwrap();
    }
}
