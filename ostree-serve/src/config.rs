//! `osbuild serve` settings, declared once: every row of the `settings!` table below names
//! a setting's type, value name, whether it is a path (relative to the config file when it
//! comes from one), its default, what it needs, and its documentation. From that one row
//! come the config file key (the field in kebab case), the flag (`--` and the key), the
//! struct field, the merge of file and flags, the path resolution, the accessor with its
//! default, the help text (which shows the default) and the checks of what goes together.
//!
//! Every field is an `Option`, so that a flag left out can be told from one given, and only
//! a flag given overrides the file. [`ServeConfig::resolve`] checks the merged settings once
//! and produces the effective [`Settings`].

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a setting's type is parsed on the command line and whether a value counts as set.
trait Setting: Sized {
    fn value_parser() -> clap::builder::ValueParser;
    fn num_args() -> clap::builder::ValueRange {
        1.into()
    }
    /// The value of a flag given without one (`--access-log` means true).
    fn missing_value() -> Option<&'static str> {
        None
    }
    /// Whether the setting is in effect, for the checks of what it needs.
    fn is_on(value: &Option<Self>) -> bool {
        value.is_some()
    }
    /// The value as an error message names it (none for a switch).
    fn shown(&self) -> Option<String> {
        None
    }
}

impl Setting for PathBuf {
    fn value_parser() -> clap::builder::ValueParser {
        clap::value_parser!(PathBuf)
    }
    fn shown(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl Setting for SocketAddr {
    fn value_parser() -> clap::builder::ValueParser {
        clap::value_parser!(SocketAddr).into()
    }
    fn shown(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Setting for String {
    fn value_parser() -> clap::builder::ValueParser {
        clap::value_parser!(String)
    }
    fn shown(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl Setting for crate::s3::BucketUrl {
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<crate::s3::BucketUrl>())
    }
    fn shown(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl Setting for usize {
    fn value_parser() -> clap::builder::ValueParser {
        clap::value_parser!(usize).into()
    }
}

impl Setting for u64 {
    fn value_parser() -> clap::builder::ValueParser {
        clap::value_parser!(u64).into()
    }
}

/// Booleans read the same for every setting: `--flag` or `--flag=true` turns it on,
/// `--flag=false` off (`on`/`off`, `yes`/`no` and `1`/`0` also work), `flag = true` in the
/// file.
impl Setting for bool {
    fn value_parser() -> clap::builder::ValueParser {
        clap::builder::ValueParser::new(clap::builder::BoolishValueParser::new())
    }
    fn num_args() -> clap::builder::ValueRange {
        (0..=1).into()
    }
    fn missing_value() -> Option<&'static str> {
        Some("true")
    }
    fn is_on(value: &Option<Self>) -> bool {
        *value == Some(true)
    }
}

/// A flag's help: its documentation, then its default when it has one.
fn help_text(doc: &[&str], default: Option<String>) -> String {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    // As clap shows a one-paragraph doc comment: without the final full stop.
    let text = text.strip_suffix('.').unwrap_or(&text).to_string();
    match default {
        Some(d) => format!("{text} [default: {d}]"),
        None => text,
    }
}

fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--flag` and `key` of a field name, with the value when there is one to show.
fn flag_and_key(field: &str, value: Option<String>) -> String {
    let key = field.replace('_', "-");
    let value = value.map(|v| format!(" {v}")).unwrap_or_default();
    format!("--{key}{value} (`{key}` in the config file)")
}

macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty, $value_name:literal, path = $path:tt, default = $default:tt
            $(, needs = [$($need:ident),+])?;
    )+) => {
        /// How `osbuild serve` serves a repository. In a config file (TOML) the keys are the
        /// flag names without the leading dashes, e.g. `tls-cert = "/etc/osbuild/cert.pem"`;
        /// relative paths there are relative to the file. Flags override the file.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct ServeConfig {
            $(
                $(#[doc = $doc])+
                #[arg(
                    long,
                    value_name = $value_name,
                    value_parser = <$ty as Setting>::value_parser(),
                    num_args = <$ty as Setting>::num_args(),
                    default_missing_value = <$ty as Setting>::missing_value(),
                    help = help_text(&[$($doc),+], ServeConfig::shown_default(stringify!($field))),
                )]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )+
        }

        impl ServeConfig {
            /// `self` with every setting that `other` sets replaced.
            pub fn overridden_by(self, other: ServeConfig) -> Self {
                ServeConfig { $($field: other.$field.or(self.$field),)+ }
            }

            /// Make relative paths relative to `base`.
            fn paths_relative_to(&mut self, base: &Path) {
                $(settings!(@path $path, self.$field, base);)+
            }

            /// Every setting that has a default, filled in with it.
            pub fn with_defaults(&self) -> ServeConfig {
                ServeConfig { $($field: settings!(@fill self.$field, $default),)+ }
            }

            /// The default of a setting as the help shows it.
            fn shown_default(field: &str) -> Option<String> {
                $(if field == stringify!($field) {
                    return settings!(@shown $ty, $default);
                })+
                None
            }

            /// The settings that need another to work, as pairs of field names (the config
            /// key with `-` for `_`): (setting, the setting it needs).
            pub const NEEDS: &'static [(&'static str, &'static str)] = &[
                $($($((stringify!($field), stringify!($need)),)+)?)+
            ];

            /// Every setting that is on but lacks one it needs, named as flag and key.
            fn missing_needs(&self) -> Vec<String> {
                let mut missing = Vec::new();
                $($($(
                    if Setting::is_on(&self.$field) && !Setting::is_on(&self.$need) {
                        let value = self.$field.as_ref().and_then(Setting::shown);
                        missing.push(format!(
                            "{} needs {}",
                            flag_and_key(stringify!($field), value),
                            flag_and_key(stringify!($need), None)
                        ));
                    }
                )+)?)+
                missing
            }

            $(settings!(@accessor $field, $ty, $default);)+
        }
    };

    (@path true, $value:expr, $base:expr) => {
        if let Some(p) = &mut $value {
            if p.is_relative() {
                *p = $base.join(&*p);
            }
        }
    };
    (@path false, $value:expr, $base:expr) => {};

    (@fill $value:expr, none) => { Option::clone(&$value) };
    (@fill $value:expr, ($default:expr $(, $shown:literal)?)) => {
        Some(Option::clone(&$value).unwrap_or_else(|| $default))
    };

    (@shown $ty:ty, none) => { None };
    (@shown $ty:ty, ($default:expr)) => { Some(($default).to_string()) };
    (@shown $ty:ty, ($default:expr, $shown:literal)) => { Some($shown.to_string()) };

    (@accessor $field:ident, $ty:ty, none) => {};
    (@accessor $field:ident, $ty:ty, ($default:expr $(, $shown:literal)?)) => {
        #[doc = concat!("`", stringify!($field), "` as set, or its default.")]
        pub fn $field(&self) -> $ty {
            self.$field.unwrap_or_else(|| $default)
        }
    };
}

settings! {
    /// Archive repository to serve (required, here or in the config file).
    repo: PathBuf, "DIR", path = true, default = none;

    /// Listen address; HTTPS when --tls-cert is given.
    http: SocketAddr, "ADDR:PORT", path = false,
        default = (SocketAddr::from(([127, 0, 0, 1], 8080)));

    /// PEM certificate chain for HTTPS (needs --tls-key). Clients trust it with
    /// `ostree remote add --set=tls-ca-path=CA.pem`.
    tls_cert: PathBuf, "FILE", path = true, default = none, needs = [tls_key];

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching --tls-cert.
    tls_key: PathBuf, "FILE", path = true, default = none, needs = [tls_cert];

    /// Require HTTP basic auth against this htpasswd file (bcrypt `htpasswd -B`, `{SHA}` or
    /// `$apr1$` entries). Clients put the credentials in the remote URL:
    /// `https://USER:PASSWORD@HOST:PORT/repo/`.
    htpasswd: PathBuf, "FILE", path = true, default = none;

    /// Most connections served at once; further clients wait in the listen queue.
    max_connections: usize, "N", path = false, default = (1024);

    /// Seconds a client has to send a request's headers, and the longest an idle
    /// kept-alive connection stays open.
    header_timeout: u64, "SECONDS", path = false, default = (15);

    /// Seconds a connection may go without a byte received or sent while a request is
    /// answered, so slow or stalled clients cannot hold it.
    send_timeout: u64, "SECONDS", path = false, default = (60);

    /// MiB of memory for small immutable files (objects, deltas) asked for often; 0 turns
    /// the cache off.
    cache_size: usize, "MIB", path = false, default = (64);

    /// Threads serving connections, each with its own event loop.
    threads: usize, "N", path = false, default = (available_threads(), "one per CPU");

    /// Write one access log line per request to standard output.
    access_log: bool, "BOOL", path = false, default = (true);

    /// Also accept pushes over SSH on this address (the ostree-push protocol).
    ssh: SocketAddr, "ADDR:PORT", path = false, default = none,
        needs = [authorized_keys, host_key];

    /// OpenSSH private host key for --ssh; an ed25519 key is generated if it is missing.
    host_key: PathBuf, "FILE", path = true, default = none;

    /// OpenSSH authorized_keys file of the users who may push; `restrict`, `command=`,
    /// `from=` and `no-port-forwarding` are honoured.
    authorized_keys: PathBuf, "FILE", path = true, default = none;

    /// Refuse pushed commits without a valid GPG signature from --trusted-keyring.
    require_signature: bool, "BOOL", path = false, default = (false),
        needs = [trusted_keyring];

    /// GPG keyring whose keys pushed commits must be signed with.
    trusted_keyring: PathBuf, "FILE", path = true, default = none;

    /// Honour a pushing client's --force (non-fast-forward or older commits).
    allow_force: bool, "BOOL", path = false, default = (false);

    /// Publish the repository to this bucket (as `osbuild publish`) at start and after
    /// every push or other change; a failed publish is logged and retried. Credentials
    /// come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or ~/.aws/credentials.
    publish_to: crate::s3::BucketUrl, "s3://BUCKET[/PREFIX]", path = false, default = none;

    /// The S3 endpoint of --publish-to, e.g. http://127.0.0.1:3900 (AWS when unset).
    publish_endpoint: String, "URL", path = false, default = none, needs = [publish_to];

    /// The region of --publish-to ($AWS_REGION, else us-east-1, when unset).
    publish_region: String, "REGION", path = false, default = none, needs = [publish_to];
}

/// The certificate chain and key that turn HTTPS on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The effective settings: the config file and the flags merged, checked, and the
/// defaults applied. Made by [`ServeConfig::resolve`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// The archive repository served.
    pub repo: PathBuf,
    /// The HTTP(S) listen address.
    pub http: SocketAddr,
    /// HTTPS, when set.
    pub tls: Option<TlsFiles>,
    /// Basic auth against this htpasswd file, when set.
    pub htpasswd: Option<PathBuf>,
    /// Most connections served at once (at least 1).
    pub max_connections: usize,
    /// Time to send request headers; idle keep-alive limit.
    pub header_timeout: Duration,
    /// Longest stall of a connection while a request is answered.
    pub send_timeout: Duration,
    /// The hot-file cache's budget in bytes.
    pub cache_bytes: usize,
    /// Threads serving connections (at least 1).
    pub threads: usize,
    /// Whether to write the access log.
    pub access_log: bool,
    /// The SSH push listener, when set.
    pub ssh: Option<crate::ssh::SshOptions>,
    /// Where every change of the repository is published, when set.
    pub publish: Option<crate::s3::S3Options>,
}

impl Settings {
    /// The URL clients use, for the start-up message.
    pub fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}/repo/")
    }
}

impl ServeConfig {
    /// Read a TOML config file; relative paths in it are made relative to its directory.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading serve config {}", path.display()))?;
        let mut cfg: ServeConfig = toml::from_str(&text)
            .with_context(|| format!("parsing serve config {}", path.display()))?;
        cfg.paths_relative_to(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// The config file (if any) with the command-line flags laid over it. Relative paths
    /// of flags stay relative to the working directory.
    pub fn load(file: Option<&Path>, flags: ServeConfig) -> Result<Self> {
        let base = match file {
            Some(f) => Self::from_file(f)?,
            None => ServeConfig::default(),
        };
        Ok(base.overridden_by(flags))
    }

    /// Check that the settings hold together and produce the effective ones. Every
    /// missing setting is named, as flag and as config key, in one error.
    pub fn resolve(&self) -> Result<Settings> {
        let mut problems = Vec::new();
        if self.repo.is_none() {
            problems.push(format!(
                "no repository to serve: set {}",
                flag_and_key("repo", None)
            ));
        }
        problems.extend(self.missing_needs());
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("; "));
        }
        // Checked just above; the `else` is unreachable.
        let Some(repo) = self.repo.clone() else {
            anyhow::bail!("no repository to serve");
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let ssh = match (self.ssh, &self.authorized_keys, &self.host_key) {
            (Some(listen), Some(authorized_keys), Some(host_key)) => Some(crate::ssh::SshOptions {
                listen,
                host_key: host_key.clone(),
                authorized_keys: authorized_keys.clone(),
                repo: repo.clone(),
                policy: crate::receive::Policy {
                    require_signature: self.require_signature(),
                    trusted_keyring: self.trusted_keyring.clone(),
                    allow_force: self.allow_force(),
                },
            }),
            _ => None,
        };
        Ok(Settings {
            repo,
            http: self.http(),
            tls,
            htpasswd: self.htpasswd.clone(),
            max_connections: self.max_connections().max(1),
            header_timeout: Duration::from_secs(self.header_timeout().max(1)),
            send_timeout: Duration::from_secs(self.send_timeout().max(1)),
            cache_bytes: self.cache_size().saturating_mul(1 << 20),
            threads: self.threads().max(1),
            access_log: self.access_log(),
            ssh,
            publish: self.publish_to.clone().map(|to| crate::s3::S3Options {
                to,
                endpoint: self.publish_endpoint.clone(),
                region: self.publish_region.clone(),
                jobs: 8,
                progress_fd: None,
            }),
        })
    }

    /// The settings as a config file: those set, and every default, with paths made
    /// absolute (relative to the working directory), so that the text read back as a
    /// config file anywhere gives the same settings.
    pub fn to_toml(&self) -> Result<String> {
        let mut full = self.with_defaults();
        let cwd = std::env::current_dir().context("finding the working directory")?;
        full.paths_relative_to(&cwd);
        toml::to_string(&full).context("writing the settings as TOML")
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
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "repo = \"repo\"\nhttp = \"0.0.0.0:9000\"\nhtpasswd = \"/etc/htpasswd\"\n\
             max-connections = 10\nheader-timeout = 5\naccess-log = false\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--http", "127.0.0.1:1234", "--access-log"]);
        let cfg = ServeConfig::load(Some(&file), cli.serve)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(cfg.repo, dir.path().join("repo"));
        assert_eq!(cfg.http, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(cfg.htpasswd.as_deref(), Some(Path::new("/etc/htpasswd")));
        assert_eq!(cfg.max_connections, 10);
        assert_eq!(cfg.header_timeout, Duration::from_secs(5));
        assert_eq!(
            cfg.send_timeout,
            Duration::from_secs(ServeConfig::default().send_timeout())
        );
        assert!(cfg.access_log);
    }

    #[test]
    fn booleans_read_the_same_everywhere() {
        for (args, want) in [
            (&["x"][..], None),
            (&["x", "--allow-force"][..], Some(true)),
            (&["x", "--allow-force=true"][..], Some(true)),
            (&["x", "--allow-force=false"][..], Some(false)),
            (&["x", "--allow-force", "off"][..], Some(false)),
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.serve.allow_force, want, "{args:?}");
        }
    }

    #[test]
    fn help_shows_each_default_once() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let help = |long: &str| {
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        assert!(
            help("http").ends_with("[default: 127.0.0.1:8080]"),
            "{}",
            help("http")
        );
        assert!(help("threads").ends_with("[default: one per CPU]"));
        assert!(help("access-log").ends_with("[default: true]"));
        assert!(!help("repo").contains("default:"), "{}", help("repo"));
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
    fn missing_settings_are_named_as_flag_and_key() {
        let cfg = ServeConfig {
            tls_key: Some("k.pem".into()),
            require_signature: Some(true),
            ..Default::default()
        };
        let err = cfg.resolve().unwrap_err().to_string();
        for needle in [
            "--repo",
            "`repo`",
            "--tls-cert",
            "`tls-cert`",
            "--trusted-keyring",
            "`trusted-keyring`",
        ] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // Off is not on: no keyring is needed.
        let cfg = ServeConfig {
            repo: Some("r".into()),
            require_signature: Some(false),
            ..Default::default()
        };
        cfg.resolve().unwrap();
    }

    #[test]
    fn printed_settings_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServeConfig {
            repo: Some(dir.path().join("repo")),
            ssh: Some("127.0.0.1:2222".parse().unwrap()),
            host_key: Some("relative/host_key".into()),
            authorized_keys: Some("/etc/ak".into()),
            access_log: Some(false),
            ..Default::default()
        };
        let text = cfg.to_toml().unwrap();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &text).unwrap();
        let back = ServeConfig::from_file(&file).unwrap();
        let mut want = cfg.with_defaults();
        want.paths_relative_to(&std::env::current_dir().unwrap());
        assert_eq!(back, want, "{text}");
        assert!(text.contains("max-connections = 1024"), "{text}");
    }

    #[test]
    fn the_dependencies_are_declared() {
        assert!(ServeConfig::NEEDS.contains(&("ssh", "authorized_keys")));
        assert!(ServeConfig::NEEDS.contains(&("tls_key", "tls_cert")));
    }
}
