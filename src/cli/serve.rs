//! `osbuild serve`: the settings come from a config file and flags, merged and then
//! checked once (so a setting may need one given the other way).

use anyhow::{Context, Result};
use ostree_serve::ServeConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Serve a repository.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// TOML file of serve settings, keyed by the flag names (`tls-cert = "…"`); flags
    /// given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective settings (config file, flags and defaults) as a config file,
    /// and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    pub(super) settings: ServeConfig,
}

impl ServeArgs {
    /// The config file with the flags laid over it.
    fn merged(&self) -> Result<ServeConfig> {
        ServeConfig::load(self.config.as_deref(), self.settings.clone())
    }

    pub(super) fn run(self) -> Result<ExitCode> {
        let cfg = self.merged()?;
        // Checked before anything starts, and before printing: what is printed works.
        cfg.resolve()?;
        if self.print_config {
            print!("{}", cfg.to_toml()?);
            return Ok(ExitCode::SUCCESS);
        }
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        rt.block_on(ostree_serve::serve_config(&cfg))?;
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;
    use std::path::Path;

    fn serve(args: &[&str]) -> ServeArgs {
        match parse(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .command
        {
            Command::Serve(a) => a,
            other => panic!("{other:?}"),
        }
    }

    /// A value for a setting, as a flag's argument and as TOML.
    fn sample(field: &str) -> (String, String) {
        let value = match field {
            "ssh" => "127.0.0.1:2222",
            "publish_to" => "s3://fleet-repo/os",
            "publish_endpoint" => "http://127.0.0.1:3900",
            "publish_region" => "garage",
            "require_signature" => "true",
            "tls_cert" | "tls_key" | "authorized_keys" | "host_key" | "trusted_keyring" => {
                "/etc/osbuild/file"
            }
            other => panic!("no sample value for {other}: add one"),
        };
        let toml = if value == "true" {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        (value.to_string(), toml)
    }

    /// Every other setting that `field` needs, so that only the pair under test is split.
    fn the_rest_of(field: &str, but: &str) -> Vec<String> {
        ServeConfig::NEEDS
            .iter()
            .filter(|(f, n)| *f == field && *n != but)
            .map(|(_, n)| n.to_string())
            .collect()
    }

    fn kebab(field: &str) -> String {
        field.replace('_', "-")
    }

    /// The file sets `in_file`, the flags set `in_flags`; parse and merge as `osbuild
    /// serve` does, and resolve.
    fn split(dir: &Path, in_file: &[String], in_flags: &[String]) -> Result<ServeConfig> {
        let mut text = "repo = \"/srv/repo\"\n".to_string();
        for f in in_file {
            text.push_str(&format!("{} = {}\n", kebab(f), sample(f).1));
        }
        let file = dir.join("serve.toml");
        std::fs::write(&file, text).unwrap();
        let mut args = vec![
            "osbuild".to_string(),
            "serve".into(),
            "--config".into(),
            file.display().to_string(),
        ];
        for f in in_flags {
            args.push(format!("--{}={}", kebab(f), sample(f).0));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cfg = serve(&args).merged()?;
        cfg.resolve()?;
        Ok(cfg)
    }

    #[test]
    fn dependent_settings_may_be_split_between_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ServeConfig::NEEDS.len() >= 5, "{:?}", ServeConfig::NEEDS);
        for (field, need) in ServeConfig::NEEDS {
            let rest = the_rest_of(field, need);
            let with = |v: &[&str]| {
                let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
                v.extend(rest.iter().cloned());
                v
            };
            // The setting in the file, what it needs as a flag, and the other way round.
            split(dir.path(), &with(&[field]), &[need.to_string()])
                .unwrap_or_else(|e| panic!("{field} in the file, {need} as a flag: {e:#}"));
            split(
                dir.path(),
                &with(&[]),
                &[field.to_string(), need.to_string()],
            )
            .unwrap_or_else(|e| panic!("{field} and {need} as flags: {e:#}"));
            split(dir.path(), &[need.to_string()], &with(&[field]))
                .unwrap_or_else(|e| panic!("{field} as a flag, {need} in the file: {e:#}"));
            // Missing everywhere: an error naming the flags and the keys of both.
            for (in_file, in_flags) in [
                (with(&[field]), vec![]),
                (rest.clone(), vec![field.to_string()]),
            ] {
                let err = split(dir.path(), &in_file, &in_flags)
                    .err()
                    .unwrap_or_else(|| panic!("{field} without {need} was accepted"));
                let err = format!("{err:#}");
                for name in [field, need] {
                    let key = kebab(name);
                    assert!(
                        err.contains(&format!("--{key}")) && err.contains(&format!("`{key}`")),
                        "{field} without {need}: {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn ssh_in_the_flags_and_its_keys_in_the_file() {
        // The case that clap's `requires` refused before the file was read.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(
            &file,
            "repo = \"repo\"\nauthorized-keys = \"ak\"\nhost-key = \"hk\"\ntls-key = \"key.pem\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let a = serve(&[
            "osbuild",
            "serve",
            "--config",
            f,
            "--http",
            "127.0.0.1:0",
            "--ssh",
            "127.0.0.1:0",
            "--tls-cert",
            "cert.pem",
        ]);
        let settings = a.merged().unwrap().resolve().unwrap();
        let ssh = settings.ssh.unwrap();
        assert_eq!(ssh.authorized_keys, dir.path().join("ak"));
        assert_eq!(settings.tls.unwrap().key, dir.path().join("key.pem"));
    }

    #[test]
    fn print_config_reads_back_as_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("serve.toml");
        std::fs::write(&file, "repo = \"repo\"\nmax-connections = 7\n").unwrap();
        let f = file.to_str().unwrap();
        let a = serve(&[
            "osbuild",
            "serve",
            "--config",
            f,
            "--print-config",
            "--access-log=false",
        ]);
        assert!(a.print_config);
        let merged = a.merged().unwrap();
        let printed = merged.to_toml().unwrap();
        let again = dir.path().join("printed.toml");
        std::fs::write(&again, &printed).unwrap();
        let back = ServeConfig::from_file(&again).unwrap();
        assert_eq!(
            back,
            ServeConfig::from_file(&again).unwrap().with_defaults()
        );
        assert_eq!(back.repo, Some(dir.path().join("repo")), "{printed}");
        assert_eq!((back.max_connections(), back.access_log()), (7, false));
        assert_eq!(back.http(), merged.http());
        assert_eq!(
            format!("{:?}", back.resolve().unwrap()),
            format!("{:?}", merged.resolve().unwrap())
        );
    }
}
