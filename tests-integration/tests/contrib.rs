//! contrib/: the default config file and the systemd unit cannot drift from the code.
//!
//! contrib/serve.toml must name every `osbuild serve` option (the list comes from clap,
//! i.e. from `ServeConfig` itself), parse as it ships, parse with every line uncommented,
//! and show the code's defaults. The unit must pass `systemd-analyze verify` without a
//! warning and run the config file it documents.

// Tests look at the exit status and output of the programs they run, which
// osbuild_core::cmd turns into errors.
#![allow(clippy::disallowed_methods)]

use clap::Args;
use osbuild_testing::helpers::{osbuild_bin, output, text, workspace_root};
use osbuild_testing::{require, Need};
use ostree_serve::ServeConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn contrib(path: &str) -> PathBuf {
    workspace_root().join("contrib").join(path)
}

/// The long flag names of `osbuild serve`'s settings, which are the config file's keys.
fn option_keys() -> Vec<String> {
    ServeConfig::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(str::to_string)
        .collect()
}

/// The settings of a config file, set (`key = value`) or shown commented (`#key = value`),
/// as key -> (line number, the line without its `#`).
fn settings(text: &str) -> BTreeMap<String, Vec<(usize, String)>> {
    let mut found: BTreeMap<String, Vec<(usize, String)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let setting = line.strip_prefix('#').unwrap_or(line);
        let Some((key, _)) = setting.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty()
            && !setting.starts_with(' ')
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        {
            found
                .entry(key.to_string())
                .or_default()
                .push((n + 1, setting.to_string()));
        }
    }
    found
}

fn write_temp(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn default_config_names_every_option_once() {
    let path = contrib("serve.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let found = settings(&text);
    let keys = option_keys();
    assert!(keys.len() >= 15, "clap lists only {keys:?}");
    let missing: Vec<_> = keys.iter().filter(|k| !found.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} lacks the options {missing:?}: add each as `#key = default` with its doc",
        path.display()
    );
    let unknown: Vec<_> = found.keys().filter(|k| !keys.contains(k)).collect();
    assert!(
        unknown.is_empty(),
        "{} has settings that are no option of osbuild serve: {unknown:?}",
        path.display()
    );
    let repeated: Vec<_> = found.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        repeated.is_empty(),
        "{} sets options more than once: {repeated:?}",
        path.display()
    );
}

#[test]
fn default_config_parses_as_shipped_and_fully_uncommented() {
    let path = contrib("serve.toml");
    let text = std::fs::read_to_string(&path).unwrap();

    // As shipped: only the repository is set, everything else is the code's default.
    let shipped = ServeConfig::from_file(&path)
        .unwrap_or_else(|e| panic!("{} does not parse: {e:#}", path.display()));
    assert_eq!(
        shipped,
        ServeConfig {
            repo: Some("/srv/ostree/repo".into()),
            ..Default::default()
        },
        "{} should set only `repo`; the rest stays commented",
        path.display()
    );

    // Every commented setting is valid as written: uncomment them all and parse again
    // (unknown keys and wrongly typed values are refused by the parser).
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(setting) if settings(line).values().next().is_some() => setting,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let full_path = write_temp(dir.path(), "serve.toml", &uncommented);
    let full = ServeConfig::from_file(&full_path)
        .unwrap_or_else(|e| panic!("{} with every line uncommented: {e:#}", path.display()));
    let unset: Vec<_> = option_keys()
        .into_iter()
        .filter(|k| !settings(&uncommented).contains_key(k))
        .collect();
    assert!(unset.is_empty(), "not set after uncommenting: {unset:?}");

    // The values shown for options with a default are the defaults: every key that
    // `with_defaults` fills in, except `threads`, whose default depends on the machine.
    let table = |cfg: &ServeConfig| -> toml::Table {
        toml::from_str(&toml::to_string(cfg).unwrap()).unwrap()
    };
    let defaults = table(&ServeConfig::default().with_defaults());
    let shown = table(&full);
    assert!(defaults.len() >= 8, "{defaults:?}");
    for (key, default) in defaults.iter().filter(|(k, _)| *k != "threads") {
        assert_eq!(
            shown.get(key),
            Some(default),
            "{}: `{key}` should show the default",
            path.display()
        );
    }
    // And the whole file is a working server configuration: the settings that need
    // another have it (ssh needs authorized-keys and host-key, a signature a keyring).
    full.resolve()
        .unwrap_or_else(|e| panic!("settings of the uncommented file: {e:#}"));
}

#[test]
fn systemd_unit_runs_the_default_config_and_verifies() {
    let path = contrib("systemd/osbuild-serve.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    assert!(
        unit.lines().any(
            |l| l == "ExecStart=/usr/local/bin/osbuild serve --config /etc/osbuild/serve.toml"
        ),
        "{} should run /usr/local/bin/osbuild serve --config /etc/osbuild/serve.toml",
        path.display()
    );
    // The repository of the default config is writable in the unit's sandbox.
    let repo = ServeConfig::from_file(&contrib("serve.toml"))
        .unwrap()
        .repo
        .unwrap();
    assert!(
        unit.lines().any(|l| l.starts_with("ReadWritePaths=")
            && l.trim_start_matches("ReadWritePaths=")
                .split_whitespace()
                .any(|p| Path::new(p.trim_start_matches('-')) == repo)),
        "{}: ReadWritePaths= should name {}, the repo of contrib/serve.toml",
        path.display(),
        repo.display()
    );

    if !require(&[Need::SystemdAnalyze]) {
        return;
    }
    // verify checks that ExecStart= exists: point it at the binary of this build.
    let dir = tempfile::tempdir().unwrap();
    let copy = write_temp(
        dir.path(),
        "osbuild-serve.service",
        &unit.replace("/usr/local/bin/osbuild", &osbuild_bin().to_string_lossy()),
    );
    let out = output(Command::new("systemd-analyze").arg("verify").arg(&copy));
    let text = text(&out);
    // It exits 0 on unknown or malformed directives, with a warning naming the unit.
    let warnings: Vec<_> = text
        .lines()
        .filter(|l| l.contains("osbuild-serve.service"))
        .collect();
    assert!(
        out.status.success() && warnings.is_empty(),
        "systemd-analyze verify {} ({}):\n{text}",
        path.display(),
        out.status
    );
}
