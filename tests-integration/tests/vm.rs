//! The qemu VM harness (osbuild_testing::vm) against a real qemu: SeaBIOS, iPXE and OVMF
//! on an empty disk drive the serial console, and qemu dies with its owner however the
//! owner ends (drop, panic, SIGKILL).

use osbuild_testing::vm::{ImageFormat, Vm, VmConfig};
use osbuild_testing::{require, Need};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: several TCG guests may share two cores with a compiler.
const T: Duration = Duration::from_secs(120);
const HELPER_ENV: &str = "OSBUILD_TESTING_PDEATHSIG_HELPER";
const POLL: Duration = Duration::from_millis(50);

/// A 1 MiB all-zero disk: SeaBIOS finds no boot sector on it.
fn empty_image(dir: &Path) -> PathBuf {
    let image = dir.join("empty.img");
    File::create(&image)
        .and_then(|f| f.set_len(1 << 20))
        .expect("creating an empty disk image");
    image
}

fn small_vm(dir: &Path) -> VmConfig {
    VmConfig::new(empty_image(dir))
        .memory_mib(256)
        .cpus(1)
        .log(dir.join("logs/serial.log"))
}

/// Whether `pid` is a running (not zombie) qemu process.
fn is_live_qemu(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("qemu-system-x86_64"))
        .unwrap_or(false)
}

fn qemu_cmdline(pid: u32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("reading qemu's command line");
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn wait_until_dead(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !is_live_qemu(pid) {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

#[test]
fn qemu_errors_are_reported() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Zeros are no qcow2 header. qemu opens disks only after the console is
    // connected, so the error shows up on the first wait.
    let config = small_vm(dir.path()).format(ImageFormat::Qcow2);
    let err = match Vm::boot(config) {
        Err(e) => e,
        Ok(mut vm) => vm.wait_for("SeaBIOS", T).unwrap_err(),
    };
    let msg = format!("{err:#}");
    assert!(msg.contains("qemu exited (exit status: 1)"), "{msg}");
    assert!(msg.contains("qemu stderr"), "{msg}");
    assert!(msg.contains("qcow2"), "{msg}");
}

/// SeaBIOS prints to the serial console because of -nographic; its banner
/// starts with escape codes (`\ec\e[?7l\e[2J\e[0m`) that `wait_for` strips.
#[test]
fn seabios_banner_on_serial_and_drop_kills_qemu() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = small_vm(dir.path());
    let mut vm = Vm::boot(config.clone()).unwrap();

    let banner = vm.wait_for("SeaBIOS", T).unwrap();
    assert!(banner.starts_with("SeaBIOS (version "), "{banner:?}");
    assert_eq!(
        vm.wait_for("Booting from Hard", T).unwrap(),
        "Booting from Hard Disk..."
    );
    assert_eq!(
        vm.wait_for("Boot failed", T).unwrap(),
        "Boot failed: not a bootable disk"
    );

    // The cursor is past the banner, so it is not matched again.
    let err = vm
        .wait_for("SeaBIOS (version", Duration::from_secs(1))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("timed out after 1s"), "{msg}");
    assert!(msg.contains("Boot failed: not a bootable disk"), "{msg}");
    assert!(msg.contains(&config.log.display().to_string()), "{msg}");

    // The log holds the raw bytes, escape codes included.
    let log = fs::read(&config.log).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("osbuild vm: starting"), "{log}");
    assert!(log.contains("\x1b[0mSeaBIOS (version "), "{log}");
    assert!(vm.output().contains("\nBooting from Hard Disk...\n"));

    let pid = vm.pid();
    assert!(is_live_qemu(pid));
    let cmdline = qemu_cmdline(pid);
    assert!(!cmdline.iter().any(|a| a.contains("kvm")), "{cmdline:?}");
    let socket = cmdline
        .iter()
        .find_map(|a| a.split_once(",path=").map(|(_, p)| PathBuf::from(p)))
        .unwrap();
    let runtime_dir = socket.parent().unwrap().to_owned();
    assert!(runtime_dir.exists());

    // SeaBIOS halts at "No bootable device", so a drop that only waited would hang.
    let start = Instant::now();
    drop(vm);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "drop did not kill qemu"
    );
    assert!(!is_live_qemu(pid), "qemu {pid} survived drop");
    assert!(
        !runtime_dir.exists(),
        "{} not removed",
        runtime_dir.display()
    );
}

/// Drives iPXE's shell (the virtio-net option ROM) to test writing to the
/// console and a guest-initiated reboot, which `-no-reboot` turns into an exit.
#[test]
fn ipxe_shell_send_line_and_wait_exit() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = small_vm(dir.path());
    let mut vm = Vm::boot(config.clone()).unwrap();

    // iPXE waits 2 s for Ctrl-B; qemu buffers our byte until the guest reads it.
    vm.wait_for("Press Ctrl-B for the iPXE command line", T)
        .unwrap();
    vm.send("\x02").unwrap();
    vm.wait_for("iPXE>", T).unwrap();
    // SeaBIOS's serial console feeds iPXE through the BIOS keyboard buffer,
    // which holds 15 keys: longer input is truncated, so type in pieces.
    vm.send("echo ${net0/").unwrap();
    vm.wait_for("echo ${net0/", T).unwrap();
    // The answer (the MAC) does not occur in the echoed command line.
    vm.send_line("mac}").unwrap();
    assert_eq!(
        vm.wait_for("52:54:00:12:34:56", T).unwrap(),
        "52:54:00:12:34:56"
    );
    vm.wait_for("iPXE>", T).unwrap();

    let err = vm
        .wait_for("this text never appears", Duration::from_secs(2))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("timed out after 2s"), "{msg}");
    assert!(msg.contains("iPXE> echo ${net0/mac}"), "{msg}");

    vm.send_line("reboot").unwrap();
    let status = vm.wait_exit(T).unwrap();
    assert!(status.success(), "{status}");

    let err = vm.wait_for("login:", T).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("qemu exited (exit status: 0)"), "{msg}");
    assert!(msg.contains("iPXE> reboo"), "{msg}");
    assert!(vm.send_line("too late").is_err());

    let log = fs::read_to_string(&config.log).unwrap();
    assert!(log.contains("\r\n52:54:00:12:34:56\r\n"), "{log}");
}

#[test]
fn panic_with_running_vm_kills_qemu() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = small_vm(dir.path());
    let (pid_tx, pid_rx) = mpsc::channel();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut vm = Vm::boot(config).unwrap();
        pid_tx.send(vm.pid()).unwrap();
        vm.wait_for("SeaBIOS", T).unwrap();
        assert!(is_live_qemu(vm.pid()));
        panic!("deliberate panic with a running VM");
    }));
    let payload = result.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"deliberate panic with a running VM")
    );
    let pid = pid_rx.recv().unwrap();
    assert!(!is_live_qemu(pid), "qemu {pid} survived the panic");
}

#[test]
fn uefi_ovmf_prints_to_serial() {
    if !require(&[Need::Qemu, Need::Ovmf]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::boot(small_vm(dir.path()).uefi(true).memory_mib(512)).unwrap();
    // OVMF's boot manager reports each boot option it fails to load; it also
    // writes the variable store, which therefore must be writable.
    let line = vm.wait_for("BdsDxe: failed to load Boot", T).unwrap();
    assert!(line.contains("Not Found"), "{line:?}");
    let cmdline = qemu_cmdline(vm.pid());
    assert!(
        cmdline
            .iter()
            .any(|a| a.starts_with("if=pflash,format=raw,unit=1,file=")),
        "{cmdline:?}"
    );
}

/// Kills a process that owns a VM without running destructors, as a test
/// runner timeout would, and checks that the kernel kills qemu with it.
#[test]
fn pdeathsig_kills_qemu_when_the_test_process_dies() {
    if !require(&[Need::Qemu]) {
        return;
    }
    // The helper's temp files are leaked when it is killed: keep them in here.
    let tmp = tempfile::tempdir().unwrap();
    // Tied too, so that the helper (and its qemu) die with this test if it dies first.
    let mut helper = osbuild_core::cmd::spawn_tied(
        Command::new(std::env::current_exe().expect("the test binary's path"))
            .args([
                "pdeathsig_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, "1")
            .env("TMPDIR", tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )
    .expect("starting the helper process");
    let stdout = BufReader::new(helper.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut pid = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        // libtest prints "test ... " on the same line before the output.
        if let Some((_, p)) = line.split_once("QEMU_PID=") {
            pid = Some(p.trim().parse::<u32>().unwrap());
            break;
        }
        seen.push(line);
    }
    let Some(pid) = pid else {
        let _ = helper.kill();
        panic!("helper did not report a qemu pid: {seen:#?}");
    };
    assert!(is_live_qemu(pid));

    helper.kill().unwrap();
    helper.wait().unwrap();
    assert!(
        wait_until_dead(pid),
        "qemu {pid} outlived the killed test process"
    );
}

#[test]
#[ignore = "helper process for pdeathsig_kills_qemu_when_the_test_process_dies"]
fn pdeathsig_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::boot(small_vm(dir.path())).unwrap();
    vm.wait_for("SeaBIOS", T).unwrap();
    println!("QEMU_PID={}", vm.pid());
    std::io::stdout().flush().unwrap();
    // Killed by the parent long before this ends.
    std::thread::sleep(Duration::from_secs(300));
}

/// `osbuild vm run --log`: the harness's qemu, its console appended to the log, ports
/// forwarded; a blank disk under SeaBIOS gets as far as "not a bootable disk".
#[test]
fn osbuild_vm_run_logs_the_console() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("blank.raw");
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let log = dir.path().join("logs/console.log");
    let mut child = std::process::Command::new(osbuild_testing::helpers::osbuild_bin())
        .args([
            "vm",
            "run",
            "--ssh-port",
            "2299",
            "--forward",
            "8099:80",
            "--log",
        ])
        .arg(&log)
        .arg(&image)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut seen = String::new();
    while start.elapsed() < Duration::from_secs(120) {
        seen = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        if seen.contains("Boot failed: not a bootable disk") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(seen.contains("SeaBIOS (version "), "{seen}");
    assert!(seen.contains("Boot failed: not a bootable disk"), "{seen}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("hostfwd=tcp:127.0.0.1:2299-:22"), "{said}");
    assert!(said.contains("hostfwd=tcp:127.0.0.1:8099-:80"), "{said}");

    let refused = osbuild_testing::helpers::output(
        std::process::Command::new(osbuild_testing::helpers::osbuild_bin())
            .args(["vm", "run", "--secure-boot", "--firmware", "bios"])
            .arg(&image),
    );
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--secure-boot needs UEFI"), "{said}");
}

/// `osbuild vm test` on an image that never boots: the boot step fails with the last
/// serial lines (SeaBIOS saying why), the rest are skipped, the exit status is 1 and the
/// image is left as it was. A live ISO is refused before anything boots.
#[test]
fn osbuild_vm_test_of_an_image_that_does_not_boot() {
    if !require(&[Need::Qemu]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("blank.raw");
    fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let log = dir.path().join("console.log");
    let out = osbuild_testing::helpers::output(
        std::process::Command::new(osbuild_testing::helpers::osbuild_bin())
            .args(["vm", "test", "--update-url", "http://10.0.2.2:1/repo/"])
            .args(["--boot-timeout", "20", "--log"])
            .arg(&log)
            .arg(&image),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[1].starts_with("boot ") && rows[1].contains("FAIL"),
        "{table}"
    );
    // Without --broken-ref the story is three steps.
    assert!(
        rows[2].starts_with("upgrade ") && rows[2].contains("skipped"),
        "{table}"
    );
    assert!(
        rows[3].starts_with("reboot ") && rows[3].contains("skipped"),
        "{table}"
    );
    assert!(!table.contains("broken"), "{table}");
    // SeaBIOS's complaint is quoted from the console, under the table.
    assert!(table.contains("not a bootable disk"), "{table}");
    assert!(table.contains("last 40 lines of serial output"), "{table}");
    assert!(table.contains(&log.display().to_string()), "{table}");
    let blank = fs::read(&image).unwrap();
    assert!(blank.iter().all(|b| *b == 0), "the image was written to");

    let iso = dir.path().join("live.iso");
    fs::write(&iso, b"").unwrap();
    let refused = osbuild_testing::helpers::output(
        std::process::Command::new(osbuild_testing::helpers::osbuild_bin())
            .args(["vm", "test", "--update-url", "http://10.0.2.2:1/repo/"])
            .arg(&iso),
    );
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("live ISO") && said.contains("raw or qcow2"),
        "{said}"
    );
}
