//! Throwaway SSH keys and a real OpenSSH sshd on loopback, for interop tests.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// An ed25519 key pair made by ssh-keygen.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
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
        Ok(std::fs::read_to_string(&self.public)?.trim().to_string())
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

/// A real sshd on 127.0.0.1, killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    pub host_key: KeyPair,
}

impl Sshd {
    /// Start sshd with its own host key in `dir`, accepting the keys in
    /// `authorized_keys`, with `extra` sshd_config lines (e.g. `ForceCommand …`,
    /// `SetEnv PATH=…`).
    pub fn start(dir: &Path, authorized_keys: &str, extra: &[&str]) -> Result<Self> {
        let host_key = KeyPair::generate(&dir.join("ssh_host_ed25519_key"))?;
        let ak = dir.join("authorized_keys");
        std::fs::write(&ak, authorized_keys)?;
        // sshd needs its privilege separation directory.
        std::fs::create_dir_all("/run/sshd")?;
        let port = crate::vm::try_free_port()?;
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
        std::fs::write(&config, text)?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(dir.join("sshd.log"))?)
            .spawn()
            .context("starting sshd (install openssh-server)")?;
        let sshd = Sshd {
            child,
            port,
            host_key,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "sshd did not start; see {}",
                dir.join("sshd.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sshd)
    }

    pub fn known_hosts_line(&self) -> Result<String> {
        Ok(known_hosts_line(self.port, &self.host_key.public_line()?))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
