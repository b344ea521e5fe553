//! A throwaway GPG key, generated once per test process (the first test that asks makes
//! it, the others wait and share it) in a directory under `target/tmp`.

use crate::helpers::{run, target_tmp};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A signing key in its own GPG home.
#[derive(Debug, Clone)]
pub struct GpgKey {
    /// The GPG home (`--gpg-homedir` for `ostree gpg-sign`).
    pub home: PathBuf,
    /// The key's fingerprint.
    pub key_id: String,
    /// The exported public key, a keyring to verify with.
    pub keyring: PathBuf,
}

/// The shared throwaway key; panics with gpg's error if it cannot be made.
pub fn throwaway_key() -> &'static GpgKey {
    static KEY: OnceLock<GpgKey> = OnceLock::new();
    KEY.get_or_init(|| generate(&target_tmp(), "home"))
}

/// A second throwaway key in a GPG home of its own: a signer devices must not trust.
pub fn other_key() -> &'static GpgKey {
    static KEY: OnceLock<GpgKey> = OnceLock::new();
    // The first key's directory (and its cleanup) first.
    throwaway_key();
    KEY.get_or_init(|| generate(&target_tmp(), "home-other"))
}

/// A key that expired in 2020, in a GPG home of its own: made with gpg's clock set back
/// (`--faked-system-time`), valid for a day then.
pub fn expired_key() -> &'static GpgKey {
    static KEY: OnceLock<GpgKey> = OnceLock::new();
    throwaway_key();
    KEY.get_or_init(|| {
        generate_with(
            &target_tmp(),
            "home-expired",
            &["--faked-system-time", "20200101T000000"],
            "1d",
        )
    })
}

/// `gpg --homedir HOME --batch …`, without a passphrase.
fn gpg(home: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.arg("--homedir").arg(home).args([
        "--batch",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    cmd
}

/// Stop the gpg-agent of `home`, if one runs (best effort: none may be running).
fn stop_agent(home: &Path) {
    let _ = osbuild_core::cmd::output(
        Command::new("gpgconf")
            .arg("--homedir")
            .arg(home)
            .args(["--kill", "gpg-agent"]),
    );
}

fn generate(tmp: &Path, home_name: &str) -> GpgKey {
    generate_with(tmp, home_name, &[], "never")
}

fn generate_with(tmp: &Path, home_name: &str, gen_flags: &[&str], expires: &str) -> GpgKey {
    use std::os::unix::fs::PermissionsExt;
    // One directory per process; those of processes that are gone are removed, with the
    // gpg-agent that signing started there (it outlives the test process).
    for entry in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("gpg-") {
            if !Path::new("/proc").join(pid).exists() {
                stop_agent(&entry.path().join("home"));
                stop_agent(&entry.path().join("home-other"));
                stop_agent(&entry.path().join("home-expired"));
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("gpg-{}", std::process::id()));
    let home = dir.join(home_name);
    std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("creating {}: {e}", home.display()));
    // gpg warns about (and some versions refuse) a home others can read.
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .unwrap_or_else(|e| panic!("restricting {}: {e}", home.display()));
    run(gpg(&home).args(gen_flags).args([
        "--quick-gen-key",
        "osbuild test <test@osbuild.invalid>",
        "rsa2048",
        "sign",
        expires,
    ]));
    let listing = run(gpg(&home).args(["--with-colons", "--list-keys"]));
    let key_id = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap_or_else(|| panic!("no fingerprint in gpg --list-keys:\n{listing}"))
        .to_string();
    let keyring = dir.join(format!("{home_name}.gpg"));
    run(gpg(&home)
        .arg("--output")
        .arg(&keyring)
        .args(["--export", &key_id]));
    GpgKey {
        home,
        key_id,
        keyring,
    }
}
