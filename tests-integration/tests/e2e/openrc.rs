//! OpenRC, end to end: a Debian OS with `init = "openrc"` is bootstrapped, committed,
//! served and made into an image with make-image's defaults (GRUB on a hybrid disk),
//! booted in qemu (the deployment mounted by osbuild's dracut module, without systemd),
//! upgraded with `osbuild admin upgrade` (staged), and rebooted: OpenRC's
//! ostree-finalize-staged service must write the staged deployment at shutdown, so the
//! next boot runs the new commit with the old one kept as the rollback.
//!
//! One bootstrap (cached under target/tmp/fixtures, keyed by the manifest and the
//! sources that shape a tree) and two boots. Needs root, mmdebstrap, qemu and the
//! Debian mirror.

use anyhow::{Context, Result};
use osbuild_core::cmd;
use osbuild_testing::fixture::{self, Key};
use osbuild_testing::guest::{
    boot_into, check_all, commit, osbuild, probe, serve, shell_ready, Timings,
};
use osbuild_testing::guest_config;
use osbuild_testing::{require, Need};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BRANCH: &str = "openrc-demo/x86_64";

/// sysvinit's inittab, with root logged in on the serial console so the test can drive
/// the guest (the systemd trees get the same from examples/overlay).
const INITTAB: &str = "id:2:initdefault:
si::sysinit:/etc/init.d/rcS
l0:0:wait:/etc/init.d/rc 0
l1:1:wait:/etc/init.d/rc 1
l2:2:wait:/etc/init.d/rc 2
l3:3:wait:/etc/init.d/rc 3
l4:4:wait:/etc/init.d/rc 4
l5:5:wait:/etc/init.d/rc 5
l6:6:wait:/etc/init.d/rc 6
ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now
T0:2345:respawn:/sbin/agetty --autologin root --noclear -L 115200 ttyS0 vt100
";

/// The OpenRC twin of examples/overlay's osbuild-report.service: the booted commit and
/// release on the console.
const REPORT: &str = "#!/sbin/openrc-run
description=\"Report the booted OSTree deployment on the console\"

depend() {
\tafter networking
}

start() {
\tbooted=$(ostree admin status | sed -n 's/^\\* [^ ]* \\([0-9a-f]\\{64\\}\\)\\..*/\\1/p')
\techo \"OSBUILD-BOOTED commit=${booted:-unknown} release=$(cat /usr/lib/osbuild-example/release)\" > /dev/console
}
";

fn manifest_text() -> String {
    format!(
        r#"name = "openrc-demo"
hostname = "openrc-demo"
ref = "{BRANCH}"

[base]
distro = "debian"
init = "openrc"

[[files]]
path = "/usr/lib/osbuild-example/release"
content = "openrc-1\n"

[[files]]
path = "/etc/inittab"
content = """{INITTAB}"""

[[files]]
path = "/etc/init.d/osbuild-report"
mode = "0755"
content = '''{REPORT}'''

[scripts]
post = ["enable-report.sh"]
"#
    )
}

/// Write an executable script.
fn write_script(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    cmd::run(Command::new("chmod").arg("755").arg(path))?;
    Ok(())
}

fn write_manifest(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    write_script(
        &dir.join("enable-report.sh"),
        "#!/bin/sh\nset -e\nrc-update add osbuild-report default\n",
    )?;
    let manifest = dir.join("osbuild.toml");
    fs::write(&manifest, manifest_text())?;
    Ok(manifest)
}

#[test]
fn openrc_boots_upgrades_and_finalizes_at_shutdown() -> Result<()> {
    if !require(&[Need::Root, Need::Mmdebstrap, Need::Qemu, Need::DebianMirror]) {
        return Ok(());
    }
    let mut t = Timings::default();
    let work = tempfile::Builder::new()
        .prefix("openrc-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let manifest = write_manifest(&work.path().join("src"))?;
    let src = manifest.parent().context("path")?.to_path_buf();
    let rootfs = t.time("bootstrap OpenRC (or cached fixture)", || {
        fixture::bootstrapped(
            Path::new(env!("CARGO_TARGET_TMPDIR")),
            "openrc",
            &manifest,
            Key::new("openrc").path(&src)?,
        )
    })?;
    // What makes it an OpenRC tree, checked before anything boots.
    for path in [
        "usr/etc/init.d/ostree-finalize-staged",
        "usr/etc/runlevels/off/ostree-finalize-staged",
        "usr/etc/runlevels/default/osbuild-boot",
        "usr/etc/network/interfaces.d/osbuild-dhcp",
    ] {
        // Runlevel entries are absolute links, into the tree rather than this host.
        anyhow::ensure!(
            fs::symlink_metadata(rootfs.join(path)).is_ok(),
            "the OpenRC tree has no {path}"
        );
    }
    let tree = work.path().join("tree");
    // Hard links: the commit reads the cached fixture without copying it.
    cmd::run(Command::new("cp").arg("-al").arg(&rootfs).arg(&tree))?;
    let repo = work.path().join("repo");
    let c1 = t.time("commit", || commit(&repo, BRANCH, &tree, Some("1")))?;

    let (_server, port) = serve(&repo)?;
    let image = work.path().join("disk.img");
    let path = |p: &Path| p.to_str().map(str::to_string).context("path");
    t.time("make-image", || {
        osbuild(&[
            "make-image",
            "--url",
            &format!("http://127.0.0.1:{port}/repo/"),
            "--remote-url",
            &format!("http://10.0.2.2:{port}/repo/"),
            "--branch",
            BRANCH,
            "--output",
            &path(&image)?,
        ])
    })?;

    let mut vm = t.time("boot to marker", || {
        boot_into(
            guest_config(&image).log(work.path().join("boot1.log")),
            &c1,
            "openrc-1",
        )
    })?;
    t.time("checks in the guest", || {
        shell_ready(&mut vm)?;
        check_all(
            &mut vm,
            "openrc",
            &[
                ("pid1", "cat /proc/1/comm", "init"),
                ("openrc", "rc-status --runlevel", "default"),
                ("booted", "test -e /run/ostree-booted && echo yes", "yes"),
                // ostree-prepare-root bound the stateroot's /var, as asked by our module.
                (
                    "var",
                    "awk '$5 == \"/var\" {print $4}' /proc/self/mountinfo",
                    "/ostree/deploy/debian/var",
                ),
                ("usr-ro", "touch /usr/x 2>&1", "Read-only file system"),
                // ...and only /usr: mountall.sh's remount of /usr left the rest writable.
                (
                    "rw",
                    "touch /var/x /etc/x /sysroot/x && echo writable",
                    "writable",
                ),
                // /var was seeded from the tree's factory copy (systemd-tmpfiles).
                ("var-seeded", "test -d /var/lib/dhcp && echo seeded", "seeded"),
                ("network", "ip -4 addr", "10.0.2.15"),
                // The boot service ends with the health checks and marks the boot good.
                (
                    "boot-service",
                    "for i in $(seq 90); do rc-service osbuild-boot status | grep -q started && break; sleep 2; done; rc-service osbuild-boot status",
                    "started",
                ),
            ],
        )
    })?;

    let release = tree.join("usr/lib/osbuild-example/release");
    fs::remove_file(&release)?;
    fs::write(&release, "openrc-2\n")?;
    let c2 = t.time("second commit", || commit(&repo, BRANCH, &tree, Some("2")))?;
    t.time("osbuild admin upgrade in the guest (staged)", || {
        vm.send_line("osbuild admin upgrade && echo UPGRADE''-OK || echo UPGRADE''-FAILED")?;
        let result = vm.wait_for("UPGRADE-", Duration::from_secs(600))?;
        anyhow::ensure!(result.contains("UPGRADE-OK"), "upgrade failed: {result}");
        let status = probe(&mut vm, "staged", "ostree admin status")?;
        anyhow::ensure!(
            status.contains("(staged)") && status.contains(&c2),
            "the upgrade staged nothing: {status}"
        );
        Ok(())
    })?;
    t.time("reboot through OpenRC's shutdown", || {
        vm.send_line("reboot")?;
        vm.wait_for(
            "Finalizing the staged ostree deployment",
            Duration::from_secs(300),
        )?;
        vm.wait_exit(Duration::from_secs(300))
    })?;
    drop(vm);

    let mut vm = t.time("boot after upgrade", || {
        boot_into(
            guest_config(&image).log(work.path().join("boot2.log")),
            &c2,
            "openrc-2",
        )
    })?;
    shell_ready(&mut vm)?;
    let status = probe(&mut vm, "status", "ostree admin status")?;
    anyhow::ensure!(
        status.contains(&c1) && status.contains("(rollback)"),
        "the old commit is not kept as the rollback: {status}"
    );
    // The automatic fallback through OpenRC's boot service. By hand only
    // (OSBUILD_OPENRC_FALLBACK=1): its two more boots do not fit the suite's 60 minutes.
    if std::env::var_os("OSBUILD_OPENRC_FALLBACK").is_some() {
        t.time("automatic fallback from an unhealthy update", || {
            fall_back(vm, &repo, &tree, &image, work.path(), &c2)
        })?;
    } else {
        drop(vm);
    }
    t.report("openrc");
    Ok(())
}

/// From `good`, booted: stage an update whose health check fails, with one try; it boots,
/// its check fails and reboots it, and GRUB's countdown brings back `good`, which is the
/// default again with the failed one kept behind it.
fn fall_back(
    mut vm: osbuild_testing::vm::Vm,
    repo: &Path,
    tree: &Path,
    image: &Path,
    dir: &Path,
    good: &str,
) -> Result<()> {
    // One try, set on the device as an owner would (/etc over /usr).
    let set = probe(
        &mut vm,
        "tries",
        "mkdir -p /etc/osbuild && echo 1 > /etc/osbuild/boot-tries && echo TRIES-SET",
    )?;
    anyhow::ensure!(set.contains("TRIES-SET"), "setting the tries: {set}");
    let check = tree.join("usr/lib/osbuild/health.d/50-broken");
    fs::create_dir_all(check.parent().context("path")?)?;
    write_script(
        &check,
        "#!/bin/sh\necho 'this update is broken' >&2\nexit 1\n",
    )?;
    let release = tree.join("usr/lib/osbuild-example/release");
    fs::remove_file(&release)?;
    fs::write(&release, "openrc-3\n")?;
    let bad = commit(repo, BRANCH, tree, Some("3"))?;
    super::upgrade_and_reboot(&mut vm)?;
    drop(vm);
    let mut vm = osbuild_testing::vm::Vm::boot(guest_config(image).log(dir.join("boot3.log")))?;
    vm.wait_for(
        "osbuild-health: health checks failed (/usr/lib/osbuild/health.d/50-broken)",
        Duration::from_secs(300),
    )?;
    vm.wait_exit(Duration::from_secs(300))?;
    drop(vm);
    let mut vm = boot_into(
        guest_config(image).log(dir.join("boot4.log")),
        good,
        "openrc-2",
    )
    .context("after the unhealthy update")?;
    shell_ready(&mut vm)?;
    let json = probe(
        &mut vm,
        "fellback",
        "for i in $(seq 55); do rc-service osbuild-boot status | grep -q started && break; sleep 2; done; osbuild admin status --json",
    )?;
    let st: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("status JSON: {json}"))?;
    anyhow::ensure!(
        st["deployments"][0]["checksum"] == good && st["deployments"][0]["role"] == "booted",
        "the fallback is not the booted default: {json}"
    );
    anyhow::ensure!(
        st["deployments"][1]["checksum"] == bad.as_str(),
        "the failed commit is not kept behind it: {json}"
    );
    let failed = st["boot"]["record"]["fallback"]["failed"]
        .as_str()
        .unwrap_or_default();
    anyhow::ensure!(
        failed.starts_with(&bad),
        "status does not record the fallback from {bad}: {json}"
    );
    Ok(())
}
