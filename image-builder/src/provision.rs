//! Provisioning one device without rebuilding its OS: host name, root password, a user
//! with SSH keys and cloud-init user-data, written into the deployment's /etc and the
//! stateroot's /var, the two layers upgrades keep. Nothing goes into the commit.

use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

/// What to provision; everything optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provision {
    /// The static host name (/etc/hostname).
    pub hostname: Option<String>,
    /// root's password hash (crypt(3) format, e.g. from `openssl passwd -6`).
    pub root_password_hash: Option<String>,
    /// A user to create, with a home under /var/home and sudo rights when the OS has sudo.
    pub user: Option<String>,
    /// Files of SSH public keys for the user (root's when no user is given).
    pub ssh_authorized_keys: Vec<PathBuf>,
    /// cloud-init user-data, seeded for the NoCloud datasource.
    pub cloud_init: Option<PathBuf>,
}

/// The key types sshd accepts in authorized_keys.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

impl Provision {
    /// Whether there is anything to do.
    pub fn is_empty(&self) -> bool {
        *self == Provision::default()
    }

    /// Check the values and read the files, before anything is pulled or written.
    pub fn check(&self) -> Result<()> {
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            anyhow::ensure!(
                ok,
                "--hostname {h:?} is not a valid host name (letters, digits and '-', dot-separated labels, at most 64 characters)"
            );
        }
        if let Some(hash) = &self.root_password_hash {
            anyhow::ensure!(
                hash.starts_with('$') && !hash.contains(':') && !hash.contains('\n'),
                "--root-password-hash is not a crypt(3) hash (make one with `openssl passwd -6`)"
            );
        }
        if let Some(user) = &self.user {
            let ok = !user.is_empty()
                && user.len() <= 32
                && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && user
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            anyhow::ensure!(
                ok,
                "--user {user:?} is not a valid user name (lower-case letters, digits, '_' and '-', starting with a letter)"
            );
        }
        for file in &self.ssh_authorized_keys {
            read_keys(file)?;
        }
        if let Some(file) = &self.cloud_init {
            let text = fs::read_to_string(file)
                .with_context(|| format!("reading --cloud-init {}", file.display()))?;
            let first = text.lines().next().unwrap_or_default();
            anyhow::ensure!(
                first.starts_with("#cloud-config") || first.starts_with("#!"),
                "--cloud-init {} is not cloud-init user-data: it must start with #cloud-config or #!",
                file.display()
            );
        }
        Ok(())
    }

    /// Write it into the deployment at `deployment` and the stateroot's /var at `var`.
    pub(crate) fn apply(&self, deployment: &Path, var: &Path) -> Result<()> {
        let etc = deployment.join("etc");
        if let Some(h) = &self.hostname {
            fs::write(etc.join("hostname"), format!("{h}\n"))
                .with_context(|| format!("writing {}/hostname", etc.display()))?;
        }
        if let Some(hash) = &self.root_password_hash {
            osbuild_core::accounts::set_password_hash(deployment, "root", hash)?;
        }
        let mut keys = String::new();
        for file in &self.ssh_authorized_keys {
            for key in read_keys(file)? {
                keys.push_str(&key);
                keys.push('\n');
            }
        }
        let (home, uid) = match &self.user {
            Some(name) => {
                let groups: Vec<String> = osbuild_core::accounts::entries(deployment, "etc/group")?
                    .into_iter()
                    .map(|e| e[0].clone())
                    .filter(|g| g == "sudo")
                    .collect();
                let home = format!("/var/home/{name}");
                let shell = if deployment.join("usr/bin/bash").exists() {
                    "/bin/bash"
                } else {
                    "/bin/sh"
                };
                let uid = osbuild_core::accounts::add_user(
                    deployment,
                    &osbuild_core::accounts::NewUser {
                        name,
                        uid: None,
                        groups: &groups,
                        home: &home,
                        shell,
                        // Not locked: sshd refuses keys of locked accounts.
                        password_hash: Some("*"),
                    },
                )
                .with_context(|| format!("provisioning user {name}"))?;
                let dir = var.join(home.trim_start_matches("/var/"));
                make_dir(&dir, 0o700, uid)?;
                (Some(dir), uid)
            }
            // Keys without a user are root's; root's home is /var/roothome.
            None if !keys.is_empty() => (Some(var.join("roothome")), 0),
            None => (None, 0),
        };
        if let (Some(home), false) = (home, keys.is_empty()) {
            let ssh = home.join(".ssh");
            if !home.exists() {
                make_dir(&home, 0o700, uid)?;
            }
            make_dir(&ssh, 0o700, uid)?;
            let file = ssh.join("authorized_keys");
            fs::write(&file, &keys).with_context(|| format!("writing {}", file.display()))?;
            set_owner_mode(&file, 0o600, uid)?;
        }
        if let Some(user_data) = &self.cloud_init {
            let seed = var.join("lib/cloud/seed/nocloud");
            fs::create_dir_all(&seed).with_context(|| format!("creating {}", seed.display()))?;
            fs::copy(user_data, seed.join("user-data"))
                .with_context(|| format!("copying {}", user_data.display()))?;
            let mut meta = format!("instance-id: osbuild-{}\n", std::process::id());
            if let Some(h) = &self.hostname {
                meta.push_str(&format!("local-hostname: {h}\n"));
            }
            fs::write(seed.join("meta-data"), meta)
                .with_context(|| format!("writing {}/meta-data", seed.display()))?;
        }
        Ok(())
    }
}

/// The keys in an authorized_keys-style file, each checked to be one.
fn read_keys(file: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(file)
        .with_context(|| format!("reading --ssh-authorized-key {}", file.display()))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let ok = KEY_TYPES.contains(&kind) && words.next().is_some_and(|b| b.len() > 16);
        anyhow::ensure!(
            ok,
            "{}:{}: not an SSH public key (expected e.g. `ssh-ed25519 AAAA… comment`)",
            file.display(),
            n + 1
        );
        keys.push(line.to_string());
    }
    anyhow::ensure!(
        !keys.is_empty(),
        "{} holds no SSH public key",
        file.display()
    );
    Ok(keys)
}

fn make_dir(dir: &Path, mode: u32, uid: u32) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    set_owner_mode(dir, mode, uid)
}

fn set_owner_mode(path: &Path, mode: u32, uid: u32) -> Result<()> {
    // Each provisioned user has its own group with the same id.
    chown(path, Some(uid), Some(uid))
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .with_context(|| format!("setting the owner and mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let bad_key = dir.path().join("bad.pub");
        fs::write(&bad_key, "not a key\n").unwrap();
        let user_data = dir.path().join("user-data");
        fs::write(&user_data, "hostname: x\n").unwrap();
        let cases: Vec<(Provision, &str)> = vec![
            (
                Provision {
                    hostname: Some("bad_name".into()),
                    ..Default::default()
                },
                "--hostname \"bad_name\" is not a valid host name",
            ),
            (
                Provision {
                    user: Some("Root".into()),
                    ..Default::default()
                },
                "--user \"Root\" is not a valid user name",
            ),
            (
                Provision {
                    root_password_hash: Some("secret".into()),
                    ..Default::default()
                },
                "--root-password-hash is not a crypt(3) hash",
            ),
            (
                Provision {
                    ssh_authorized_keys: vec![dir.path().join("missing.pub")],
                    ..Default::default()
                },
                "reading --ssh-authorized-key",
            ),
            (
                Provision {
                    ssh_authorized_keys: vec![bad_key],
                    ..Default::default()
                },
                "bad.pub:1: not an SSH public key",
            ),
            (
                Provision {
                    cloud_init: Some(user_data),
                    ..Default::default()
                },
                "is not cloud-init user-data",
            ),
        ];
        for (p, expected) in cases {
            let err = format!("{:#}", p.check().unwrap_err());
            assert!(err.contains(expected), "{err}");
        }
        assert!(Provision::default().is_empty());
    }
}
