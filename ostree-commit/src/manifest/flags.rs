//! The command-line flags that override manifest keys. Which keys have one, the flag's
//! name and what it does are declared with the key in `raw.rs`; its help is the key's doc
//! comment. The CLI builds its arguments from [`key_flags`] and hands what was given back
//! as [`Overrides`], which [`Overrides::apply`] lays over a [`Bootstrap`].

use super::check;
use super::raw::SECTIONS;
use crate::{Base, Bootstrap, ImageSettings, Init, Sign};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Which command a flag belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagScope {
    /// What the tree is built from and holds: `bootstrap`, `commit`, `commit-push`.
    Tree,
    /// The commit made of the tree: `commit`, `commit-push`.
    Commit,
    /// The disk image made of a commit, and the device's remote: `make-image`.
    Image,
}

/// What a flag does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagAction {
    /// Given once; replaces the key's value.
    Set,
    /// Repeatable; each value is added after the key's.
    Add,
    /// Repeatable or comma-separated; each value is added after the key's.
    AddList,
    /// Takes no value; given, it turns the (boolean) key on.
    Switch,
}

/// A flag that overrides a manifest key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFlag {
    /// The key as errors and docs/manifest.md name it: `base.suite`.
    pub key: String,
    /// The long flag without its dashes: `suite`.
    pub name: &'static str,
    /// The placeholder for its value in the help: `SUITE`.
    pub value_name: &'static str,
    /// What it does to the key.
    pub action: FlagAction,
    /// Which commands take it.
    pub scope: FlagScope,
    /// The key's documentation and what the flag does to it.
    pub help: String,
}

/// Every flag that overrides a key, in the reference's order.
pub fn key_flags() -> Vec<KeyFlag> {
    let mut flags = Vec::new();
    for section in SECTIONS {
        for key in section.keys {
            let Some(decl) = key.flag else { continue };
            let name = format!(
                "{}{}",
                section.key_prefix(),
                key.name.trim_start_matches("r#")
            );
            let doc = first_sentence(key.doc);
            let how = match decl.action {
                FlagAction::Set => format!("Overrides the manifest's `{name}`."),
                FlagAction::Add => {
                    format!("Repeatable; added after the manifest's `{name}`.")
                }
                FlagAction::AddList => {
                    format!("Repeatable, or comma-separated; added to the manifest's `{name}`.")
                }
                FlagAction::Switch => format!("Turns on the manifest's `{name}`."),
            };
            flags.push(KeyFlag {
                help: format!("{doc} {how}"),
                key: name,
                name: decl.name,
                value_name: decl.value_name,
                action: decl.action,
                scope: decl.scope,
            });
        }
    }
    flags
}

/// What make-image's flags say of the device's remote; each unset when not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteFlags {
    /// `--remote-url`.
    pub url: Option<String>,
    /// `--remote-name`.
    pub name: Option<String>,
    /// `--gpg-key`.
    pub gpg_key: Option<PathBuf>,
}

/// The first sentence of a key's doc comment: the rest is about the manifest's value
/// (templates, paths beside the manifest), which a flag's value is not.
fn first_sentence(doc: &[&str]) -> String {
    let text = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    let mut from = 0;
    while let Some(i) = text[from..].find(". ").map(|i| i + from) {
        if !(text[..i].ends_with("e.g") || text[..i].ends_with("i.e")) {
            return text[..=i].to_string();
        }
        from = i + 2;
    }
    text
}

/// The values given on the command line for keys' flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    values: Vec<(KeyFlag, Vec<String>)>,
}

impl Overrides {
    /// Record `values` given for `flag` (none: the flag was not given).
    pub fn insert(&mut self, flag: KeyFlag, values: Vec<String>) {
        if !values.is_empty() {
            self.values.push((flag, values));
        }
    }

    /// The values given for `key` (`base.suite`), in order; empty when none were.
    pub fn values(&self, key: &str) -> &[String] {
        self.values
            .iter()
            .find(|(f, _)| f.key == key)
            .map_or(&[], |(_, v)| v.as_slice())
    }

    /// The value given for `key`, the last one if it was given several times.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values(key).last().map(String::as_str)
    }

    /// Lay make-image's flags over `image` (the manifest's `[image]`, or the defaults),
    /// checking their values as the manifest's are checked.
    pub fn apply_image(&self, image: &mut ImageSettings) -> Result<()> {
        for (flag, values) in &self.values {
            if flag.scope != FlagScope::Image || !flag.key.starts_with("image.") {
                continue;
            }
            let v = values.last().map(String::as_str).unwrap_or_default();
            let named = |m: String| anyhow::anyhow!("--{} {v:?}: {m}", flag.name);
            match flag.key.as_str() {
                "image.bootloader" => image.bootloader = Some(check::choice(v).map_err(named)?),
                "image.firmware" => image.firmware = Some(check::choice(v).map_err(named)?),
                "image.partition_table" => {
                    image.partition_table = Some(check::choice(v).map_err(named)?);
                }
                "image.format" => image.format = Some(check::choice(v).map_err(named)?),
                "image.size" => {
                    image.size = Some(v.parse().map_err(|e| named(format!("{e:#}")))?);
                }
                "image.secure_boot" => image.secure_boot = Some(true),
                "image.os" => {
                    check::segment(v, "stateroot name").map_err(named)?;
                    image.os = Some(v.to_string());
                }
                // A key declared with an image flag in raw.rs and no arm here: the flags
                // test fails first.
                other => bail!("--{}: overriding {other} is not implemented", flag.name),
            }
        }
        Ok(())
    }

    /// What make-image's flags say of the device's remote, checked as the manifest's
    /// `[remote]` is.
    pub fn remote(&self) -> Result<RemoteFlags> {
        let named = |key: &str, check: &dyn Fn(&str) -> Result<(), String>| {
            self.value(key)
                .map(|v| {
                    let flag = self.values.iter().find(|(f, _)| f.key == key);
                    let name = flag.map_or("", |(f, _)| f.name);
                    check(v)
                        .map(|()| v.to_string())
                        .map_err(|m| anyhow::anyhow!("--{name} {v:?}: {m}"))
                })
                .transpose()
        };
        Ok(RemoteFlags {
            url: named("remote.url", &|u| {
                check::url(u, &["http://", "https://", "file://"])
            })?,
            name: named("remote.name", &|n| check::segment(n, "remote name"))?,
            gpg_key: self.value("remote.gpg_key").map(PathBuf::from),
        })
    }

    /// The signing `--gpg-sign` and `--gpg-homedir` ask for, over the manifest's `[sign]`:
    /// keys are added to the manifest's, the home replaces its.
    pub fn sign(&self, manifest: Option<&Sign>) -> Result<Option<Sign>> {
        let mut key_ids: Vec<String> = manifest.map(|m| m.key_ids.clone()).unwrap_or_default();
        for k in self.values("sign.gpg_key") {
            check::gpg_key_id(k).map_err(|m| anyhow::anyhow!("--gpg-sign {k:?}: {m}"))?;
            if !key_ids.contains(k) {
                key_ids.push(k.clone());
            }
        }
        let homedir = match self.value("sign.gpg_homedir") {
            Some(h) => {
                let h = PathBuf::from(h);
                anyhow::ensure!(
                    h.is_dir(),
                    "--gpg-homedir {}: not a directory (the GPG home with the signing keys)",
                    h.display()
                );
                Some(h)
            }
            None => manifest.and_then(|m| m.homedir.clone()),
        };
        if key_ids.is_empty() {
            anyhow::ensure!(
                homedir.is_none() || manifest.is_some(),
                "--gpg-homedir without a key to sign with: add --gpg-sign KEYID"
            );
            return Ok(None);
        }
        Ok(Some(Sign { key_ids, homedir }))
    }

    /// Lay the tree's flags over `spec` (what a manifest describes, or the default
    /// Debian tree without one), checking their values as the manifest's are checked.
    pub fn apply(&self, spec: &mut Bootstrap) -> Result<()> {
        // --image replaces the base first, so that Debian-only flags are judged against it.
        if let Some(image) = self.value("base.image") {
            let image = crate::Image::parse(image)
                .map_err(|m| anyhow::anyhow!("--image {image:?}: {m}"))?
                .relative_to(Path::new("."));
            if !matches!(spec.base, Base::Image(_)) && spec.hostname.as_deref() == Some("osbuild") {
                // Flags alone (no manifest): the name every image base gets.
                spec.hostname = Some("localhost".into());
            }
            spec.base = Base::Image(image);
        }
        let mut debian_only = Vec::new();
        for (flag, values) in &self.values {
            if flag.scope != FlagScope::Tree {
                continue;
            }
            let checked = |r: Result<(), String>, v: &str| match r {
                Ok(()) => Ok(v.to_string()),
                Err(m) => Err(anyhow::anyhow!("--{} {v:?}: {m}", flag.name)),
            };
            let last = values.last().map(String::as_str).unwrap_or_default();
            match (flag.key.as_str(), &mut spec.base) {
                ("base.image", _) => {}
                ("hostname", _) => spec.hostname = Some(checked(check::hostname(last), last)?),
                ("overlays", _) => spec.overlays.extend(values.iter().map(PathBuf::from)),
                ("base.suite", Base::Debian(d)) => {
                    d.suite = checked(check::archive_word(last, "suite"), last)?;
                }
                ("base.mirror", Base::Debian(d)) => {
                    let schemes = ["http://", "https://", "file:/"];
                    d.mirror = Some(checked(check::url(last, &schemes), last)?);
                }
                ("base.init", Base::Debian(d)) => {
                    d.init = Init::parse(last)
                        .map_err(|m| anyhow::anyhow!("--{} {last:?}: {m}", flag.name))?;
                }
                ("kernel.package", Base::Debian(d)) => {
                    d.kernel = checked(check::package_name(last), last)?;
                }
                ("packages", Base::Debian(d)) => {
                    for v in values {
                        d.packages.push(checked(check::package_name(v), v)?);
                    }
                }
                ("base.suite" | "base.mirror" | "base.init" | "kernel.package" | "packages", _) => {
                    debian_only.push(format!("--{}", flag.name));
                }
                // A key declared with a tree flag in raw.rs and no arm here: the
                // flags test fails first.
                (other, _) => bail!("--{}: overriding {other} is not implemented", flag.name),
            }
        }
        if !debian_only.is_empty() {
            bail!(
                "{} only apply to a Debian base, and the base is a tarball, directory or image: leave them out",
                debian_only.join(", ")
            );
        }
        Ok(())
    }
}
