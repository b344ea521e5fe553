//! Loading: the TOML is parsed into the `raw` structs, then each value is checked and
//! turned into the public types, every error carrying its key path and position.

use super::raw::{RawBase, RawFile, RawImage, RawManifest, RawMode, RawUser};
use super::*;
use crate::{Debian, Directory, Image, Init, Tarball};
use std::fmt::Write as _;
use std::ops::Range;

/// The line and column (1-based, in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Parse and check, with SOURCE_DATE_EPOCH given (tests pass it explicitly).
pub(super) fn parse(
    text: &str,
    path: &Path,
    epoch: Option<&str>,
) -> Result<Manifest, ManifestError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let cx = Cx { text, path, dir };
    if let Err(e) = toml::de::DeTable::parse(text) {
        return Err(cx.toml_error(&e, true));
    }
    let raw: RawManifest = toml::from_str(text).map_err(|e| cx.toml_error(&e, false))?;
    cx.manifest(raw, epoch)
}

/// What errors need to say where they are.
struct Cx<'a> {
    text: &'a str,
    path: PathBuf,
    dir: PathBuf,
}

type Str = Spanned<String>;

/// Whether a referenced path must be a directory or a regular file.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    Dir,
    File,
}

impl Cx<'_> {
    fn err(
        &self,
        key: impl Into<String>,
        span: Range<usize>,
        kind: ManifestErrorKind,
    ) -> ManifestError {
        let (line, column) = line_column(self.text, span.start);
        ManifestError {
            path: self.path.clone(),
            key: key.into(),
            line,
            column,
            kind,
        }
    }

    fn invalid(&self, key: impl Into<String>, span: Range<usize>, msg: String) -> ManifestError {
        self.err(key, span, ManifestErrorKind::Invalid(msg))
    }

    /// A TOML error: a syntax error, or one serde raised against the structs.
    fn toml_error(&self, e: &toml::de::Error, syntax: bool) -> ManifestError {
        let span = e.span().unwrap_or(0..0);
        let message = e
            .message()
            .trim()
            .replace('\n', "; ")
            .replace("a sequence", "a list")
            .replace("a map", "a table");
        if syntax {
            return self.err(String::new(), span, ManifestErrorKind::Syntax(message));
        }
        let mut key = key_path_at(self.text, &span);
        let kind = if let Some(rest) = message.strip_prefix("unknown field") {
            ManifestErrorKind::UnknownKey(format!("unknown key{rest}"))
        } else if let Some(rest) = message.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or_default();
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(field);
            ManifestErrorKind::MissingKey
        } else {
            ManifestErrorKind::WrongType(message)
        };
        self.err(key, span, kind)
    }

    /// Check a string with one of the `check` rules.
    fn checked(
        &self,
        key: impl Into<String>,
        value: &Str,
        rule: impl Fn(&str) -> Result<(), String>,
    ) -> Result<String, ManifestError> {
        rule(value.get_ref()).map_err(|m| self.invalid(key, value.span(), m))?;
        Ok(value.get_ref().clone())
    }

    /// A path beside the manifest that must exist as `want`; returned absolute.
    fn existing(
        &self,
        key: impl Into<String>,
        value: &Str,
        want: Want,
    ) -> Result<PathBuf, ManifestError> {
        let key = key.into();
        if value.get_ref().is_empty() {
            return Err(self.invalid(key, value.span(), "the path is empty".into()));
        }
        let path = self.dir.join(value.get_ref());
        let reason = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "does not exist (paths are relative to the manifest's directory)".to_string()
            }
            Err(e) => format!("cannot be read: {e}"),
            Ok(m) if want == Want::Dir && !m.is_dir() => "is not a directory".to_string(),
            Ok(m) if want == Want::File && !m.is_file() => "is not a regular file".to_string(),
            Ok(_) => return Ok(path),
        };
        Err(self.err(
            key,
            value.span(),
            ManifestErrorKind::MissingFile { path, reason },
        ))
    }

    fn list(
        &self,
        key: &str,
        values: &Option<Vec<Str>>,
        rule: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Vec<String>, ManifestError> {
        let values = values.as_deref().unwrap_or_default();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| self.checked(format!("{key}[{i}]"), v, &rule))
            .collect()
    }

    fn paths(
        &self,
        key: &str,
        values: &Option<Vec<Str>>,
        want: Want,
    ) -> Result<Vec<PathBuf>, ManifestError> {
        let values = values.as_deref().unwrap_or_default();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| self.existing(format!("{key}[{i}]"), v, want))
            .collect()
    }

    /// Scripts must exist and start with `#!`: they are executed, by whatever
    /// interpreter that line names in the tree.
    fn scripts(&self, post: &[Str]) -> Result<Vec<PathBuf>, ManifestError> {
        let mut scripts = Vec::new();
        for (i, s) in post.iter().enumerate() {
            let key = format!("scripts.post[{i}]");
            let path = self.existing(key.clone(), s, Want::File)?;
            let mut head = [0u8; 2];
            let starts = std::fs::File::open(&path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
                .is_ok_and(|()| &head == b"#!");
            if !starts {
                return Err(self.invalid(
                    key,
                    s.span(),
                    format!(
                        "{} does not start with a #! line: begin it with e.g. #!/bin/sh",
                        path.display()
                    ),
                ));
            }
            scripts.push(path);
        }
        Ok(scripts)
    }

    fn manifest(&self, raw: RawManifest, epoch: Option<&str>) -> Result<Manifest, ManifestError> {
        let name = self.checked("name", &raw.name, |s| check::segment(s, "name"))?;
        let hostname = raw
            .hostname
            .as_ref()
            .map(|h| self.checked("hostname", h, check::hostname))
            .transpose()?;
        let Some(raw_base) = raw.base else {
            return Err(self.err("base", 0..0, ManifestErrorKind::MissingKey));
        };
        let base_span = raw_base.span();
        let packages = self.list("packages", &raw.packages, check::package_name)?;
        let kernel_package = raw
            .kernel
            .as_ref()
            .and_then(|k| k.package.as_ref())
            .map(|p| {
                let name = self.checked("kernel.package", p, check::package_name)?;
                Ok::<_, ManifestError>((name, p.span()))
            })
            .transpose()?;
        let installs = Installs {
            packages_at: raw
                .packages
                .as_deref()
                .and_then(|p| p.first())
                .map(Spanned::span),
            packages,
            kernel: kernel_package,
        };
        let base = self.base(raw_base, installs)?;

        let ostree_ref = self.ostree_ref(raw.r#ref.as_ref(), &raw.name, &name, &base, base_span)?;
        let (version, source_date_epoch) = match &raw.version {
            None => (None, None),
            Some(v) => self.version(v, epoch)?,
        };

        let overlays = self.paths("overlays", &raw.overlays, Want::Dir)?;
        let files = self.files(raw.files.unwrap_or_default())?;
        let users = self.users(raw.users.unwrap_or_default())?;
        let services = match raw.services {
            None => Services::default(),
            Some(s) => {
                let s = s.into_inner();
                let services = Services {
                    enable: self.list("services.enable", &s.enable, check::unit_name)?,
                    disable: self.list("services.disable", &s.disable, check::unit_name)?,
                    openrc: Vec::new(),
                };
                if let Some(i) = services
                    .disable
                    .iter()
                    .position(|u| services.enable.contains(u))
                {
                    let span = s.disable.as_deref().unwrap_or_default()[i].span();
                    return Err(self.invalid(
                        format!("services.disable[{i}]"),
                        span,
                        format!(
                            "{:?} is also in services.enable: keep it in one list",
                            services.disable[i]
                        ),
                    ));
                }
                services
            }
        };
        let kernel_args = match &raw.kernel {
            None => Vec::new(),
            Some(k) => self.list("kernel.args", &k.args, |a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    Err(format!("{a:?} is not one kernel argument: give each argument, without spaces, as its own entry"))
                } else {
                    Ok(())
                }
            })?,
        };
        let scripts = Scripts {
            post: match &raw.scripts {
                Some(s) => self.scripts(s.post.as_deref().unwrap_or_default())?,
                None => Vec::new(),
            },
        };
        let remote =
            raw.remote
                .map(|r| {
                    let r = r.into_inner();
                    Ok::<_, ManifestError>(Remote {
                        url: self.checked("remote.url", &r.url, |u| {
                            check::url(u, &["http://", "https://", "file://"])
                        })?,
                        name: match &r.name {
                            Some(n) => self
                                .checked("remote.name", n, |s| check::segment(s, "remote name"))?,
                            None => DEFAULT_REMOTE.into(),
                        },
                        gpg_key: r
                            .gpg_key
                            .as_ref()
                            .map(|k| self.existing("remote.gpg_key", k, Want::File))
                            .transpose()?,
                    })
                })
                .transpose()?;
        let push = raw
            .push
            .map(|p| {
                let p = p.into_inner();
                let destination = p
                    .destination
                    .get_ref()
                    .parse::<Destination>()
                    .map_err(|e| {
                        self.invalid("push.destination", p.destination.span(), e.to_string())
                    })?;
                Ok::<_, ManifestError>(PushTarget {
                    destination,
                    identity: p
                        .identity
                        .as_ref()
                        .map(|i| self.existing("push.identity", i, Want::File))
                        .transpose()?,
                    known_hosts: p
                        .known_hosts
                        .as_ref()
                        .map(|k| self.existing("push.known_hosts", k, Want::File))
                        .transpose()?,
                })
            })
            .transpose()?;

        let sign = raw
            .sign
            .map(|g| {
                let span = g.span();
                let g = g.into_inner();
                if g.gpg_key.is_empty() {
                    return Err(self.invalid(
                        "sign.gpg_key",
                        span,
                        "name at least one key, or leave [sign] out".into(),
                    ));
                }
                let key_ids = g
                    .gpg_key
                    .iter()
                    .enumerate()
                    .map(|(i, k)| self.checked(format!("sign.gpg_key[{i}]"), k, check::gpg_key_id))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, ManifestError>(Sign {
                    key_ids,
                    homedir: g
                        .gpg_homedir
                        .as_ref()
                        .map(|h| self.existing("sign.gpg_homedir", h, Want::Dir))
                        .transpose()?,
                })
            })
            .transpose()?;
        let image = match raw.image {
            Some(i) => self.image(i)?,
            None => ImageSettings::default(),
        };

        Ok(Manifest {
            path: self.path.clone(),
            name,
            version,
            source_date_epoch,
            hostname,
            ostree_ref,
            base,
            overlays,
            files,
            users,
            services,
            kernel_args,
            scripts,
            remote,
            push,
            sign,
            image,
        })
    }

    /// `[image]`: each value one make-image accepts for its flag.
    fn image(&self, raw: RawImage) -> Result<ImageSettings, ManifestError> {
        fn choice<T: clap::ValueEnum>(
            cx: &Cx<'_>,
            key: &str,
            value: &Option<Str>,
        ) -> Result<Option<T>, ManifestError> {
            let Some(v) = value else { return Ok(None) };
            check::choice(v.get_ref())
                .map(Some)
                .map_err(|m| cx.invalid(key, v.span(), m))
        }
        Ok(ImageSettings {
            bootloader: choice(self, "image.bootloader", &raw.bootloader)?,
            firmware: choice(self, "image.firmware", &raw.firmware)?,
            partition_table: choice(self, "image.partition_table", &raw.partition_table)?,
            format: choice(self, "image.format", &raw.format)?,
            size: raw
                .size
                .as_ref()
                .map(|v| {
                    v.get_ref()
                        .parse::<image_builder::Size>()
                        .map_err(|e| self.invalid("image.size", v.span(), format!("{e:#}")))
                })
                .transpose()?,
            secure_boot: raw.secure_boot,
            os: raw
                .os
                .as_ref()
                .map(|o| self.checked("image.os", o, |s| check::segment(s, "stateroot name")))
                .transpose()?,
        })
    }

    /// The base, a Debian one with its extra repositories.
    fn base(&self, raw: Spanned<RawBase>, installs: Installs) -> Result<Base, ManifestError> {
        let span = raw.span();
        let b = raw.into_inner();
        let kinds = [
            ("distro", &b.distro),
            ("tarball", &b.tarball),
            ("directory", &b.directory),
            ("image", &b.image),
        ];
        let given: Vec<(&str, &Str)> = kinds
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
            .collect();
        let exactly_one = || ManifestErrorKind::ExactlyOne {
            keys: kinds.iter().map(|(k, _)| format!("base.{k}")).collect(),
        };
        let (kind, value) = match given.as_slice() {
            [one] => *one,
            [] => return Err(self.err("base", span, exactly_one())),
            [_, (k, v), ..] => return Err(self.err(format!("base.{k}"), v.span(), exactly_one())),
        };
        if kind != "distro" {
            let first = |l: &Option<Vec<Str>>| {
                l.as_ref()
                    .map(|l| l.first().map_or(span.clone(), Spanned::span))
            };
            let distro_only = [
                ("base.suite", b.suite.as_ref().map(Spanned::span)),
                ("base.mirror", b.mirror.as_ref().map(Spanned::span)),
                ("base.components", first(&b.components)),
                ("base.init", b.init.as_ref().map(Spanned::span)),
                (
                    "base.repositories",
                    b.repositories
                        .as_ref()
                        .map(|r| r.first().map_or(span.clone(), Spanned::span)),
                ),
                ("packages", installs.packages_at.clone()),
                (
                    "kernel.package",
                    installs.kernel.as_ref().map(|(_, at)| at.clone()),
                ),
            ];
            if let Some((key, Some(at))) = distro_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.invalid(
                    key,
                    at,
                    format!("only a distro base has {key} (a {kind} brings its own system): remove it, or base.{kind}"),
                ));
            }
        }
        let mut repositories = Vec::new();
        let base = match kind {
            "tarball" => {
                let path = self.existing("base.tarball", value, Want::File)?;
                Base::Tarball(Tarball { path })
            }
            "directory" => Base::Directory(Directory {
                path: self.existing("base.directory", value, Want::Dir)?,
            }),
            "image" => {
                let image = Image::parse(value.get_ref())
                    .map_err(|m| self.invalid("base.image", value.span(), m))?;
                Base::Image(image.relative_to(&self.dir))
            }
            _ => {
                if value.get_ref() != "debian" {
                    return Err(self.invalid(
                        "base.distro",
                        value.span(),
                        format!("distro {:?} is not supported: use \"debian\", or a base.tarball, base.directory or base.image", value.get_ref()),
                    ));
                }
                let defaults = Debian::default();
                let suite = match &b.suite {
                    Some(s) => {
                        self.checked("base.suite", s, |s| check::archive_word(s, "suite"))?
                    }
                    None => defaults.suite,
                };
                let mirror = b
                    .mirror
                    .as_ref()
                    .map(|m| {
                        self.checked("base.mirror", m, |u| {
                            check::url(u, &["http://", "https://", "file:/"])
                        })
                    })
                    .transpose()?;
                let init = b
                    .init
                    .as_ref()
                    .map(|i| {
                        Init::parse(i.get_ref()).map_err(|m| self.invalid("base.init", i.span(), m))
                    })
                    .transpose()?
                    .unwrap_or_default();
                let components = match &b.components {
                    Some(c) if c.is_empty() => {
                        return Err(self.invalid(
                            "base.components",
                            span,
                            "the list is empty: name at least one component, e.g. \"main\"".into(),
                        ))
                    }
                    Some(_) => self.list("base.components", &b.components, |s| {
                        check::archive_word(s, "component")
                    })?,
                    None => defaults.components,
                };
                for (i, r) in b.repositories.unwrap_or_default().into_iter().enumerate() {
                    let r = r.into_inner();
                    let key = format!("base.repositories[{i}]");
                    let sources = sources(r.sources.get_ref())
                        .map_err(|m| self.invalid(format!("{key}.sources"), r.sources.span(), m))?;
                    let keyring =
                        self.existing(format!("{key}.keyring"), &r.keyring, Want::File)?;
                    let bytes = std::fs::read(&keyring).map_err(|e| {
                        self.err(
                            format!("{key}.keyring"),
                            r.keyring.span(),
                            ManifestErrorKind::MissingFile {
                                path: keyring.clone(),
                                reason: format!("cannot be read: {e}"),
                            },
                        )
                    })?;
                    // apt tells an armored keyring from a binary one by its name alone.
                    let armored = bytes.starts_with(b"-----BEGIN PGP");
                    let named_asc = keyring.extension().is_some_and(|e| e == "asc");
                    if armored != named_asc {
                        return Err(self.err(
                            format!("{key}.keyring"),
                            r.keyring.span(),
                            ManifestErrorKind::MissingFile {
                                path: keyring.clone(),
                                reason: if armored {
                                    "is an armored key: name it *.asc (apt reads other names as binary keyrings)".into()
                                } else {
                                    "is not an armored key: give the armored key (-----BEGIN PGP …), or a binary keyring not named *.asc".into()
                                },
                            },
                        ));
                    }
                    repositories.push(AptRepository { sources, keyring });
                }
                Base::Debian(Debian {
                    suite,
                    mirror,
                    components,
                    kernel: installs.kernel.map_or(defaults.kernel, |(k, _)| k),
                    init,
                    packages: installs.packages,
                    repositories,
                })
            }
        };
        // The base's own checks (a tarball must be a tar archive), before any download.
        base.source()
            .check()
            .map_err(|e| self.invalid(format!("base.{kind}"), value.span(), format!("{e:#}")))?;
        Ok(base)
    }

    fn ostree_ref(
        &self,
        template: Option<&Str>,
        raw_name: &Str,
        name: &str,
        base: &Base,
        base_span: Range<usize>,
    ) -> Result<String, ManifestError> {
        let span = template.map_or(base_span, Spanned::span);
        let rendered = check::render(
            template.map_or(DEFAULT_REF, |t| t.get_ref()),
            &["name", "suite", "arch"],
            |p| match p {
                "name" => Ok(name.to_string()),
                "arch" => Ok(ARCH.to_string()),
                _ => suite(base).map(str::to_string).ok_or_else(|| {
                    let which = if template.is_some() { "the ref" } else { "the default ref {name}/{suite}/{arch}" };
                    format!("{which} uses {{suite}}, which a tarball, directory or image base has not: set ref without it, e.g. ref = \"{{name}}/{{arch}}\"")
                }),
            },
        )
        .map_err(|m| self.invalid("ref", span.clone(), m))?;
        check::ostree_ref(&rendered).map_err(|m| {
            let span = if template.is_some() {
                span
            } else {
                raw_name.span()
            };
            self.invalid("ref", span, m)
        })?;
        Ok(rendered)
    }

    /// The version template, checked, and SOURCE_DATE_EPOCH if the template uses it.
    fn version(
        &self,
        v: &Str,
        epoch: Option<&str>,
    ) -> Result<(Option<String>, Option<i64>), ManifestError> {
        let mut uses_date = false;
        let sample = check::render(v.get_ref(), &["date"], |_| {
            uses_date = true;
            Ok(check::utc_date(0))
        })
        .map_err(|m| self.invalid("version", v.span(), m))?;
        check::one_line(&sample, "version").map_err(|m| self.invalid("version", v.span(), m))?;
        let epoch = match epoch {
            Some(e) if uses_date => Some(e.trim().parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
                self.invalid(
                    "version",
                    v.span(),
                    format!("{{date}} comes from SOURCE_DATE_EPOCH, and {e:?} is not a number of seconds since 1970: fix or unset it"),
                )
            })?),
            _ => None,
        };
        Ok((Some(v.get_ref().clone()), epoch))
    }

    fn files(&self, raw: Vec<Spanned<RawFile>>) -> Result<Vec<ImageFile>, ManifestError> {
        let mut files: Vec<ImageFile> = Vec::new();
        for (i, f) in raw.into_iter().enumerate() {
            let span = f.span();
            let f = f.into_inner();
            let key = |k: &str| format!("files[{i}].{k}");
            let path = self.checked(key("path"), &f.path, |p| {
                let rest = p.strip_prefix('/').unwrap_or_default();
                if rest.is_empty() || rest.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
                    Err(format!("{p:?} is not a file path in the image: write it absolute, like \"/etc/motd\", without '.', '..' or '//'"))
                } else {
                    Ok(())
                }
            })?;
            if let Some(j) = files.iter().position(|o| o.path == Path::new(&path)) {
                return Err(self.invalid(
                    key("path"),
                    f.path.span(),
                    format!("{path:?} is already written by files[{j}]: keep one"),
                ));
            }
            let content = match (&f.content, &f.source) {
                (Some(c), None) => FileContent::Inline(c.get_ref().clone()),
                (None, Some(s)) => {
                    FileContent::Source(self.existing(key("source"), s, Want::File)?)
                }
                (both, s) => {
                    // Both set: point at the second; neither: at the table.
                    let (k, at) = match s {
                        Some(s) if both.is_some() => (key("source"), s.span()),
                        _ => (format!("files[{i}]"), span),
                    };
                    let keys = vec![key("content"), key("source")];
                    return Err(self.err(k, at, ManifestErrorKind::ExactlyOne { keys }));
                }
            };
            let mode = match &f.mode {
                None => DEFAULT_MODE,
                Some(m) => self.mode(&key("mode"), m)?,
            };
            let owner = match &f.owner {
                None => Owner::root(),
                Some(o) => {
                    let (user, group) = match o.get_ref().split_once(':') {
                        Some((u, g)) => (u, Some(g)),
                        None => (o.get_ref().as_str(), None),
                    };
                    for part in std::iter::once(user).chain(group) {
                        check::owner_part(part).map_err(|m| {
                            self.invalid(
                                key("owner"),
                                o.span(),
                                format!("{m}; write \"user:group\" or \"user\""),
                            )
                        })?;
                    }
                    Owner {
                        user: user.to_string(),
                        group: group.map(str::to_string),
                    }
                }
            };
            files.push(ImageFile {
                path: PathBuf::from(path),
                content,
                mode,
                owner,
            });
        }
        Ok(files)
    }

    fn mode(&self, key: &str, m: &Spanned<RawMode>) -> Result<u32, ManifestError> {
        let bad = |msg: String| self.invalid(key, m.span(), msg);
        match m.get_ref() {
            RawMode::Text(s) => {
                let ok = (1..=4).contains(&s.len()) && s.chars().all(|c| ('0'..='7').contains(&c));
                if !ok {
                    return Err(bad(format!(
                        "{s:?} is not an octal mode: write up to four octal digits, like \"0644\""
                    )));
                }
                u32::from_str_radix(s, 8).map_err(|e| bad(e.to_string()))
            }
            RawMode::Number(n) => {
                let written = self.text.get(m.span()).unwrap_or_default().trim();
                if !written.starts_with("0o") {
                    return Err(bad(format!("{written} is a decimal integer: write the mode in octal, as \"0644\" or 0o644")));
                }
                u32::try_from(*n)
                    .ok()
                    .filter(|n| *n <= 0o7777)
                    .ok_or_else(|| {
                        bad(format!(
                            "{written} is not a file mode: the largest is 0o7777"
                        ))
                    })
            }
        }
    }

    fn users(&self, raw: Vec<Spanned<RawUser>>) -> Result<Vec<User>, ManifestError> {
        let mut users: Vec<User> = Vec::new();
        for (i, u) in raw.into_iter().enumerate() {
            let u = u.into_inner();
            let key = |k: &str| format!("users[{i}].{k}");
            let name = self.checked(key("name"), &u.name, check::user_name)?;
            if let Some(j) = users.iter().position(|o| o.name == name) {
                return Err(self.invalid(
                    key("name"),
                    u.name.span(),
                    format!("{name:?} is already users[{j}]: keep one"),
                ));
            }
            let uid = match &u.uid {
                None => None,
                Some(id) => {
                    let n = *id.get_ref();
                    if !check::UIDS.contains(&n) {
                        return Err(self.invalid(
                            key("uid"),
                            id.span(),
                            format!(
                                "{n} is outside {}..={}: give a uid in that range or none",
                                check::UIDS.start(),
                                check::UIDS.end()
                            ),
                        ));
                    }
                    let n = u32::try_from(n).unwrap_or_default();
                    if let Some(j) = users.iter().position(|o| o.uid == Some(n)) {
                        return Err(self.invalid(
                            key("uid"),
                            id.span(),
                            format!("uid {n} is already users[{j}]'s: give another"),
                        ));
                    }
                    Some(n)
                }
            };
            let password_hash = u
                .password_hash
                .as_ref()
                .map(|h| {
                    self.checked(key("password_hash"), h, |s| {
                        check::one_line(s, "password hash")?;
                        if s.contains(':') {
                            return Err(
                                "a crypt(3) hash has no ':': paste the hash mkpasswd printed"
                                    .into(),
                            );
                        }
                        Ok(())
                    })
                })
                .transpose()?;
            let shell = match &u.shell {
                None => DEFAULT_SHELL.into(),
                Some(s) => self.checked(key("shell"), s, |s| {
                    check::one_line(s, "shell")?;
                    if s.starts_with('/') {
                        Ok(())
                    } else {
                        Err(format!(
                            "{s:?} is not an absolute path: write it like \"/bin/bash\""
                        ))
                    }
                })?,
            };
            users.push(User {
                groups: self.list(&key("groups"), &u.groups, check::user_name)?,
                ssh_authorized_keys: self.list(
                    &key("ssh_authorized_keys"),
                    &u.ssh_authorized_keys,
                    |s| check::one_line(s, "key"),
                )?,
                name,
                uid,
                password_hash,
                shell,
            });
        }
        Ok(users)
    }
}

/// Classify an APT source entry: one `deb`/`deb-src` line, or a deb822 stanza.
fn sources(text: &str) -> Result<AptSources, String> {
    let trimmed = text.trim();
    // The repository's `keyring` is what signs it: a second, different answer would be
    // confusing at best.
    if trimmed.to_ascii_lowercase().contains("signed-by") {
        return Err(
            "leave signed-by out: the `keyring` key says which key signs the repository".into(),
        );
    }
    let first = trimmed.split_whitespace().next().unwrap_or_default();
    if (first == "deb" || first == "deb-src")
        && !trimmed.contains('\n')
        && trimmed.split_whitespace().count() >= 3
    {
        return Ok(AptSources::OneLine(trimmed.to_string()));
    }
    let has = |field: &str| {
        trimmed.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(f, v)| f.trim().eq_ignore_ascii_case(field) && !v.trim().is_empty())
        })
    };
    if trimmed.lines().any(|l| l.trim().is_empty()) {
        return Err("one deb822 stanza per [[base.repositories]]: remove the blank line, or add another [[base.repositories]] for the next stanza".into());
    }
    if has("Types") && has("URIs") && has("Suites") {
        return Ok(AptSources::Deb822(format!("{trimmed}\n")));
    }
    Err("write one line \"deb URI SUITE [COMPONENT...]\", or a deb822 stanza with Types:, URIs: and Suites:".into())
}

/// The Debian suite of a distro base.
fn suite(base: &Base) -> Option<&str> {
    match base {
        Base::Debian(d) => Some(&d.suite),
        Base::Tarball(_) | Base::Directory(_) | Base::Image(_) => None,
    }
}

/// What a distro base installs, with where the manifest says so, for the error when the
/// base is not a distro.
struct Installs {
    packages: Vec<String>,
    packages_at: Option<Range<usize>>,
    kernel: Option<(String, Range<usize>)>,
}

/// The key path (`users[1].name`) of what `span` points at in `text`: the key or value
/// it falls in, else the innermost table containing it.
fn key_path_at(text: &str, span: &Range<usize>) -> String {
    use toml::de::{DeTable, DeValue};
    fn contains(r: &Range<usize>, pos: usize, exact: bool) -> bool {
        if exact {
            r.start <= pos && pos < r.end.max(r.start + 1)
        } else {
            r.start <= pos && pos <= r.end
        }
    }
    fn in_table(t: &DeTable<'_>, pos: usize, exact: bool, path: &mut String) -> bool {
        for (k, v) in t.iter() {
            let mark = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(k.get_ref());
            if contains(&k.span(), pos, true) || in_value(v, pos, exact, path) {
                return true;
            }
            path.truncate(mark);
        }
        false
    }
    fn in_value(v: &Spanned<DeValue<'_>>, pos: usize, exact: bool, path: &mut String) -> bool {
        match v.get_ref() {
            DeValue::Table(t) => {
                in_table(t, pos, exact, path) || (!exact && contains(&v.span(), pos, false))
            }
            DeValue::Array(a) => {
                for (i, item) in a.iter().enumerate() {
                    let mark = path.len();
                    let _ = write!(path, "[{i}]");
                    if in_value(item, pos, exact, path) {
                        return true;
                    }
                    path.truncate(mark);
                }
                // An inline array of values; an array of tables is found by its tables.
                let of_tables = a.iter().any(|i| matches!(i.get_ref(), DeValue::Table(_)));
                exact && !of_tables && contains(&v.span(), pos, true)
            }
            _ => contains(&v.span(), pos, true),
        }
    }
    let Ok(doc) = DeTable::parse(text) else {
        return String::new();
    };
    if *span == doc.span() || span.start >= text.len() {
        // The document itself, e.g. a missing top-level key.
        return String::new();
    }
    let mut path = String::new();
    if !in_table(doc.get_ref(), span.start, true, &mut path) {
        path.clear();
        in_table(doc.get_ref(), span.start, false, &mut path);
    }
    path
}
