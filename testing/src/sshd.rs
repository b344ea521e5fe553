//! Throwaway SSH keys and a real OpenSSH sshd on loopback, for interop tests.

use crate::helpers::{try_free_port, Daemon};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ed25519 key pair made by ssh-keygen.
#[derive(Debug, Clone)]
pub struct KeyPair {
    /// The private key file.
    pub private: PathBuf,
    /// The public key file (`<private>.pub`).
    pub public: PathBuf,
}

impl KeyPair {
    /// Generate a key without a passphrase at `path` (and `path.pub`).
    pub fn generate(path: &Path) -> Result<Self> {
        osbuild_core::cmd::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "osbuild-test", "-f"])
                .arg(path),
        )
        .context("generating an SSH key (install openssh-client)")?;
        Ok(KeyPair {
            private: path.to_path_buf(),
            public: path.with_extension("pub"),
        })
    }

    /// The `type base64 comment` line of the public key.
    pub fn public_line(&self) -> Result<String> {
        let line = std::fs::read_to_string(&self.public)
            .with_context(|| format!("reading {}", self.public.display()))?;
        Ok(line.trim().to_string())
    }
}

/// The public line of an OpenSSH private key file (e.g. a host key a server generated).
pub fn public_line_of(private: &Path) -> Result<String> {
    let out = osbuild_core::cmd::run(Command::new("ssh-keygen").arg("-y").arg("-f").arg(private))?;
    Ok(out.trim().to_string())
}

/// A known_hosts line for a server on 127.0.0.1:`port`.
pub fn known_hosts_line(port: u16, host_public_line: &str) -> String {
    format!("[127.0.0.1]:{port} {host_public_line}\n")
}

/// A real sshd on 127.0.0.1, killed on drop (and by the kernel if the test dies).
#[derive(Debug)]
pub struct Sshd {
    _daemon: Daemon,
    /// The port it listens on.
    pub port: u16,
    /// Its host key.
    pub host_key: KeyPair,
}

impl Sshd {
    /// Start sshd with its own host key in `dir`, accepting the keys in
    /// `authorized_keys`, with `extra` sshd_config lines (e.g. `ForceCommand …`,
    /// `SetEnv PATH=…`).
    pub fn start(dir: &Path, authorized_keys: &str, extra: &[&str]) -> Result<Self> {
        let host_key = KeyPair::generate(&dir.join("ssh_host_ed25519_key"))?;
        let ak = dir.join("authorized_keys");
        std::fs::write(&ak, authorized_keys)
            .with_context(|| format!("writing {}", ak.display()))?;
        // sshd needs its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let port = try_free_port()?;
        let config = dir.join("sshd_config");
        let mut text = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile none\nStrictModes no\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             AllowTcpForwarding yes\nLogLevel VERBOSE\n",
            host_key.private.display(),
            ak.display()
        );
        for line in extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let daemon = Daemon::start(
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config),
            port,
            Some(&dir.join("sshd.log")),
        )
        .context("starting sshd (install openssh-server)")?;
        Ok(Sshd {
            _daemon: daemon,
            port,
            host_key,
        })
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> Result<String> {
        Ok(known_hosts_line(self.port, &self.host_key.public_line()?))
    }
}
