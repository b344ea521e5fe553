//! `osbuild serve` settings: one struct that is both the TOML config file and the CLI flags,
//! so the file's keys, the flags and their documentation cannot drift apart. Every field is
//! optional so that a flag given on the command line can be told apart from one left out,
//! and overrides the config file only when given.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The defaults, named once for the code and the help text.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_HEADER_TIMEOUT: u64 = 15;
pub const DEFAULT_SEND_TIMEOUT: u64 = 60;
pub const DEFAULT_CACHE_SIZE_MIB: usize = 64;

/// How `osbuild serve` serves a repository. In a config file (TOML) the keys are the flag
/// names without the leading dashes, e.g. `tls-cert = "/etc/osbuild/cert.pem"`; relative
/// paths there are relative to the file. Flags override the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeConfig {
    /// Archive repository to serve (required, here or in the config file).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,

    /// Listen address; HTTPS when --tls-cert is given [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<SocketAddr>,

    /// PEM certificate chain for HTTPS (needs --tls-key). Clients trust it with
    /// `ostree remote add --set=tls-ca-path=CA.pem`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require HTTP basic auth against this htpasswd file (bcrypt `htpasswd -B`, `{SHA}` or
    /// `$apr1$` entries). Clients put the credentials in the remote URL:
    /// `https://USER:PASSWORD@HOST:PORT/repo/`.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,

    /// Most connections served at once; further clients wait in the listen queue
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Seconds a client has to send a request's headers, and the longest an idle
    /// kept-alive connection stays open [default: 15].
    #[arg(long, value_name = "SECONDS")]
    pub header_timeout: Option<u64>,

    /// Seconds a connection may go without a byte received or sent while a request is
    /// answered, so slow or stalled clients cannot hold it [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub send_timeout: Option<u64>,

    /// MiB of memory for small immutable files (objects, deltas) asked for often; 0 turns
    /// the cache off [default: 64].
    #[arg(long, value_name = "MIB")]
    pub cache_size: Option<usize>,

    /// Threads serving connections, each with its own event loop [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Write one access log line per request to standard output [default: on].
    #[arg(long, value_name = "on|off", hide_possible_values = true,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: Option<bool>,

    /// Also accept pushes over SSH on this address (the ostree-push protocol).
    #[arg(long, value_name = "ADDR:PORT", requires = "authorized_keys")]
    pub ssh: Option<SocketAddr>,

    /// OpenSSH private host key for --ssh; an ed25519 key is generated if it is missing.
    #[arg(long, value_name = "FILE")]
    pub host_key: Option<PathBuf>,

    /// OpenSSH authorized_keys file of the users who may push; `restrict`, `command=`,
    /// `from=` and `no-port-forwarding` are honoured.
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: Option<PathBuf>,

    /// Refuse pushed commits without a valid GPG signature from --trusted-keyring.
    #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub require_signature: Option<bool>,

    /// GPG keyring whose keys pushed commits must be signed with.
    #[arg(long, value_name = "FILE")]
    pub trusted_keyring: Option<PathBuf>,

    /// Honour a pushing client's --force (non-fast-forward or older commits).
    #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_force: Option<bool>,
}

impl ServeConfig {
    /// Read a TOML config file; relative paths in it are made relative to its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading serve config {}", path.display()))?;
        let mut cfg: ServeConfig = toml::from_str(&text)
            .with_context(|| format!("parsing serve config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.repo,
            &mut cfg.tls_cert,
            &mut cfg.tls_key,
            &mut cfg.htpasswd,
            &mut cfg.host_key,
            &mut cfg.authorized_keys,
            &mut cfg.trusted_keyring,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// The config file (if any) with the command-line flags laid over it.
    pub fn load(file: Option<&Path>, flags: ServeConfig) -> Result<Self> {
        let base = match file {
            Some(f) => Self::from_file(f)?,
            None => ServeConfig::default(),
        };
        Ok(base.overridden_by(flags))
    }

    /// `self` with every field that `other` sets replaced.
    pub fn overridden_by(self, other: ServeConfig) -> Self {
        ServeConfig {
            repo: other.repo.or(self.repo),
            http: other.http.or(self.http),
            tls_cert: other.tls_cert.or(self.tls_cert),
            tls_key: other.tls_key.or(self.tls_key),
            htpasswd: other.htpasswd.or(self.htpasswd),
            max_connections: other.max_connections.or(self.max_connections),
            header_timeout: other.header_timeout.or(self.header_timeout),
            send_timeout: other.send_timeout.or(self.send_timeout),
            cache_size: other.cache_size.or(self.cache_size),
            threads: other.threads.or(self.threads),
            access_log: other.access_log.or(self.access_log),
            ssh: other.ssh.or(self.ssh),
            host_key: other.host_key.or(self.host_key),
            authorized_keys: other.authorized_keys.or(self.authorized_keys),
            require_signature: other.require_signature.or(self.require_signature),
            trusted_keyring: other.trusted_keyring.or(self.trusted_keyring),
            allow_force: other.allow_force.or(self.allow_force),
        }
    }

    /// The SSH push listener's settings, when --ssh is set.
    pub fn ssh(&self) -> Result<Option<crate::ssh::SshOptions>> {
        let Some(listen) = self.ssh else {
            return Ok(None);
        };
        let repo = self.repo()?.to_path_buf();
        let authorized_keys = self
            .authorized_keys
            .clone()
            .context("--ssh needs --authorized-keys FILE (who may push)")?;
        let host_key = self
            .host_key
            .clone()
            .context("--ssh needs --host-key FILE (generated if missing)")?;
        let require_signature = self.require_signature.unwrap_or(false);
        if require_signature && self.trusted_keyring.is_none() {
            anyhow::bail!("--require-signature needs --trusted-keyring FILE");
        }
        Ok(Some(crate::ssh::SshOptions {
            listen,
            host_key,
            authorized_keys,
            repo,
            policy: crate::receive::Policy {
                require_signature,
                trusted_keyring: self.trusted_keyring.clone(),
                allow_force: self.allow_force.unwrap_or(false),
            },
        }))
    }

    pub fn repo(&self) -> Result<&Path> {
        self.repo
            .as_deref()
            .context("no repository to serve: pass --repo DIR or set `repo` in the config file")
    }

    pub fn http(&self) -> SocketAddr {
        self.http
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
            .max(1)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout.unwrap_or(DEFAULT_HEADER_TIMEOUT).max(1))
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout.unwrap_or(DEFAULT_SEND_TIMEOUT).max(1))
    }

    /// The hot-file cache's budget in bytes.
    pub fn cache_bytes(&self) -> usize {
        self.cache_size
            .unwrap_or(DEFAULT_CACHE_SIZE_MIB)
            .saturating_mul(1 << 20)
    }

    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1)
    }

    pub fn access_log(&self) -> bool {
        self.access_log.unwrap_or(true)
    }

    /// The certificate and key, which only make sense together.
    pub fn tls(&self) -> Result<Option<(&Path, &Path)>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(c), None) => anyhow::bail!(
                "TLS certificate {} given without a key: set --tls-key too",
                c.display()
            ),
            (None, Some(k)) => anyhow::bail!(
                "TLS key {} given without a certificate: set --tls-cert too",
                k.display()
            ),
        }
    }

    /// The URL clients use, for the start-up message.
    pub fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}/repo/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn default_http_matches_the_constant() {
        assert_eq!(
            ServeConfig::default().http(),
            DEFAULT_HTTP.parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "repo = \"repo\"\nhttp = \"0.0.0.0:9000\"\nhtpasswd = \"/etc/htpasswd\"\n\
             max-connections = 10\nheader-timeout = 5\naccess-log = false\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--http", "127.0.0.1:1234", "--access-log", "on"]);
        let cfg = ServeConfig::load(Some(&file), cli.serve).unwrap();
        assert_eq!(cfg.repo().unwrap(), dir.path().join("repo"));
        assert_eq!(cfg.http(), "127.0.0.1:1234".parse().unwrap());
        assert_eq!(cfg.htpasswd.as_deref(), Some(Path::new("/etc/htpasswd")));
        assert_eq!(cfg.max_connections(), 10);
        assert_eq!(cfg.header_timeout(), Duration::from_secs(5));
        assert_eq!(
            cfg.send_timeout(),
            Duration::from_secs(DEFAULT_SEND_TIMEOUT)
        );
        assert!(cfg.access_log());
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "tls-certificate = \"x\"\n").unwrap();
        let err = format!("{:#}", ServeConfig::from_file(&file).unwrap_err());
        assert!(
            err.contains(&file.display().to_string()) && err.contains("tls-certificate"),
            "{err}"
        );
    }

    #[test]
    fn tls_needs_both_files() {
        assert!(Cli::try_parse_from(["x", "--tls-cert", "c.pem"]).is_err());
        let cfg = ServeConfig {
            tls_key: Some("k.pem".into()),
            ..Default::default()
        };
        assert!(format!("{:#}", cfg.tls().unwrap_err()).contains("k.pem"));
    }

    #[test]
    fn missing_repo_is_explained() {
        let err = ServeConfig::default().repo().unwrap_err().to_string();
        assert!(err.contains("--repo"), "{err}");
    }
}
