use super::*;

/// What `VmConfig::new` derives from the image path: the format from the extension and the
/// serial log next to the image (also when `log` is left empty).
#[test]
fn format_and_log_are_derived_from_the_image_path() {
    assert_eq!(
        VmConfig::new("/images/disk.qcow2").format,
        ImageFormat::Qcow2
    );
    assert_eq!(VmConfig::new("disk.img").format, ImageFormat::Raw);
    assert_eq!(
        VmConfig::new("/images/disk.qcow2").log_path(),
        Path::new("/images/disk.qcow2.serial.log")
    );
    let config = VmConfig {
        image: "/images/x.raw".into(),
        ..VmConfig::default()
    };
    assert_eq!(config.log_path(), Path::new("/images/x.raw.serial.log"));
    assert_eq!(
        VmConfig::new("/images/x.raw")
            .log("/logs/boot.log")
            .log_path(),
        Path::new("/logs/boot.log")
    );
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
fn boot_fails_clearly_for_missing_image() {
    let err = Vm::boot(VmConfig::new("/nonexistent/osbuild-test.img")).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/nonexistent/osbuild-test.img"), "{msg}");
}

/// A live ISO is a read-only CD-ROM on virtio-scsi, booted first.
#[test]
fn qemu_args_iso_is_a_cdrom() {
    let config = VmConfig::new("/img/live.iso");
    assert_eq!(config.format, ImageFormat::Iso);
    let args = qemu_args(&config, Path::new("/run/s.sock"), None);
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args.iter().position(|a| a == "-drive").unwrap();
    assert_eq!(
        args[at + 1],
        "file=/img/live.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on"
    );
    assert_eq!(
        args[at + 2..at + 6],
        [
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-cd,drive=cd0,bus=scsi0.0,bootindex=0"
        ]
    );
}
