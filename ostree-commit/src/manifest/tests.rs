use super::docs::{reference, BEGIN, END};
use super::raw::SECTIONS;
use super::*;
use crate::{Debian, Directory, Tarball};
use std::collections::BTreeSet;
use std::fs;
use tempfile::TempDir;

const MINIMAL: &str = "name = \"edge\"\n[base]\ndistro = \"debian\"\n";

fn docs_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/manifest.md")
}

/// The ```toml blocks of docs/manifest.md: the full example first.
fn doc_examples() -> Vec<String> {
    let text = fs::read_to_string(docs_path()).unwrap();
    text.split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// A directory holding every file the examples and tests refer to.
fn fixture() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in [
        "overlay/etc",
        "files",
        "scripts",
        "keyrings",
        "keys",
        "keys/gnupg",
        "rootfs",
    ] {
        fs::create_dir_all(d.join(sub)).unwrap();
    }
    fs::write(d.join("overlay/etc/issue"), "edge\n").unwrap();
    fs::write(d.join("files/hello.sh"), "#!/bin/sh\necho hello\n").unwrap();
    fs::write(
        d.join("scripts/cleanup.sh"),
        "#!/bin/sh\nrm -rf /var/cache/apt\n",
    )
    .unwrap();
    fs::write(
        d.join("keyrings/vendor.asc"),
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n",
    )
    .unwrap();
    fs::write(d.join("keys/deploy_ed25519"), "key").unwrap();
    fs::write(d.join("keys/updates.gpg"), "key").unwrap();
    fs::write(d.join("keys/known_hosts"), "").unwrap();
    // The zstd magic is what the tarball base checks at load.
    fs::write(d.join("rootfs.tar.zst"), b"\x28\xb5\x2f\xfdnot really zstd").unwrap();
    dir
}

fn load(dir: &TempDir, text: &str) -> Result<Manifest, ManifestError> {
    parse(text, &dir.path().join("osbuild.toml"), None)
}

/// The error `text` gives, checked to be at `key`, `line`:`column`.
#[track_caller]
fn error_at(dir: &TempDir, text: &str, key: &str, line: usize, column: usize) -> ManifestErrorKind {
    let e = load(dir, text).expect_err("the manifest should be refused");
    assert_eq!(
        (e.key.as_str(), e.line, e.column),
        (key, line, column),
        "for error {e}"
    );
    assert_eq!(e.path, dir.path().join("osbuild.toml"));
    let shown = e.to_string();
    assert!(!shown.contains('\n'), "{shown}");
    e.kind
}

#[test]
fn docs_reference_matches_the_structs() {
    let path = docs_path();
    let text = fs::read_to_string(&path).unwrap();
    let (before, rest) = text
        .split_once(BEGIN)
        .expect("docs/manifest.md lost its BEGIN marker");
    let (committed, after) = rest
        .split_once(END)
        .expect("docs/manifest.md lost its END marker");
    let fresh = reference();
    if committed != fresh {
        if std::env::var("OSBUILD_UPDATE_DOCS").as_deref() == Ok("1") {
            fs::write(&path, format!("{before}{BEGIN}{fresh}{END}{after}")).unwrap();
            return;
        }
        panic!(
            "docs/manifest.md's reference does not match ostree-commit/src/manifest/raw.rs: \
             rerun with OSBUILD_UPDATE_DOCS=1, or paste between the markers:\n{fresh}"
        );
    }
}

#[test]
fn docs_list_each_keys_flag() {
    let text = fs::read_to_string(docs_path()).unwrap();
    let flags = key_flags();
    assert!(!flags.is_empty());
    for flag in &flags {
        // The key's row, under its table's heading, names the flag.
        let (table, key) = match flag.key.rsplit_once('.') {
            Some((table, key)) => (format!("### `[{table}]`"), key),
            None => ("### Top level".to_string(), flag.key.as_str()),
        };
        let section = text
            .split_once(&table)
            .map(|(_, s)| s.split("\n### ").next().unwrap_or_default())
            .unwrap_or_else(|| panic!("docs/manifest.md has no {table}"));
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("no row for {} under {table}", flag.key));
        let usage = match flag.action {
            FlagAction::Switch => format!("`--{}`", flag.name),
            _ => format!("`--{} {}`", flag.name, flag.value_name),
        };
        assert!(row.contains(&usage), "{}: {row}", flag.key);
    }
    // Flags on keys the CLI cannot apply would be dead: each has a test in src/cli.
    let tree: Vec<&str> = flags
        .iter()
        .filter(|f| f.scope == FlagScope::Tree)
        .map(|f| f.key.as_str())
        .collect();
    assert_eq!(
        tree,
        [
            "hostname",
            "packages",
            "overlays",
            "base.suite",
            "base.mirror",
            "base.init",
            "base.image",
            "kernel.package"
        ]
    );
}

#[test]
fn overrides_apply_to_a_manifests_tree() {
    let dir = fixture();
    let m = load(
        &dir,
        &format!("hostname = \"a\"\npackages = [\"curl\"]\n{MINIMAL}"),
    )
    .unwrap();
    let mut spec = crate::Bootstrap::from_manifest(&m).unwrap();
    let mut overrides = Overrides::default();
    for flag in key_flags() {
        let values = match flag.key.as_str() {
            "hostname" => vec!["b".to_string()],
            "packages" => vec!["jq".into(), "curl".into()],
            "base.suite" => vec!["bookworm".into(), "trixie".into()],
            _ => vec![],
        };
        overrides.insert(flag, values);
    }
    assert_eq!(overrides.value("base.suite"), Some("trixie"));
    overrides.apply(&mut spec).unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("b"));
    let Base::Debian(d) = &spec.base else {
        panic!()
    };
    assert_eq!(
        (d.suite.as_str(), d.packages.as_slice()),
        (
            "trixie",
            &["curl".to_string(), "jq".into(), "curl".into()][..]
        )
    );
}

/// Every key path a TOML document sets, array indices dropped: `base.repositories.sources`.
fn keys_set(text: &str) -> BTreeSet<String> {
    use toml::de::{DeTable, DeValue};
    fn table(t: &DeTable<'_>, prefix: &str, out: &mut BTreeSet<String>) {
        for (k, v) in t.iter() {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            out.insert(path.clone());
            match v.get_ref() {
                DeValue::Table(t) => table(t, &path, out),
                DeValue::Array(a) => {
                    for item in a.iter() {
                        if let DeValue::Table(t) = item.get_ref() {
                            table(t, &path, out);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = BTreeSet::new();
    table(DeTable::parse(text).unwrap().get_ref(), "", &mut out);
    out
}

#[test]
fn docs_example_sets_every_key_and_loads() {
    let examples = doc_examples();
    let full = &examples[0];
    let documented: BTreeSet<String> = SECTIONS
        .iter()
        .flat_map(|s| {
            let table = s.table.trim_matches(['[', ']']).to_string();
            s.keys.iter().map(move |k| {
                let k = k.name.trim_start_matches("r#");
                if table == "top level" {
                    k.to_string()
                } else {
                    format!("{table}.{k}")
                }
            })
        })
        .collect();
    let set = keys_set(full);
    let missing: Vec<_> = documented
        .difference(&set)
        .filter(|k| !["base.tarball", "base.directory", "base.image"].contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the example in docs/manifest.md lacks {missing:?}"
    );

    let dir = fixture();
    let m = load(&dir, full).unwrap();
    let d = dir.path();
    assert_eq!(m.path(), d.join("osbuild.toml"));
    assert_eq!(m.name(), "edge");
    assert_eq!(m.hostname(), Some("edge-01"));
    assert_eq!(m.ostree_ref(), "edge/bookworm/x86_64");
    let Base::Debian(debian) = m.base() else {
        panic!("{:?}", m.base())
    };
    assert_eq!(
        debian,
        &Debian {
            suite: "bookworm".into(),
            mirror: Some("http://deb.debian.org/debian".into()),
            components: vec!["main".into(), "contrib".into()],
            kernel: "linux-image-cloud-amd64".into(),
            init: crate::Init::Systemd,
            packages: vec!["openssh-server".into(), "curl".into(), "vim-tiny".into()],
            repositories: vec![AptRepository {
                sources: AptSources::OneLine(
                    "deb https://apt.example.com/debian bookworm main".into()
                ),
                keyring: d.join("keyrings/vendor.asc"),
            }],
        }
    );
    assert_eq!(
        m.repositories(),
        [AptRepository {
            sources: AptSources::OneLine("deb https://apt.example.com/debian bookworm main".into()),
            keyring: d.join("keyrings/vendor.asc"),
        }]
    );
    assert_eq!(m.overlays(), [d.join("overlay")]);
    assert_eq!(
        m.files(),
        [
            ImageFile {
                path: "/etc/motd".into(),
                content: FileContent::Inline("Welcome to edge.\n".into()),
                mode: 0o644,
                owner: Owner {
                    user: "root".into(),
                    group: Some("root".into())
                },
            },
            ImageFile {
                path: "/usr/local/bin/hello".into(),
                content: FileContent::Source(d.join("files/hello.sh")),
                mode: 0o755,
                owner: Owner {
                    user: "root".into(),
                    group: None
                },
            },
        ]
    );
    let [admin] = m.users() else {
        panic!("{:?}", m.users())
    };
    assert_eq!(admin.name, "admin");
    assert_eq!(admin.uid, Some(1000));
    assert_eq!(admin.groups, ["sudo"]);
    assert!(admin.password_hash.as_deref().unwrap().starts_with("$y$"));
    assert_eq!(admin.ssh_authorized_keys.len(), 1);
    assert_eq!(admin.shell, "/bin/bash");
    assert_eq!(admin.home(), Path::new("/var/home/admin"));
    assert_eq!(
        m.services().enable,
        ["ssh.service", "systemd-timesyncd.service"]
    );
    assert_eq!(
        m.services().disable,
        ["apt-daily.timer", "apt-daily-upgrade.timer"]
    );
    assert_eq!(m.kernel_args(), ["console=ttyS0,115200", "quiet"]);
    assert_eq!(m.scripts().post, [d.join("scripts/cleanup.sh")]);
    assert_eq!(
        m.remote(),
        Some(&Remote {
            name: "origin".into(),
            url: "https://updates.example.com/repo".into(),
            gpg_key: Some(d.join("keys/updates.gpg")),
        })
    );
    assert_eq!(
        m.sign(),
        Some(&Sign {
            key_ids: vec!["0123456789ABCDEF0123456789ABCDEF01234567".into()],
            homedir: Some(d.join("keys/gnupg")),
        })
    );
    let push = m.push().unwrap();
    assert_eq!(push.destination.user.as_deref(), Some("deploy"));
    assert_eq!(push.destination.port(), 2222);
    assert_eq!(push.destination.path, "/srv/ostree/repo");
    assert_eq!(
        push.identity.as_deref(),
        Some(d.join("keys/deploy_ed25519").as_path())
    );
    assert_eq!(
        push.known_hosts.as_deref(),
        Some(d.join("keys/known_hosts").as_path())
    );
    let at = UNIX_EPOCH + std::time::Duration::from_secs(1_796_157_900);
    assert_eq!(m.render_version(at).as_deref(), Some("20261201.2045"));

    // The third: trixie with backports, signed by Debian's keyring where Debian installs
    // it (an absolute path stays as written).
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    if keyring.is_file() {
        let m = load(&dir, &examples[3]).unwrap();
        assert_eq!(
            m.repositories(),
            [AptRepository {
                sources: AptSources::OneLine(
                    "deb http://deb.debian.org/debian trixie-backports main".into()
                ),
                keyring: keyring.to_path_buf(),
            }]
        );
    }

    // The second example: a tarball base.
    let m = load(&dir, &examples[1]).unwrap();
    assert_eq!(
        m.base(),
        &Base::Tarball(Tarball {
            path: d.join("rootfs.tar.zst")
        })
    );
    assert_eq!(m.ostree_ref(), "appliance/x86_64");

    // The third: a container image, taken by skopeo (checked for when loading).
    let m = load(&dir, &examples[2]).unwrap();
    let Base::Image(image) = m.base() else {
        panic!("{:?}", m.base())
    };
    assert_eq!(
        image.reference,
        "containers-storage:localhost/appliance:latest"
    );
    assert_eq!(m.hostname(), None);
}

#[test]
fn defaults() {
    let dir = fixture();
    let m = load(&dir, MINIMAL).unwrap();
    assert_eq!(m.ostree_ref(), "edge/bookworm/x86_64");
    assert_eq!(
        m.base(),
        &Base::Debian(Debian {
            mirror: None,
            ..Debian::default()
        })
    );
    let Base::Debian(d) = m.base() else { panic!() };
    assert_eq!(
        (d.suite.as_str(), d.kernel.as_str()),
        ("bookworm", "linux-image-cloud-amd64")
    );
    assert_eq!(d.components, ["main"]);
    assert!(d.packages.is_empty() && m.repositories().is_empty());
    assert_eq!(m.hostname(), None);
    assert_eq!(m.render_version(SystemTime::now()), None);
    assert!(m.overlays().is_empty() && m.files().is_empty());
    assert!(m.users().is_empty());
    assert_eq!(m.services(), &Services::default());
    assert!(m.kernel_args().is_empty());
    assert_eq!(m.scripts(), &Scripts::default());
    assert_eq!((m.remote(), m.push()), (None, None));

    let text = format!("{MINIMAL}suite = \"trixie\"\n[remote]\nurl = \"https://u.example/repo\"\n[[files]]\npath = \"/etc/a\"\ncontent = \"\"\n[[users]]\nname = \"bob\"\n");
    let m = load(&dir, &text).unwrap();
    assert_eq!(m.ostree_ref(), "edge/trixie/x86_64");
    assert!(matches!(m.base(), Base::Debian(d) if d.suite == "trixie"));
    assert_eq!(m.remote().unwrap().name, "origin");
    assert_eq!(m.files()[0].mode, 0o644);
    assert_eq!(
        m.files()[0].owner,
        Owner {
            user: "root".into(),
            group: Some("root".into())
        }
    );
    assert_eq!(
        m.users(),
        [User {
            name: "bob".into(),
            uid: None,
            groups: vec![],
            password_hash: None,
            ssh_authorized_keys: vec![],
            shell: "/bin/bash".into(),
        }]
    );
    assert_eq!(Manifest::default_path(), Path::new("osbuild.toml"));
}

#[test]
fn version_from_source_date_epoch() {
    let dir = fixture();
    let text = format!("version = \"1.{{date}}\"\n{MINIMAL}");
    let path = dir.path().join("osbuild.toml");
    let now = UNIX_EPOCH + std::time::Duration::from_secs(1_796_157_900);
    let m = parse(&text, &path, Some("1709251199")).unwrap();
    assert_eq!(m.render_version(now).as_deref(), Some("1.20240229.2359"));
    let m = parse(&text, &path, None).unwrap();
    assert_eq!(m.render_version(now).as_deref(), Some("1.20261201.2045"));
    // A version without {date} does not care about SOURCE_DATE_EPOCH.
    let m = parse(
        &format!("version = \"2.0\"\n{MINIMAL}"),
        &path,
        Some("garbage"),
    )
    .unwrap();
    assert_eq!(m.render_version(now).as_deref(), Some("2.0"));
    let e = parse(&text, &path, Some("yesterday")).unwrap_err();
    assert_eq!((e.key.as_str(), e.line, e.column), ("version", 1, 11));
    assert!(matches!(e.kind, ManifestErrorKind::Invalid(_)));
}

#[test]
fn load_reads_the_file_and_resolves_paths_beside_it() {
    let dir = fixture();
    let path = dir.path().join("osbuild.toml");
    fs::write(&path, format!("overlays = [\"overlay\"]\n{MINIMAL}")).unwrap();
    let m = Manifest::load(&path).unwrap();
    assert_eq!(m.overlays(), [dir.path().join("overlay")]);

    let missing = dir.path().join("absent.toml");
    let e = Manifest::load(&missing).unwrap_err();
    assert!(matches!(e.kind, ManifestErrorKind::Read(_)), "{e}");
    assert_eq!(
        (e.path.as_path(), e.key.as_str(), e.line, e.column),
        (missing.as_path(), "", 0, 0)
    );
}

#[test]
fn toml_errors_name_key_line_and_column() {
    let dir = fixture();
    let kind = error_at(&dir, "name = \"edge\"\nname = \"x\"\n", "", 2, 1);
    assert!(matches!(kind, ManifestErrorKind::Syntax(_)), "{kind:?}");
    let kind = error_at(
        &dir,
        "name = \"edge\"\n[base\ndistro = \"debian\"\n",
        "",
        2,
        6,
    );
    assert!(matches!(kind, ManifestErrorKind::Syntax(_)), "{kind:?}");

    let kind = error_at(&dir, &format!("nmae = 1\n{MINIMAL}"), "nmae", 1, 1);
    assert!(matches!(kind, ManifestErrorKind::UnknownKey(_)), "{kind:?}");
    let text =
        format!("{MINIMAL}[[users]]\nname = \"a\"\n[[users]]\nname = \"b\"\nshel = \"/bin/sh\"\n");
    let kind = error_at(&dir, &text, "users[1].shel", 8, 1);
    assert!(matches!(kind, ManifestErrorKind::UnknownKey(_)), "{kind:?}");
    let kind = error_at(
        &dir,
        &format!("{MINIMAL}flavour = \"x\"\n"),
        "base.flavour",
        4,
        1,
    );
    assert!(matches!(kind, ManifestErrorKind::UnknownKey(_)), "{kind:?}");

    let kind = error_at(
        &dir,
        &format!("packages = \"vim\"\n{MINIMAL}"),
        "packages",
        1,
        12,
    );
    assert!(matches!(kind, ManifestErrorKind::WrongType(_)), "{kind:?}");
    let text = format!("{MINIMAL}[[users]]\nname = \"a\"\nuid = \"1000\"\n");
    let kind = error_at(&dir, &text, "users[0].uid", 6, 7);
    assert!(matches!(kind, ManifestErrorKind::WrongType(_)), "{kind:?}");
    let text = format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nmode = true\n");
    let kind = error_at(&dir, &text, "files[0].mode", 7, 8);
    assert!(matches!(kind, ManifestErrorKind::WrongType(_)), "{kind:?}");

    let text = format!("{MINIMAL}[[users]]\nuid = 1000\n");
    let kind = error_at(&dir, &text, "users[0].name", 4, 1);
    assert!(matches!(kind, ManifestErrorKind::MissingKey), "{kind:?}");
    let kind = error_at(&dir, "[base]\ndistro = \"debian\"\n", "name", 1, 1);
    assert!(matches!(kind, ManifestErrorKind::MissingKey), "{kind:?}");
    let kind = error_at(&dir, "name = \"edge\"\n", "base", 1, 1);
    assert!(matches!(kind, ManifestErrorKind::MissingKey), "{kind:?}");
}

#[test]
fn missing_files_name_key_line_and_column() {
    let dir = fixture();
    let cases = [
        (format!("overlays = [\"overlay\", \"nope\"]\n{MINIMAL}"), "overlays[1]", 1, 24, "nope"),
        (format!("overlays = [\"files/hello.sh\"]\n{MINIMAL}"), "overlays[0]", 1, 13, "files/hello.sh"),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\nsource = \"files/absent\"\n"), "files[0].source", 6, 10, "files/absent"),
        (format!("{MINIMAL}[scripts]\npost = [\"scripts/cleanup.sh\", \"scripts\"]\n"), "scripts.post[1]", 5, 31, "scripts"),
        (format!("{MINIMAL}[[base.repositories]]\nsources = \"deb http://x bookworm main\"\nkeyring = \"k.gpg\"\n"), "base.repositories[0].keyring", 6, 11, "k.gpg"),
        ("name = \"a\"\nref = \"{name}\"\n[base]\ntarball = \"absent.tar\"\n".to_string(), "base.tarball", 4, 11, "absent.tar"),
        ("name = \"a\"\nref = \"{name}\"\n[base]\ndirectory = \"rootfs.tar.zst\"\n".to_string(), "base.directory", 4, 13, "rootfs.tar.zst"),
        (format!("{MINIMAL}[push]\ndestination = \"h:/r\"\nidentity = \"keys/absent\"\n"), "push.identity", 6, 12, "keys/absent"),
        (format!("{MINIMAL}[push]\ndestination = \"h:/r\"\nknown_hosts = \"keys\"\n"), "push.known_hosts", 6, 15, "keys"),
    ];
    for (text, key, line, column, file) in cases {
        match error_at(&dir, &text, key, line, column) {
            ManifestErrorKind::MissingFile { path, .. } => assert_eq!(path, dir.path().join(file)),
            other => panic!("{key}: {other:?}"),
        }
    }
    // apt reads a keyring as armored by its name alone: the name must match the content.
    fs::write(
        dir.path().join("keyrings/armored.gpg"),
        "-----BEGIN PGP PUBLIC KEY BLOCK-----\n",
    )
    .unwrap();
    fs::write(dir.path().join("keyrings/binary.asc"), b"\x99\x01\x0d").unwrap();
    for (file, says) in [
        ("armored.gpg", "name it *.asc"),
        ("binary.asc", "not an armored key"),
    ] {
        let text = format!("{MINIMAL}[[base.repositories]]\nsources = \"deb http://x bookworm main\"\nkeyring = \"keyrings/{file}\"\n");
        match error_at(&dir, &text, "base.repositories[0].keyring", 6, 11) {
            ManifestErrorKind::MissingFile { path, reason } => {
                assert_eq!(path, dir.path().join("keyrings").join(file));
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("{file}: {other:?}"),
        }
    }
}

#[test]
fn invalid_values_name_key_line_and_column() {
    let dir = fixture();
    let users = "[[users]]\nname = \"alice\"\n[[users]]\nname = \"Bob\"\n";
    let cases = [
        (format!("{MINIMAL}{users}"), "users[1].name", 7, 8),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\nuid = 999\n"), "users[0].uid", 6, 7),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\nuid = 60000\n"), "users[0].uid", 6, 7),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\nuid = 1000\n[[users]]\nname = \"b\"\nuid = 1000\n"), "users[1].uid", 9, 7),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\n[[users]]\nname = \"a\"\n"), "users[1].name", 7, 8),
        (format!("{MINIMAL}[[users]]\nname = \"{}\"\n", "a".repeat(33)), "users[0].name", 5, 8),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\ngroups = [\"sudo\", \"Wheel\"]\n"), "users[0].groups[1]", 6, 19),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\nshell = \"bash\"\n"), "users[0].shell", 6, 9),
        (format!("{MINIMAL}[[users]]\nname = \"a\"\npassword_hash = \"a:b\"\n"), "users[0].password_hash", 6, 17),
        (format!("{MINIMAL}[services]\nenable = [\"ssh.service\", \"ssh\"]\n"), "services.enable[1]", 5, 26),
        (format!("{MINIMAL}[image]\nbootloader = \"lilo\"\n"), "image.bootloader", 5, 14),
        (format!("{MINIMAL}[image]\nsize = \"big\"\n"), "image.size", 5, 8),
        (format!("{MINIMAL}[image]\nos = \"a/b\"\n"), "image.os", 5, 6),
        (format!("{MINIMAL}[services]\nenable = [\"ssh.service\"]\ndisable = [\"cron.service\", \"ssh.service\"]\n"), "services.disable[1]", 6, 28),
        ("name = \"edge\"\nref = \"{name}/../x\"\n[base]\ndistro = \"debian\"\n".to_string(), "ref", 2, 7),
        ("name = \"edge\"\nref = \"{name}/{os}\"\n[base]\ndistro = \"debian\"\n".to_string(), "ref", 2, 7),
        ("name = \"edge\"\n[base]\ntarball = \"rootfs.tar.zst\"\n".to_string(), "ref", 2, 1),
        ("name = \"edge\"\nref = \"{name}/{suite}\"\n[base]\ndirectory = \"rootfs\"\n".to_string(), "ref", 2, 7),
        ("name = \"edge\"\nref = \"{name}\"\n[base]\ntarball = \"files/hello.sh\"\n".to_string(), "base.tarball", 4, 11),
        ("name = \"edge\"\nref = \"{name}\"\n[base]\ndirectory = \"rootfs\"\nsuite = \"trixie\"\n".to_string(), "base.suite", 5, 9),
        ("name = \"edge\"\nref = \"{name}\"\npackages = [\"vim\"]\n[base]\ntarball = \"rootfs.tar.zst\"\n".to_string(), "packages", 3, 13),
        ("name = \"edge\"\nref = \"{name}\"\n[base]\ndirectory = \"rootfs\"\n[kernel]\npackage = \"linux-image-amd64\"\n".to_string(), "kernel.package", 6, 11),
        ("name = \"edge/x\"\n[base]\ndistro = \"debian\"\n".to_string(), "name", 1, 8),
        (format!("hostname = \"edge_01\"\n{MINIMAL}"), "hostname", 1, 12),
        (format!("version = \"{{date}}-{{time}}\"\n{MINIMAL}"), "version", 1, 11),
        (format!("packages = [\"vim\", \"Emacs\"]\n{MINIMAL}"), "packages[1]", 1, 20),
        (format!("{MINIMAL}suite = \"Trixie\"\n"), "base.suite", 4, 9),
        (format!("{MINIMAL}init = \"runit\"\n"), "base.init", 4, 8),
        ("name = \"edge\"\nref = \"{name}\"\n[base]\ndirectory = \"rootfs\"\ninit = \"openrc\"\n".to_string(), "base.init", 5, 8),
        (format!("{MINIMAL}mirror = \"deb.debian.org\"\n"), "base.mirror", 4, 10),
        (format!("{MINIMAL}components = []\n"), "base.components", 2, 1),
        ("name = \"edge\"\n[base]\ndistro = \"ubuntu\"\n".to_string(), "base.distro", 3, 10),
        (format!("{MINIMAL}[[base.repositories]]\nsources = \"http://x bookworm\"\nkeyring = \"keyrings/vendor.asc\"\n"), "base.repositories[0].sources", 5, 11),
        (format!("{MINIMAL}[[base.repositories]]\nsources = \"deb [signed-by=/k.gpg] http://x bookworm main\"\nkeyring = \"keyrings/vendor.asc\"\n"), "base.repositories[0].sources", 5, 11),
        (format!("{MINIMAL}[[base.repositories]]\nsources = \"Types: deb\\nURIs: http://x\\nSuites: a\\n\\nTypes: deb\\nURIs: http://y\\nSuites: b\"\nkeyring = \"keyrings/vendor.asc\"\n"), "base.repositories[0].sources", 5, 11),
        (format!("{MINIMAL}[[files]]\npath = \"etc/motd\"\ncontent = \"\"\n"), "files[0].path", 5, 8),
        (format!("{MINIMAL}[[files]]\npath = \"/etc/../motd\"\ncontent = \"\"\n"), "files[0].path", 5, 8),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nmode = 644\n"), "files[0].mode", 7, 8),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nmode = \"0964\"\n"), "files[0].mode", 7, 8),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nmode = 0o17777\n"), "files[0].mode", 7, 8),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nowner = \"root:Adm\"\n"), "files[0].owner", 7, 9),
        (format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\n[[files]]\npath = \"/a\"\ncontent = \"\"\n"), "files[1].path", 8, 8),
        (format!("{MINIMAL}[kernel]\npackage = \"Linux\"\n"), "kernel.package", 5, 11),
        (format!("{MINIMAL}[kernel]\nargs = [\"quiet splash\"]\n"), "kernel.args[0]", 5, 9),
        (format!("{MINIMAL}[remote]\nurl = \"ftp://x/repo\"\n"), "remote.url", 5, 7),
        (format!("{MINIMAL}[remote]\nurl = \"https://x/repo\"\nname = \"a/b\"\n"), "remote.name", 6, 8),
        (format!("{MINIMAL}[push]\ndestination = \"ftp://host/repo\"\n"), "push.destination", 5, 15),
    ];
    for (text, key, line, column) in cases {
        match error_at(&dir, &text, key, line, column) {
            ManifestErrorKind::Invalid(_) => {}
            other => panic!("{key}: {other:?}"),
        }
    }
}

#[test]
fn exactly_one_names_the_keys() {
    let dir = fixture();
    let base_keys = [
        "base.distro",
        "base.tarball",
        "base.directory",
        "base.image",
    ];
    let both = "name = \"a\"\n[base]\ndistro = \"debian\"\ntarball = \"rootfs.tar.zst\"\n";
    let ManifestErrorKind::ExactlyOne { keys } = error_at(&dir, both, "base.tarball", 4, 11) else {
        panic!()
    };
    assert_eq!(keys, base_keys);
    let ManifestErrorKind::ExactlyOne { keys } = error_at(
        &dir,
        "name = \"a\"\n[base]\nsuite = \"trixie\"\n",
        "base",
        2,
        1,
    ) else {
        panic!()
    };
    assert_eq!(keys, base_keys);

    let file_keys = ["files[0].content", "files[0].source"];
    let both =
        format!("{MINIMAL}[[files]]\npath = \"/a\"\ncontent = \"\"\nsource = \"files/hello.sh\"\n");
    let ManifestErrorKind::ExactlyOne { keys } = error_at(&dir, &both, "files[0].source", 7, 10)
    else {
        panic!()
    };
    assert_eq!(keys, file_keys);
    let neither = format!("{MINIMAL}[[files]]\npath = \"/a\"\n");
    let ManifestErrorKind::ExactlyOne { keys } = error_at(&dir, &neither, "files[0]", 4, 1) else {
        panic!()
    };
    assert_eq!(keys, file_keys);
}

#[test]
fn deb822_sources_and_owners() {
    let dir = fixture();
    let text = format!(
        "{MINIMAL}[[base.repositories]]\nsources = \"\"\"\nTypes: deb\nURIs: https://apt.example.com/debian\nSuites: trixie\nComponents: main\n\"\"\"\nkeyring = \"keyrings/vendor.asc\"\n[[files]]\npath = \"/a\"\ncontent = \"\"\nowner = \"1000\"\n"
    );
    let m = load(&dir, &text).unwrap();
    assert!(
        matches!(&m.repositories()[0].sources, AptSources::Deb822(s) if s.starts_with("Types: deb\n"))
    );
    assert_eq!(
        m.files()[0].owner,
        Owner {
            user: "1000".into(),
            group: None
        }
    );
}

const DIRECTORY: &str = "name = \"a\"\nref = \"{name}\"\n[base]\ndirectory = \"rootfs\"\n";

#[test]
fn directory_base() {
    let dir = fixture();
    let path = dir.path().join("rootfs");
    assert_eq!(
        load(&dir, DIRECTORY).unwrap().base(),
        &Base::Directory(Directory { path })
    );
}

#[test]
fn display_is_one_line_with_file_line_column_and_key() {
    let dir = fixture();
    let e = load(&dir, &format!("{MINIMAL}[[users]]\nname = \"Bob\"\n")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:5:8: users[0].name: \"Bob\" is not a valid name: use up to 32 lowercase letters, \
             digits, '_' and '-', starting with a letter or '_' (a final '$' is allowed)",
            dir.path().join("osbuild.toml").display()
        )
    );
    let e = load(&dir, &format!("packages = \"vim\"\n{MINIMAL}")).unwrap_err();
    assert!(
        e.to_string().ends_with(
            ":1:12: packages: invalid type: string \"vim\", expected a list: fix the value"
        ),
        "{e}"
    );
    let missing = dir.path().join("absent.toml");
    let e = Manifest::load(&missing).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "{}: cannot read the manifest: ",
            missing.display()
        )),
        "{e}"
    );
}

#[test]
fn documented_defaults_are_the_ones_applied() {
    let default = |table: &str, key: &str| {
        let section = SECTIONS.iter().find(|s| s.table == table).unwrap();
        section
            .keys
            .iter()
            .find(|k| k.name.trim_start_matches("r#") == key)
            .unwrap()
            .default
    };
    let quoted = |v: &str| format!("`{v:?}`");
    assert_eq!(default("top level", "ref"), quoted(DEFAULT_REF));
    let debian = Debian::default();
    assert_eq!(default("[base]", "suite"), quoted(&debian.suite));
    assert_eq!(debian.mirror, None);
    assert!(default("[base]", "mirror").starts_with("mmdebstrap's"));
    assert_eq!(
        default("[base]", "components"),
        format!("`{:?}`", debian.components)
    );
    assert_eq!(default("[kernel]", "package"), quoted(&debian.kernel));
    assert_eq!(default("[[users]]", "shell"), quoted(DEFAULT_SHELL));
    assert_eq!(default("[remote]", "name"), quoted(DEFAULT_REMOTE));
    assert_eq!(
        default("[[files]]", "mode"),
        quoted(&format!("{DEFAULT_MODE:04o}"))
    );
    // And the code applies them.
    let dir = fixture();
    let m = load(&dir, MINIMAL).unwrap();
    assert_eq!(m.base(), &Base::Debian(debian));
    for section in SECTIONS {
        assert!(
            !section.doc.is_empty(),
            "{} has no doc comment",
            section.table
        );
        for key in section.keys {
            assert!(
                !key.doc.is_empty(),
                "{} {} has no doc comment",
                section.table,
                key.name
            );
        }
    }
}

#[test]
fn scripts_need_an_interpreter_line() {
    let dir = fixture();
    fs::write(dir.path().join("scripts/plain.sh"), "rm -rf /tmp/x\n").unwrap();
    let text =
        format!("{MINIMAL}[scripts]\npost = [\"scripts/cleanup.sh\", \"scripts/plain.sh\"]\n");
    match error_at(&dir, &text, "scripts.post[1]", 5, 31) {
        ManifestErrorKind::Invalid(m) => assert!(m.contains("#!"), "{m}"),
        other => panic!("{other:?}"),
    }
}
