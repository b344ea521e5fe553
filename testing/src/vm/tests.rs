use std::io::{BufRead, BufReader};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use super::*;

/// Generous: several TCG guests may share two cores with a compiler.
const T: Duration = Duration::from_secs(120);
const HELPER_ENV: &str = "OSBUILD_TESTING_PDEATHSIG_HELPER";

/// Whether qemu is installed; prints why the test is skipped otherwise.
fn qemu_or_skip(test: &str) -> bool {
    if Path::new(QEMU).exists() {
        return true;
    }
    // Written to the real stderr: libtest would swallow eprintln! output.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {QEMU} is not installed (apt install qemu-system-x86)"
    );
    false
}

/// A 1 MiB all-zero disk: SeaBIOS finds no boot sector on it.
fn empty_image(dir: &Path) -> PathBuf {
    let image = dir.join("empty.img");
    File::create(&image).unwrap().set_len(1 << 20).unwrap();
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
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
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
fn config_defaults_and_builder() {
    let config = VmConfig::new("/images/disk.qcow2");
    assert_eq!(config.format, ImageFormat::Qcow2);
    assert_eq!(config.memory_mib, 1024);
    assert_eq!(config.cpus, 2);
    assert!(!config.uefi);
    assert!(config.forwards.is_empty());
    assert_eq!(config.log, Path::new("/images/disk.qcow2.serial.log"));
    assert_eq!(VmConfig::new("disk.img").format, ImageFormat::Raw);

    let config = VmConfig::new("/images/disk.img")
        .format(ImageFormat::Qcow2)
        .uefi(true)
        .memory_mib(2048)
        .cpus(4)
        .forward(2222, 22)
        .forward(8080, 80)
        .log("/logs/boot.log");
    assert_eq!(config.format, ImageFormat::Qcow2);
    assert!(config.uefi);
    assert_eq!((config.memory_mib, config.cpus), (2048, 4));
    assert_eq!(config.forwards, vec![(2222, 22), (8080, 80)]);
    assert_eq!(config.log_path(), Path::new("/logs/boot.log"));

    let config = VmConfig {
        image: "/images/x.raw".into(),
        ..VmConfig::default()
    };
    assert_eq!(config.log_path(), Path::new("/images/x.raw.serial.log"));
}

#[test]
fn qemu_args_bios() {
    let config = VmConfig::new("/img/disk.raw").memory_mib(2048).cpus(4);
    let args = qemu_args(&config, Path::new("/run/s.sock"), None);
    let expected = [
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "2048",
        "-smp",
        "4",
        "-nographic",
        "-monitor",
        "none",
        "-no-reboot",
        "-drive",
        "file=/img/disk.raw,format=raw,if=virtio",
        "-nic",
        "user,model=virtio-net-pci",
        "-chardev",
        "socket,id=ser0,server=on,wait=on,path=/run/s.sock",
        "-serial",
        "chardev:ser0",
    ];
    assert_eq!(args, expected.map(OsString::from));
}

#[test]
fn qemu_args_uefi_forwards_and_escaping() {
    let config = VmConfig::new("/img/a,b.qcow2")
        .uefi(true)
        .forward(2222, 22)
        .forward(8080, 80);
    let args = qemu_args(
        &config,
        Path::new("/run/s.sock"),
        Some(Path::new("/run/vars.fd")),
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_str().unwrap().to_owned())
        .collect();
    let after = |flag: &str| -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    };
    assert_eq!(
        after("-drive"),
        [
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "if=pflash,format=raw,unit=1,file=/run/vars.fd",
            "file=/img/a,,b.qcow2,format=qcow2,if=virtio",
        ]
    );
    assert_eq!(
        after("-nic"),
        ["user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80"]
    );
    assert!(!args.iter().any(|a| a.contains("kvm")), "{args:?}");
}

#[test]
fn free_port_can_be_bound() {
    let port = free_port();
    assert_ne!(port, 0);
    // A process forked by a parallel test (qemu) may briefly hold a copy of
    // free_port's socket until it execs, so allow a few retries.
    let mut result = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    for _ in 0..20 {
        if result.is_ok() {
            break;
        }
        std::thread::sleep(POLL);
        result = TcpListener::bind((Ipv4Addr::LOCALHOST, port));
    }
    result.unwrap();
}

#[test]
fn boot_fails_clearly_for_missing_image() {
    let err = Vm::boot(VmConfig::new("/nonexistent/osbuild-test.img")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/nonexistent/osbuild-test.img"), "{msg}");
}

#[test]
fn qemu_errors_are_reported() {
    if !qemu_or_skip("qemu_errors_are_reported") {
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
    if !qemu_or_skip("seabios_banner_on_serial_and_drop_kills_qemu") {
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
    assert!(log.contains("osbuild-testing: starting"), "{log}");
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
    if !qemu_or_skip("ipxe_shell_send_line_and_wait_exit") {
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
    if !qemu_or_skip("panic_with_running_vm_kills_qemu") {
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
    if !qemu_or_skip("uefi_ovmf_prints_to_serial") {
        return;
    }
    if !Path::new(OVMF_CODE).exists() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED uefi_ovmf_prints_to_serial: {OVMF_CODE} missing (apt install ovmf)"
        );
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
    if !qemu_or_skip("pdeathsig_kills_qemu_when_the_test_process_dies") {
        return;
    }
    // The helper's temp files are leaked when it is killed: keep them in here.
    let tmp = tempfile::tempdir().unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "vm::tests::pdeathsig_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
