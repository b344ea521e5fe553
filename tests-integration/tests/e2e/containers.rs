//! Containers as the OS source, end to end: examples/container/Containerfile (FROM the
//! base compose/make-base.sh imports, adding a kernel and jq) is built with `podman
//! build` and committed from `containers-storage:`; the same image pushed to a real
//! registry on loopback (Debian's docker-registry) and saved with `podman save --format
//! oci-archive` gives the same root tree. A manifest with `[base] image` (an archive of
//! the image less its initramfs, beside it: osbuild builds one with the image's dracut)
//! adds the serial console's shell, is imaged, and boots in qemu with jq there.
//! Bad images (no kernel, unknown, unreachable, a transport we do not take, a layer that is
//! not a tar) are one-line errors that name the image and leave no ref behind.
//!
//! Needs root, podman, skopeo, docker-registry, qemu and the Debian mirror (podman build
//! runs apt).

use anyhow::{Context, Result};
use osbuild_core::cmd;
use osbuild_testing::guest::{boot_into, check_all, osbuild, shell_ready, Timings};
use osbuild_testing::guest_config;
use osbuild_testing::helpers::{
    free_port, osbuild_bin, output, run, workspace_root, Daemon, PODMAN_ARGS,
};
use osbuild_testing::{require, Need};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tag the test builds the example under.
const IMAGE: &str = "localhost/osbuild-e2e-container:latest";
const BRANCH: &str = "container/x86_64";
/// What the registry test tags the image as.
const PUSHED: &str = "osbuild/container:latest";

fn path(p: &Path) -> Result<String> {
    p.to_str().map(str::to_string).context("path")
}

/// compose/make-base.sh's base image, made once per run: both tests of this file need it
/// and libtest runs them side by side, while make-base.sh is not safe to run twice at once.
fn base_image() -> Result<()> {
    static MADE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        cmd::run_inherit(Command::new("bash").arg(workspace_root().join("compose/make-base.sh")))
            .map_err(|e| format!("making the base image with compose/make-base.sh: {e}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// The base image and the example built on it.
fn build_example() -> Result<()> {
    // Made once and reused (make-base.sh does nothing when the image exists).
    base_image()?;
    let dir = workspace_root().join("examples/container");
    cmd::run_inherit(
        Command::new("podman")
            .arg("build")
            .args(PODMAN_ARGS)
            .args(["--tag", IMAGE, "--file"])
            .arg(dir.join("Containerfile"))
            .arg(&dir),
    )
    .context("podman build of examples/container")?;
    Ok(())
}

/// `osbuild commit --image REF` into `repo`, with `env` set; the printed line.
fn commit_image(repo: &Path, reference: &str, env: &[(&str, &Path)]) -> Result<String> {
    let mut c = Command::new(osbuild_bin());
    c.args(["commit", "--image", reference, "--repo"])
        .arg(repo)
        .args(["--branch", BRANCH]);
    for (k, v) in env {
        c.env(k, v);
    }
    cmd::run(&mut c)
        .map(|s| s.trim().to_string())
        .with_context(|| format!("committing {reference}"))
}

/// The content checksum of the branch head's root tree: what two sources must agree on.
fn tree_of(repo: &Path) -> Result<String> {
    let shown = run(Command::new("ostree")
        .arg("show")
        .arg(format!("--repo={}", repo.display()))
        .arg(BRANCH));
    shown
        .lines()
        .find_map(|l| l.strip_prefix("ContentChecksum:"))
        .map(|s| s.trim().to_string())
        .with_context(|| format!("no ContentChecksum in {shown}"))
}

fn metadata(repo: &Path, key: &str) -> String {
    run(Command::new("ostree")
        .arg("show")
        .arg(format!("--repo={}", repo.display()))
        .arg(format!("--print-metadata-key={key}"))
        .arg(BRANCH))
    .trim()
    .trim_matches('\'')
    .to_string()
}

/// Debian's docker-registry on loopback, storing into `dir`, and the registries.conf that
/// lets skopeo and podman talk plain HTTP to it.
fn registry(dir: &Path) -> Result<(Daemon, u16, PathBuf)> {
    let port = free_port();
    fs::create_dir_all(dir.join("storage"))?;
    let config = dir.join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("storage").display()
        ),
    )?;
    let daemon = Daemon::start(
        Command::new("docker-registry").arg("serve").arg(&config),
        port,
        Some(&dir.join("registry.log")),
    )?;
    let conf = dir.join("registries.conf");
    fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"127.0.0.1:{port}\"\ninsecure = true\n"),
    )?;
    Ok((daemon, port, conf))
}

#[test]
fn a_containerfile_becomes_a_booting_commit() -> Result<()> {
    if !require(&[
        Need::Root,
        Need::Podman,
        Need::Skopeo,
        Need::DockerRegistry,
        Need::Mmdebstrap,
        Need::Qemu,
        Need::DebianMirror,
    ]) {
        return Ok(());
    }
    let mut t = Timings::default();
    let work = tempfile::Builder::new()
        .prefix("containers-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let w = work.path();
    t.time("podman build (and the base image)", build_example)?;

    // containers-storage: what podman build made.
    let repo = w.join("repo");
    let storage = format!("containers-storage:{IMAGE}");
    let first = t.time("commit from containers-storage", || {
        commit_image(&repo, &storage, &[])
    })?;
    anyhow::ensure!(first.len() == 64, "commit printed {first:?}");
    let tree = tree_of(&repo)?;
    let digest = metadata(&repo, "osbuild.image-digest");
    anyhow::ensure!(digest.starts_with("sha256:"), "image digest {digest:?}");
    anyhow::ensure!(
        metadata(&repo, "osbuild.image") == storage,
        "the commit does not name {storage}"
    );
    // The same digest again: nothing fetched, nothing committed.
    let again = t.time("commit the same digest again", || {
        commit_image(&repo, &storage, &[])
    })?;
    anyhow::ensure!(again == format!("unchanged: {first}"), "{again}");

    // docker://: the same image through a real registry.
    let (_registry, port, conf) = registry(&w.join("registry"))?;
    let remote = format!("127.0.0.1:{port}/{PUSHED}");
    t.time("podman push to the registry", || {
        cmd::run(
            Command::new("podman")
                .args(["push", "--tls-verify=false", IMAGE])
                .arg(format!("docker://{remote}")),
        )
        .map(drop)
        .context("podman push")
    })?;
    let from_registry = w.join("repo-registry");
    t.time("commit from docker://", || {
        commit_image(
            &from_registry,
            &format!("docker://{remote}"),
            &[("CONTAINERS_REGISTRIES_CONF", &conf)],
        )
    })?;
    anyhow::ensure!(
        tree_of(&from_registry)? == tree,
        "docker://{remote} gave another tree than {storage}"
    );

    // oci-archive: podman save's OCI archive.
    let src = w.join("src");
    fs::create_dir_all(&src)?;
    let save = |image: &str, archive: &Path| {
        cmd::run(
            Command::new("podman")
                .args(["save", "--format", "oci-archive", "--output"])
                .arg(archive)
                .arg(image),
        )
        .map(drop)
        .context("podman save")
    };
    let archive = w.join("image.tar");
    t.time("podman save --format oci-archive", || save(IMAGE, &archive))?;
    let from_archive = w.join("repo-archive");
    t.time("commit from oci-archive:", || {
        commit_image(
            &from_archive,
            &format!("oci-archive:{}", archive.display()),
            &[],
        )
    })?;
    anyhow::ensure!(
        tree_of(&from_archive)? == tree,
        "oci-archive:{} gave another tree than {storage}",
        archive.display()
    );

    // The image booted: the example without the initramfs its dracut made (a layer with
    // a whiteout), so that osbuild builds one with the image's dracut.
    let derived = w.join("derived");
    fs::create_dir_all(&derived)?;
    fs::write(
        derived.join("Containerfile"),
        format!("FROM {IMAGE}\nRUN rm /boot/initrd.img-*\n"),
    )?;
    t.time("podman build without the initramfs, and save", || {
        cmd::run(
            Command::new("podman")
                .arg("build")
                .args(PODMAN_ARGS)
                .args(["--tag", "localhost/osbuild-e2e-container:no-initramfs"])
                .arg(&derived),
        )
        .context("podman build")?;
        save(
            "localhost/osbuild-e2e-container:no-initramfs",
            &src.join("image.tar"),
        )
    })?;

    // The manifest: the image, plus the serial console's shell and the boot report.
    cmd::run(
        Command::new("cp")
            .arg("-a")
            .arg(workspace_root().join("examples/overlay"))
            .arg(&src),
    )?;
    fs::write(
        src.join("osbuild.toml"),
        "name = \"container\"\nref = \"{name}/{arch}\"\nversion = \"1\"\noverlays = [\"overlay\"]\n\n\
         [base]\nimage = \"oci-archive:image.tar\"\n\n\
         [[files]]\npath = \"/usr/lib/osbuild-example/release\"\ncontent = \"container\\n\"\n",
    )?;
    let boot_repo = w.join("repo-boot");
    let commit = t.time("commit from a manifest with [base] image", || {
        osbuild(&[
            "commit",
            "--manifest",
            &path(&src.join("osbuild.toml"))?,
            "--repo",
            &path(&boot_repo)?,
        ])
    })?;
    let image = w.join("disk.img");
    t.time("make-image", || {
        osbuild(&[
            "make-image",
            "--repo",
            &path(&boot_repo)?,
            "--output",
            &path(&image)?,
        ])
    })?;
    let mut vm = t.time("boot to marker", || {
        boot_into(
            guest_config(&image).log(w.join("boot.log")),
            &commit,
            "container",
        )
    })?;
    t.time("checks in the guest", || {
        shell_ready(&mut vm)?;
        check_all(
            &mut vm,
            "container",
            &[
                ("package", "jq --version", "jq-1."),
                (
                    "containerfile",
                    "cat /etc/motd",
                    "built from a Containerfile",
                ),
                ("kernel", "uname -r", "-cloud-amd64"),
                (
                    "deployment",
                    "ostree admin status",
                    &format!("* debian {commit}.0"),
                ),
                ("hostname", "hostname", "localhost"),
            ],
        )
    })?;
    t.report("containers");
    Ok(())
}

/// An OCI layout in `dir` whose one layer is `layer` (verbatim: digests match, the
/// content is what it is).
fn oci_layout(dir: &Path, layer: &[u8]) -> Result<()> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |data: &[u8]| -> Result<(String, usize)> {
        let tmp = blobs.join("tmp");
        fs::write(&tmp, data)?;
        let sum = run(Command::new("sha256sum").arg(&tmp));
        let hex = sum
            .split_whitespace()
            .next()
            .context("sha256sum")?
            .to_string();
        fs::rename(&tmp, blobs.join(&hex))?;
        Ok((format!("sha256:{hex}"), data.len()))
    };
    let (layer_digest, layer_size) = put(layer)?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    );
    let (config_digest, config_size) = put(config.as_bytes())?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
    );
    let (manifest_digest, manifest_size) = put(manifest.as_bytes())?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"bad"}}}}]}}"#
        ),
    )?;
    Ok(())
}

#[test]
fn bad_images_are_one_line_errors_that_leave_nothing() -> Result<()> {
    if !require(&[Need::Root, Need::Podman, Need::Skopeo, Need::Mmdebstrap]) {
        return Ok(());
    }
    base_image()?;
    let work = tempfile::Builder::new()
        .prefix("containers-bad-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let w = work.path();
    // A repository with a branch already: a failed commit must leave it as it was.
    let repo = w.join("repo");
    let tree = w.join("tree");
    osbuild_testing::helpers::deployable_tree(&tree, b"kernel");
    osbuild(&[
        "commit",
        "--repo",
        &path(&repo)?,
        "--branch",
        BRANCH,
        "--tree",
        &path(&tree)?,
    ])?;
    let refs = || {
        run(Command::new("ostree")
            .arg("refs")
            .arg(format!("--repo={}", repo.display())))
    };
    let head = || {
        run(Command::new("ostree")
            .arg("rev-parse")
            .arg(format!("--repo={}", repo.display()))
            .arg(BRANCH))
    };
    let (refs_before, head_before) = (refs(), head());

    let bad_layer = w.join("bad-layer");
    oci_layout(
        &bad_layer,
        &b"not a tar archive, whatever its name says ".repeat(30),
    )?;
    let closed = free_port();
    let cases: Vec<(String, &str)> = vec![
        (
            "containers-storage:localhost/osbuild-base:bookworm".into(),
            "has no kernel",
        ),
        (
            "containers-storage:localhost/osbuild-no-such-image:latest".into(),
            "osbuild-no-such-image",
        ),
        (
            format!("docker://127.0.0.1:{closed}/osbuild/none:1"),
            "connection refused",
        ),
        ("dir:/srv/image".into(), "no supported transport"),
        (
            format!("oci:{}:bad", bad_layer.display()),
            "layer 1 of 1 (sha256:",
        ),
    ];
    let mut failed = Vec::new();
    for (reference, expected) in &cases {
        let out = output(
            Command::new(osbuild_bin())
                .args(["commit", "--image", reference, "--repo"])
                .arg(&repo)
                .args(["--branch", BRANCH]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        eprintln!("{reference}: {}", error.join(" / "));
        let ok = !out.status.success()
            && error.len() == 1
            && error[0].contains(reference.as_str())
            && error[0].to_lowercase().contains(&expected.to_lowercase())
            && !error[0].contains("failed to invoke method");
        if !ok {
            failed.push(format!(
                "{reference}: status {}, stderr:\n{stderr}",
                out.status
            ));
        }
        if refs() != refs_before || head() != head_before {
            failed.push(format!("{reference}: the repository's refs changed"));
        }
    }
    // No tree left behind beside the repository either.
    let leftovers: Vec<_> = fs::read_dir(w)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".osbuild-tree-"))
        .collect();
    anyhow::ensure!(leftovers.is_empty(), "left behind: {leftovers:?}");
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("\n"));
    Ok(())
}
