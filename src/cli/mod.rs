//! The `osbuild` command line: the clap definitions of every verb and their dispatch.
//!
//! The binary only parses ([`Cli::from_args`]), runs ([`run`]) and prints the error; exit
//! statuses that carry meaning (a receive's, a push's) come back from [`run`] as values.

mod publish;
mod push;
mod receive;
mod serve;
mod shell;
mod vm;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use ostree_commit::Manifest;

use push::{CommitPushArgs, PushArgs};
use receive::ReceiveArgs;
use serve::ServeArgs;
pub use shell::shell_files;
use shell::{CompletionsArgs, ManArgs};

/// Build, ship and upgrade immutable OSTree-based Debian systems.
#[derive(Debug, Parser)]
// The version names the commit it was built from (build.rs).
#[command(name = "osbuild", version = env!("OSBUILD_VERSION"))]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Bootstrap a minimal bootable Debian tree, converted to the OSTree layout.
    Bootstrap(BootstrapArgs),
    /// Commit an OSTree-ready tree into an archive repository (created if missing).
    Commit(CommitArgs),
    /// Serve an archive repository over HTTP at http://ADDR:PORT/repo/.
    Serve(ServeArgs),
    /// Pull a commit and deploy it into a bootable disk image.
    MakeImage(MakeImageArgs),
    /// Receive a push (the ostree-receive protocol) on a server that runs OpenSSH: use it
    /// as the ForceCommand, or install it as `ostree-receive-1` and `ostree-receive`.
    Receive(ReceiveArgs),
    /// Inspect, upgrade and roll back the deployments of an OSTree system (also on the
    /// device, where every tree osbuild builds has these verbs).
    Admin(osbuild_admin::cli::AdminArgs),
    /// Push refs to a repository on a server over SSH (the ostree-push protocol); exits
    /// with the receiver's status.
    Push(PushArgs),
    /// Commit a tree, then push the new commit's ref over SSH.
    ///
    /// The commit goes into --repo (./repo unless given), and is pushed to DESTINATION, or
    /// to --server HOST: ssh://USER@HOST:PORT/PATH made of --user (the local user unless
    /// given), --ssh-port (22) and --path (/srv/ostree/repo). Without either, nothing is
    /// committed.
    CommitPush(CommitPushArgs),
    /// Sign an existing commit (and then the summary) with GPG; signatures it already has
    /// are kept.
    Sign(SignArgs),
    /// Delete old commits: keep the last N of each branch and the static deltas between
    /// them, and the objects they need; `ostree fsck` passes afterwards.
    Prune(PruneArgs),
    /// Publish an archive repository to S3-compatible object storage (immutable objects
    /// first, the summary last), for devices that pull from the bucket's website endpoint.
    Publish(publish::PublishArgs),
    /// Boot an image in qemu (TCG): `osbuild vm run IMAGE`.
    Vm(vm::VmArgs),
    /// Print the completion script for a shell, e.g. `osbuild completions bash >
    /// /usr/local/share/bash-completion/completions/osbuild`.
    Completions(CompletionsArgs),
    /// Write the man pages of osbuild and of each verb (osbuild.1, osbuild-commit.1, …).
    Man(ManArgs),
}

impl Cli {
    /// Parse a command line, `argv[0]` first. Run as `ostree-receive-1` or
    /// `ostree-receive` (a link to the binary), the words are the receive protocol's
    /// arguments, as `osbuild receive` takes them.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let program = args.first().map(|a| a.to_string_lossy().into_owned());
        if program
            .as_deref()
            .is_some_and(ostree_serve::receive::is_receiver)
        {
            args.splice(0..1, receive::argv0_form());
        }
        Self::try_parse_from(args)
    }

    /// The verb given.
    #[cfg(test)]
    pub(crate) fn verb(&self) -> &Command {
        &self.command
    }
}

/// Print a command-line error as clap does and give its exit status (2 for a usage
/// error, as the receive protocol wants too; 0 for --help and --version).
pub fn usage_error(e: &clap::Error) -> ExitCode {
    // Printing to a closed stderr is not worth another error.
    let _ = e.print();
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}

/// Which manifest describes the OS.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ManifestArg {
    /// The OS's manifest (see docs/manifest.md) [default: ./osbuild.toml when it exists].
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
}

impl ManifestArg {
    /// The manifest named, or ./osbuild.toml when there is one; checked before anything
    /// is downloaded or written.
    pub(crate) fn load(&self) -> Result<Option<Manifest>> {
        let path = match &self.manifest {
            Some(path) => path.clone(),
            None => {
                let default = Manifest::default_path();
                if !default.is_file() {
                    return Ok(None);
                }
                default
            }
        };
        Ok(Some(Manifest::load(&path)?))
    }
}

/// Bootstrap a tree.
#[derive(Debug, clap::Args)]
pub(crate) struct BootstrapArgs {
    /// Directory to create; must not exist.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    tree: TreeArgs,
}

/// The flags that override manifest keys, built from the manifest's own table
/// ([`ostree_commit::key_flags`]): those of one [`ostree_commit::FlagScope`], numbered
/// as [`KeyFlags::SCOPES`] lists them.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyFlags<const SCOPE: usize>(ostree_commit::Overrides);

/// `--suite`, `--package`, `--hostname`, …: for every verb that builds a tree.
pub(crate) type TreeKeyFlags = KeyFlags<0>;
/// `--branch`, `--version`: for every verb that commits.
pub(crate) type CommitKeyFlags = KeyFlags<1>;
/// `--bootloader`, `--size`, `--remote-url`, …: for make-image.
pub(crate) type ImageKeyFlags = KeyFlags<2>;

impl<const SCOPE: usize> KeyFlags<SCOPE> {
    const SCOPES: [ostree_commit::FlagScope; 3] = [
        ostree_commit::FlagScope::Tree,
        ostree_commit::FlagScope::Commit,
        ostree_commit::FlagScope::Image,
    ];

    fn flags() -> impl Iterator<Item = ostree_commit::KeyFlag> {
        ostree_commit::key_flags()
            .into_iter()
            .filter(|f| f.scope == Self::SCOPES[SCOPE])
    }
}

impl<const SCOPE: usize> clap::FromArgMatches for KeyFlags<SCOPE> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut overrides = ostree_commit::Overrides::default();
        for flag in Self::flags() {
            let values = if flag.action == ostree_commit::FlagAction::Switch {
                if matches.get_flag(flag.name) {
                    vec!["true".to_string()]
                } else {
                    Vec::new()
                }
            } else {
                matches
                    .get_many::<String>(flag.name)
                    .map(|v| v.cloned().collect())
                    .unwrap_or_default()
            };
            overrides.insert(flag, values);
        }
        Ok(KeyFlags(overrides))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<const SCOPE: usize> clap::Args for KeyFlags<SCOPE> {
    fn augment_args(mut cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        for flag in Self::flags() {
            let arg = Arg::new(flag.name).long(flag.name).help(flag.help);
            cmd = cmd.arg(match flag.action {
                ostree_commit::FlagAction::Switch => arg.action(ArgAction::SetTrue),
                ostree_commit::FlagAction::Set => {
                    arg.value_name(flag.value_name).action(ArgAction::Set)
                }
                ostree_commit::FlagAction::Add => {
                    arg.value_name(flag.value_name).action(ArgAction::Append)
                }
                ostree_commit::FlagAction::AddList => arg
                    .value_name(flag.value_name)
                    .action(ArgAction::Append)
                    .value_delimiter(','),
            });
        }
        cmd
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// The flags that describe a tree without a manifest, or override the manifest's keys.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TreeArgs {
    #[command(flatten)]
    keys: TreeKeyFlags,
    // Boxed: every verb's arguments live in one enum, which clippy wants of even sizes.
    #[command(flatten)]
    cache: Box<CacheArgs>,
}

/// Where downloaded packages and bootstrapped bases are kept between builds.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct CacheArgs {
    /// Keep downloaded packages and the bootstrapped base here, and reuse them: a rebuild
    /// that changes only overlays, files, users, services, the host name or kernel
    /// arguments skips mmdebstrap [default: $XDG_CACHE_HOME/osbuild, else
    /// ~/.cache/osbuild].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Neither read nor write the cache: download every package and build the base.
    #[arg(long, conflicts_with_all = ["cache_dir", "rebuild_base"])]
    no_cache: bool,
    /// Build the base again even when it is cached, and cache the new one (to pick up
    /// packages updated in the archive, or to check that a build is reproducible); the
    /// downloaded packages are still reused.
    #[arg(long)]
    rebuild_base: bool,
}

impl CacheArgs {
    /// The cache to use, if any.
    fn cache(&self) -> Option<ostree_commit::Cache> {
        if self.no_cache {
            return None;
        }
        let dir = match (&self.cache_dir, ostree_commit::Cache::default_dir()) {
            (Some(dir), _) => dir.clone(),
            (None, Ok(dir)) => dir,
            (None, Err(e)) => {
                // A build without a home still works, only slower.
                eprintln!("Not caching: {e:#}");
                return None;
            }
        };
        let cache = ostree_commit::Cache::new(dir);
        Some(if self.rebuild_base {
            cache.rebuild_base()
        } else {
            cache
        })
    }
}

impl TreeArgs {
    /// What to bootstrap: the manifest's OS with these flags laid over it, or a Debian tree
    /// made from the flags alone.
    fn bootstrap(&self, manifest: Option<&Manifest>) -> Result<ostree_commit::Bootstrap> {
        let mut spec = match manifest {
            Some(m) => ostree_commit::Bootstrap::from_manifest(m)?,
            None => ostree_commit::Bootstrap::default(),
        };
        self.keys.0.apply(&mut spec)?;
        // Every tree gets osbuild's completions and man pages, for when osbuild runs there.
        for (path, content) in shell_files()? {
            spec.files.push(ostree_commit::ImageFile {
                path: PathBuf::from("/").join(path),
                content: ostree_commit::FileContent::Inline(
                    String::from_utf8(content).context("a generated completion is not UTF-8")?,
                ),
                mode: 0o644,
                owner: ostree_commit::Owner::root(),
            });
        }
        spec.files.extend(device_files()?);
        let openrc = matches!(&spec.base, ostree_commit::Base::Debian(d) if d.init == ostree_commit::Init::OpenRc);
        if openrc {
            // The unit files stay (inert); OpenRC runs the same jobs from its services.
            for service in osbuild_admin::device::openrc_services() {
                spec.files.push(ostree_commit::ImageFile {
                    path: PathBuf::from("/etc/init.d").join(service.name),
                    content: ostree_commit::FileContent::Inline(service.script),
                    mode: 0o755,
                    owner: ostree_commit::Owner::root(),
                });
                spec.services
                    .openrc
                    .push((service.name.to_string(), service.runlevel.to_string()));
            }
        } else {
            spec.services.enable.extend(
                osbuild_admin::device::ENABLED_UNITS
                    .iter()
                    .map(|u| u.to_string()),
            );
        }
        spec.cache = self.cache.cache();
        Ok(spec)
    }
}

/// What every tree carries so the device keeps its boot menu right after deploys
/// (osbuild_admin::device); the menu generator is the binary built beside this one.
fn device_files() -> Result<Vec<ostree_commit::ImageFile>> {
    let exe = std::env::current_exe().context("finding the osbuild binary")?;
    let mut dir = exe
        .parent()
        .context("the osbuild binary has a directory")?
        .to_path_buf();
    // cargo's unit-test binaries run from target/<profile>/deps, one below the binaries.
    if dir.ends_with("deps") && !dir.join(osbuild_admin::device::BINARIES[0].0).is_file() {
        if let Some(profile) = dir.parent() {
            dir = profile.to_path_buf();
        }
    }
    for (name, _) in osbuild_admin::device::BINARIES {
        let bin = dir.join(name);
        anyhow::ensure!(
            bin.is_file(),
            "{} is missing: it is built with osbuild (cargo build --workspace) and goes into every tree",
            bin.display()
        );
    }
    Ok(osbuild_admin::device::files(&dir)
        .into_iter()
        .map(|f| ostree_commit::ImageFile {
            path: PathBuf::from(f.path),
            content: match f.content {
                osbuild_admin::device::DeviceContent::Text(t) => {
                    ostree_commit::FileContent::Inline(t)
                }
                osbuild_admin::device::DeviceContent::Copy(p) => {
                    ostree_commit::FileContent::Source(p)
                }
            },
            mode: f.mode,
            owner: ostree_commit::Owner::root(),
        })
        .collect())
}

/// Commit a tree.
#[derive(Debug, clap::Args)]
pub(crate) struct CommitArgs {
    /// Archive repository; created if it does not exist.
    #[arg(long, default_value = "repo")]
    repo: PathBuf,
    /// The OSTree-ready tree to commit [default: bootstrap the manifest's OS first].
    #[arg(long)]
    tree: Option<PathBuf>,
    /// The commit's subject line.
    #[arg(long)]
    subject: Option<String>,
    /// The commit's timestamp, seconds since 1970 [default: $SOURCE_DATE_EPOCH, else now].
    #[arg(long, value_name = "SECONDS")]
    timestamp: Option<u64>,
    /// Commit even when the tree is the branch head's (otherwise nothing is committed and
    /// `unchanged: CHECKSUM` is printed).
    #[arg(long)]
    allow_unchanged: bool,
    /// Also make a static delta from this commit to the new one (repeatable); one from
    /// the branch's previous head is always made.
    #[arg(long, value_name = "REV")]
    delta_from: Vec<String>,
    /// Then prune the branch: keep its last N commits and the deltas between them (see
    /// `osbuild prune`).
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Write progress as JSON Lines to this open file descriptor (docs/progress.schema.json):
    /// Start, ProgressBytes at most 5 times a second, End.
    #[arg(long, value_name = "FD")]
    progress_fd: Option<i32>,
    #[command(flatten)]
    keys: CommitKeyFlags,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    tree_flags: TreeArgs,
}

impl CommitArgs {
    /// Commit (bootstrapping first when there is a manifest and no --tree), print the
    /// checksum, and return the branch committed to.
    fn run(&self, manifest: Option<&Manifest>) -> Result<String> {
        // Refused before anything is written.
        anyhow::ensure!(
            self.keep != Some(0),
            "--keep 0 would delete every commit, the branch heads too: keep at least 1"
        );
        let branch = match (self.keys.0.value("ref"), manifest) {
            (Some(branch), _) => branch.to_string(),
            (None, Some(m)) => m.ostree_ref().to_string(),
            (None, None) => anyhow::bail!(
                "commit needs --branch REF, or a manifest with a `ref` (--manifest FILE, or ./osbuild.toml)"
            ),
        };
        let version = self
            .keys
            .0
            .value("version")
            .map(str::to_string)
            .or_else(|| manifest.and_then(|m| m.render_version(std::time::SystemTime::now())));
        let mut opts = ostree_commit::CommitOptions {
            branch: branch.clone(),
            subject: self.subject.clone(),
            version,
            timestamp: self.timestamp,
            manifest_digest: manifest.map(Manifest::digest).transpose()?,
            allow_unchanged: self.allow_unchanged,
            sign: self.keys.0.sign(manifest.and_then(Manifest::sign))?,
            delta_from: self.delta_from.clone(),
            progress_fd: self.progress_fd,
            ..Default::default()
        };
        let from_image = self.tree_flags.keys.0.value("base.image").is_some();
        anyhow::ensure!(
            !(from_image && self.tree.is_some()),
            "--tree and --image both name what to commit: give one of them"
        );
        let commit = match (&self.tree, manifest) {
            (Some(tree), _) => ostree_commit::commit(&self.repo, tree, &opts)?,
            (None, _) if manifest.is_some() || from_image => {
                let spec = self.tree_flags.bootstrap(manifest)?;
                // An image names its exact content by digest: the same image and the same
                // customisation make the same tree, known before anything is fetched.
                if let ostree_commit::Base::Image(image) = &spec.base {
                    let digest = image.digest()?;
                    opts.inputs_digest = spec.inputs_digest(&digest);
                    if let (Some(inputs), false) = (&opts.inputs_digest, opts.allow_unchanged) {
                        let head = ostree_commit::unchanged_inputs(&self.repo, &branch, inputs)?;
                        if let Some(head) = head {
                            eprintln!("{} is {digest}, as {branch}'s head was made from", image.reference);
                            println!("unchanged: {head}");
                            return Ok(branch);
                        }
                    }
                }
                // The tree is built beside the repository and removed once committed.
                let parent = match self.repo.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let work = tempfile::Builder::new()
                    .prefix(".osbuild-tree-")
                    .tempdir_in(&parent)
                    .with_context(|| format!("creating a work directory in {}", parent.display()))?;
                let tree = work.path().join("tree");
                let built = ostree_commit::bootstrap(&spec, &tree)?;
                if let Some(image) = built.image {
                    // The digest of what was fetched, should the tag have moved meanwhile.
                    if opts.inputs_digest.is_some() {
                        opts.inputs_digest = spec.inputs_digest(&image.digest);
                    }
                    opts.image = Some(image);
                }
                ostree_commit::commit(&self.repo, &tree, &opts)?
            }
            _ => anyhow::bail!(
                "commit needs --tree DIR, --image TRANSPORT:REF, or a manifest to build the tree from (--manifest FILE, or ./osbuild.toml)"
            ),
        };
        for line in commit.delta_report() {
            eprintln!("{line}");
        }
        if let Some(keep) = self.keep {
            let pruned = ostree_commit::prune(&self.repo, keep, Some(&branch), opts.sign.as_ref())?;
            eprintln!("{pruned}");
        }
        if commit.unchanged {
            println!("unchanged: {}", commit.checksum);
        } else {
            println!("{}", commit.checksum);
        }
        Ok(branch)
    }
}

/// The GPG keys of verbs that rewrite a repository's signed summary (sign, prune).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SigningArgs {
    /// A GPG key to sign with (repeatable) [default: the manifest's `[sign] gpg_key`].
    #[arg(long = "gpg-sign", value_name = "KEYID")]
    keys: Vec<String>,
    /// The GPG home with the secret keys [default: the manifest's, else GPG's].
    #[arg(long, value_name = "DIR")]
    gpg_homedir: Option<PathBuf>,
    #[command(flatten)]
    manifest: ManifestArg,
}

impl SigningArgs {
    /// The keys given, else the manifest's; None when there are none.
    fn sign(&self) -> Result<Option<ostree_commit::Sign>> {
        let manifest = self.manifest.load()?;
        let from_manifest = manifest.as_ref().and_then(Manifest::sign);
        let key_ids = if self.keys.is_empty() {
            from_manifest.map(|s| s.key_ids.clone()).unwrap_or_default()
        } else {
            self.keys.clone()
        };
        if key_ids.is_empty() {
            anyhow::ensure!(
                self.gpg_homedir.is_none(),
                "--gpg-homedir without a key to sign with: add --gpg-sign KEYID"
            );
            return Ok(None);
        }
        Ok(Some(ostree_commit::Sign {
            key_ids,
            homedir: self
                .gpg_homedir
                .clone()
                .or_else(|| from_manifest.and_then(|s| s.homedir.clone())),
        }))
    }
}

/// Sign a commit.
#[derive(Debug, clap::Args)]
pub(crate) struct SignArgs {
    /// Archive repository.
    #[arg(long, default_value = "repo")]
    repo: PathBuf,
    /// The commit: a ref or a checksum.
    rev: String,
    #[command(flatten)]
    signing: SigningArgs,
}

impl SignArgs {
    fn run(&self) -> Result<()> {
        let sign = self
            .signing
            .sign()?
            .context("sign needs a key: --gpg-sign KEYID, or a manifest with [sign] gpg_key")?;
        let checksum = ostree_commit::sign(&self.repo, &self.rev, &sign)?;
        println!("{checksum}");
        Ok(())
    }
}

/// Prune a repository.
#[derive(Debug, clap::Args)]
pub(crate) struct PruneArgs {
    /// Archive repository.
    #[arg(long, default_value = "repo")]
    repo: PathBuf,
    /// Keep this many commits of each branch (the head counts), and the deltas between
    /// them.
    #[arg(long, value_name = "N")]
    keep: usize,
    /// Prune only this branch's history.
    #[arg(long = "ref", value_name = "REF")]
    only: Option<String>,
    /// The summary is rewritten: sign it with these keys (as the repository's commits
    /// were signed), or it stays unsigned.
    #[command(flatten)]
    signing: SigningArgs,
}

impl PruneArgs {
    fn run(&self) -> Result<()> {
        let sign = self.signing.sign()?;
        let p = ostree_commit::prune(&self.repo, self.keep, self.only.as_deref(), sign.as_ref())?;
        eprintln!("{p}");
        Ok(())
    }
}

/// Make a disk image.
#[derive(Debug, clap::Args)]
pub(crate) struct MakeImageArgs {
    /// Repository URL the builder pulls from, e.g. http://127.0.0.1:8080/repo/.
    #[arg(long, required_unless_present = "repo", conflicts_with = "repo")]
    url: Option<String>,
    /// A local repository directory the builder pulls from, instead of --url (give
    /// --remote-url for the device's upgrades).
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
    /// The ref to deploy [default: the only ref the server lists].
    #[arg(long)]
    branch: Option<String>,
    /// The disk image to write.
    #[arg(long)]
    output: PathBuf,
    /// Compress a qcow2 image.
    #[arg(long)]
    compress: bool,
    /// The image's and the device remote's settings, from the manifest's `[image]` and
    /// `[remote]` tables' keys: `--format`, `--bootloader`, `--firmware`, `--secure-boot`,
    /// `--partition-table`, `--size`, `--os`, `--remote-url`, `--remote-name`,
    /// `--gpg-key`.
    #[command(flatten)]
    keys: ImageKeyFlags,
    /// Extra kernel argument (repeatable; after the manifest's `[kernel] args`).
    #[arg(long = "karg")]
    kargs: Vec<String>,
    /// Provision this device: its host name (in the deployment's /etc, which upgrades keep).
    #[arg(long)]
    hostname: Option<String>,
    /// Provision this device: root's password hash (e.g. from `openssl passwd -6`).
    #[arg(long, value_name = "HASH")]
    root_password_hash: Option<String>,
    /// Provision this device: a user with a home in /var/home (in sudo when the OS has it).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Provision this device: SSH public keys for --user (root's without it); repeatable.
    #[arg(long = "ssh-authorized-key", value_name = "FILE")]
    ssh_authorized_keys: Vec<PathBuf>,
    /// Provision this device: cloud-init user-data, seeded for the NoCloud datasource.
    #[arg(long, value_name = "FILE")]
    cloud_init: Option<PathBuf>,
    /// Where the scratch sysroot is built (a pulled copy of the OS, removed at the end)
    /// [default: /dev/shm when it and the memory available have 4 GiB free, else beside
    /// --output].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    manifest: ManifestArg,
}

impl MakeImageArgs {
    fn run(self) -> Result<()> {
        let manifest = self.manifest.load()?;
        let remote = manifest.as_ref().and_then(|m| m.remote());
        let url = match (self.url, &self.repo) {
            (Some(url), _) => url,
            (None, Some(dir)) => {
                let dir = std::path::absolute(dir)
                    .with_context(|| format!("resolving --repo {}", dir.display()))?;
                anyhow::ensure!(
                    dir.join("config").is_file(),
                    "--repo {}: not an ostree repository (no config file in it)",
                    dir.display()
                );
                format!("file://{}", dir.display())
            }
            (None, None) => anyhow::bail!("give --url URL or --repo DIR"),
        };
        let mut spec = image_builder::ImageSpec::new(&url, self.branch.as_deref());
        // Flags first, then the manifest's [remote] and [image], then make-image's
        // defaults.
        let flags = self.keys.0.remote()?;
        spec.remote_url = flags.url.or_else(|| remote.map(|r| r.url.clone()));
        if spec.remote_url.is_none() && self.repo.is_some() {
            tracing::warn!(
                "the device's remote is {url}, a directory on this machine: give --remote-url for its upgrades"
            );
        }
        spec.gpg_key = flags
            .gpg_key
            .or_else(|| remote.and_then(|r| r.gpg_key.clone()));
        if let Some(name) = flags.name.or_else(|| remote.map(|r| r.name.clone())) {
            spec.remote_name = name;
        }
        let mut image = manifest
            .as_ref()
            .map(|m| m.image().clone())
            .unwrap_or_default();
        self.keys.0.apply_image(&mut image)?;
        if let Some(size) = image.size {
            spec.size = size;
        }
        if let Some(os) = image.os {
            spec.os = os;
        }
        if let Some(bootloader) = image.bootloader {
            spec.bootloader = bootloader;
        }
        if let Some(firmware) = image.firmware {
            spec.firmware = firmware;
        }
        spec.partition_table = image.partition_table;
        spec.secure_boot = image.secure_boot.unwrap_or(false);
        spec.format = image
            .format
            .unwrap_or_else(|| image_builder::Format::from_path(&self.output));
        spec.compress = self.compress;
        spec.work_dir = self.work_dir;
        spec.provision = image_builder::Provision {
            hostname: self.hostname,
            root_password_hash: self.root_password_hash,
            user: self.user,
            ssh_authorized_keys: self.ssh_authorized_keys,
            cloud_init: self.cloud_init,
        };
        spec.kargs = manifest
            .iter()
            .flat_map(|m| m.kernel_args().iter().cloned())
            .chain(self.kargs)
            .collect();
        let image = image_builder::make_image(&spec, &self.output)?;
        eprintln!(
            "Wrote {} ({}, {} bytes, {} allocated) with commit {}",
            self.output.display(),
            image.format,
            image.size,
            image.allocated,
            image.checksum
        );
        match &image.layout {
            Some(layout) => {
                eprintln!(
                    "Boot loader {}{} for {} firmware, {} partition table:",
                    image.bootloader,
                    if image.secure_boot {
                        " (Secure Boot: shim, signed GRUB)"
                    } else {
                        ""
                    },
                    image.firmware,
                    layout.table
                );
                eprint!("{layout}");
            }
            None => eprintln!(
                "Live ISO for {} firmware (isolinux for BIOS, GRUB for UEFI), volume label {}",
                image.firmware,
                image_builder::ISO_LABEL
            ),
        }
        eprintln!("Boot it with:\n  {}", image.qemu_command(&self.output));
        println!("{}", self.output.display());
        Ok(())
    }
}

/// Log to stderr, filtered by $OSBUILD_LOG (warnings by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OSBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Already set (a second run in one process) is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run a parsed command line. The exit code is success, or the status a receive or push
/// ended with; an error is for the caller to print.
pub fn run(cli: Cli) -> Result<ExitCode> {
    init_logging();
    tracing::debug!("started");
    match cli.command {
        Command::Bootstrap(a) => {
            let manifest = a.manifest.load()?;
            let spec = a.tree.bootstrap(manifest.as_ref())?;
            let built = ostree_commit::bootstrap(&spec, &a.output)?;
            eprintln!(
                "Bootstrapped {} (kernel {})",
                a.output.display(),
                built.info.kver
            );
        }
        Command::Commit(a) => {
            let manifest = a.manifest.load()?;
            a.run(manifest.as_ref())?;
        }
        Command::Serve(a) => return a.run(),
        Command::MakeImage(a) => a.run()?,
        Command::Receive(a) => return a.run(),
        Command::Admin(a) => a.run()?,
        Command::Sign(a) => a.run()?,
        Command::Prune(a) => a.run()?,
        Command::Publish(a) => a.run()?,
        Command::Push(a) => return a.run(),
        Command::CommitPush(a) => return a.run(),
        Command::Vm(a) => return a.run(),
        Command::Completions(a) => a.run()?,
        Command::Man(a) => a.run()?,
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    pub(super) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::from_args(args)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_names_the_commit() {
        let version = Cli::command().render_version();
        let inner = version
            .trim()
            .strip_prefix(concat!("osbuild ", env!("CARGO_PKG_VERSION"), " ("))
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{version}"));
        if inner != "unknown" {
            // `a1b2c3d 2026-12-01`: an abbreviated commit id and its date.
            let (id, date) = inner.split_once(' ').unwrap_or_else(|| panic!("{version}"));
            assert!(
                id.len() >= 7 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{version}"
            );
            assert!(
                date.len() == 10 && date.chars().filter(|&c| c == '-').count() == 2,
                "{version}"
            );
        }
    }

    #[test]
    fn bootstrap_and_commit_parse() {
        let cli = parse(&[
            "osbuild",
            "bootstrap",
            "--output",
            "t",
            "--package",
            "jq,vim",
        ])
        .unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        assert_eq!(a.tree.keys.0.values("packages"), ["jq", "vim"]);
        // Flags alone: a Debian bookworm tree with the extra packages.
        let spec = a.tree.bootstrap(None).unwrap();
        let ostree_commit::Base::Debian(debian) = &spec.base else {
            panic!("{spec:?}")
        };
        assert_eq!(
            (debian.suite.as_str(), debian.packages.as_slice()),
            ("bookworm", &["jq".to_string(), "vim".to_string()][..])
        );
        assert_eq!(spec.hostname.as_deref(), Some("osbuild"));
        let paths: Vec<_> = spec
            .files
            .iter()
            .map(|f| f.path.display().to_string())
            .collect();
        assert!(
            paths.contains(&"/usr/share/bash-completion/completions/osbuild".to_string()),
            "{paths:?}"
        );
        assert!(
            paths.contains(&"/usr/share/man/man1/osbuild-commit.1".to_string()),
            "{paths:?}"
        );
        let cli = parse(&[
            "osbuild",
            "bootstrap",
            "--output",
            "t",
            "--overlay",
            "x",
            "--overlay",
            "y",
        ])
        .unwrap();
        assert!(
            matches!(cli.verb(), Command::Bootstrap(a) if a.tree.keys.0.values("overlays") == ["x", "y"])
        );
        let cli = parse(&[
            "osbuild", "commit", "--repo", "r", "--branch", "b", "--tree", "t",
        ])
        .unwrap();
        assert!(matches!(cli.verb(), Command::Commit(a) if a.keys.0.value("ref") == Some("b")));
        // Branch and tree may come from a manifest: checked when it runs.
        let cli = parse(&["osbuild", "commit", "--manifest", "os.toml"]).unwrap();
        assert!(matches!(cli.verb(), Command::Commit(a) if a.tree.is_none()
            && a.manifest.manifest.as_deref() == Some(std::path::Path::new("os.toml"))));
    }

    #[test]
    fn flags_override_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("overlay")).unwrap();
        let path = dir.path().join("osbuild.toml");
        let text = "name = \"demo\"\nhostname = \"demo\"\noverlays = [\"overlay\"]\n\
                    packages = [\"curl\"]\n[base]\ndistro = \"debian\"\n";
        let manifest = Manifest::from_str_at(text, &path).unwrap();
        let cli = parse(&[
            "osbuild",
            "bootstrap",
            "--output",
            "t",
            "--suite",
            "trixie",
            "--package",
            "jq",
            "--hostname",
            "other",
            "--overlay",
            "more",
        ])
        .unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let spec = a.tree.bootstrap(Some(&manifest)).unwrap();
        let ostree_commit::Base::Debian(debian) = &spec.base else {
            panic!("{spec:?}")
        };
        assert_eq!(debian.suite, "trixie");
        assert_eq!(debian.packages, ["curl", "jq"]);
        assert_eq!(spec.hostname.as_deref(), Some("other"));
        assert_eq!(
            spec.overlays,
            [dir.path().join("overlay"), PathBuf::from("more")]
        );
        // Debian flags on a directory base are refused, naming them.
        let text = "name = \"demo\"\nref = \"demo/{arch}\"\n[base]\ndirectory = \"overlay\"\n";
        let manifest = Manifest::from_str_at(text, &path).unwrap();
        let err = a.tree.bootstrap(Some(&manifest)).unwrap_err().to_string();
        assert!(
            err.contains("--package, --suite only apply to a Debian base"),
            "{err}"
        );
        // Values are checked as the manifest's are, naming the flag.
        for (flag, value) in [
            ("--hostname", "a_b"),
            ("--suite", "Trixie"),
            ("--mirror", "deb.debian.org"),
            ("--kernel", "Linux"),
            ("--package", "jq,Emacs"),
            ("--init", "runit"),
        ] {
            let cli = parse(&["osbuild", "bootstrap", "--output", "t", flag, value]).unwrap();
            let Command::Bootstrap(a) = cli.verb() else {
                panic!("{cli:?}")
            };
            let err = a.tree.bootstrap(None).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{flag} ")), "{err}");
        }
    }

    #[test]
    fn an_openrc_tree_gets_the_openrc_services_instead_of_the_units() {
        let cli = parse(&["osbuild", "bootstrap", "--output", "t", "--init", "openrc"]).unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let spec = a.tree.bootstrap(None).unwrap();
        let ostree_commit::Base::Debian(debian) = &spec.base else {
            panic!("{spec:?}")
        };
        assert_eq!(debian.init, ostree_commit::Init::OpenRc);
        assert!(spec.services.enable.is_empty(), "{:?}", spec.services);
        assert!(spec
            .services
            .openrc
            .contains(&("ostree-finalize-staged".into(), "off".into())));
        for service in &spec.services.openrc {
            let path = PathBuf::from("/etc/init.d").join(&service.0);
            assert!(
                spec.files.iter().any(|f| f.path == path && f.mode == 0o755),
                "{path:?}"
            );
        }
        // And a systemd tree gets the units, no OpenRC service.
        let cli = parse(&["osbuild", "bootstrap", "--output", "t"]).unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let spec = a.tree.bootstrap(None).unwrap();
        assert!(spec.services.openrc.is_empty());
        assert!(spec
            .services
            .enable
            .contains(&"osbuild-health.service".to_string()));
    }

    #[test]
    fn image_replaces_the_base_and_refuses_debian_flags() {
        let cli = parse(&[
            "osbuild",
            "commit",
            "--image",
            "oci-archive:img.tar",
            "--branch",
            "a/b",
        ])
        .unwrap();
        let Command::Commit(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        // Flags alone: the image, a relative archive taken from the current directory,
        // and the host name every image base gets.
        let spec = a.tree_flags.bootstrap(None).unwrap();
        let ostree_commit::Base::Image(image) = &spec.base else {
            panic!("{spec:?}")
        };
        assert_eq!(image.reference, "oci-archive:./img.tar");
        assert_eq!(image.transport, ostree_commit::Transport::OciArchive);
        assert_eq!(spec.hostname.as_deref(), Some("localhost"));
        // Over a manifest's Debian base, which it replaces: Debian flags are refused.
        let cli = parse(&[
            "osbuild",
            "bootstrap",
            "--output",
            "t",
            "--image",
            "containers-storage:localhost/x",
            "--package",
            "jq",
        ])
        .unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let err = a.tree.bootstrap(None).unwrap_err().to_string();
        assert!(
            err.contains("--package only apply to a Debian base"),
            "{err}"
        );
        let cli = parse(&["osbuild", "bootstrap", "--output", "t", "--image", "ubuntu"]).unwrap();
        let Command::Bootstrap(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let err = a.tree.bootstrap(None).unwrap_err().to_string();
        assert!(err.starts_with("--image \"ubuntu\": "), "{err}");
    }

    /// The help of `verb`, as `osbuild VERB --help` prints it.
    fn help(verb: &str) -> String {
        let mut cmd = Cli::command();
        cmd.find_subcommand_mut(verb)
            .unwrap_or_else(|| panic!("no verb {verb}"))
            .render_long_help()
            .to_string()
    }

    #[test]
    fn every_key_flag_is_in_the_help_and_overrides_its_key() {
        let flags = ostree_commit::key_flags();
        // The keys the issue names as overridable, with the spellings scripts use.
        let names: Vec<&str> = flags.iter().map(|f| f.name).collect();
        for name in [
            "suite", "mirror", "kernel", "package", "hostname", "overlay", "branch", "version",
        ] {
            assert!(names.contains(&name), "no --{name}: {names:?}");
        }
        for flag in &flags {
            let verbs: &[&str] = match flag.scope {
                ostree_commit::FlagScope::Tree => &["bootstrap", "commit", "commit-push"],
                ostree_commit::FlagScope::Commit => &["commit", "commit-push"],
                ostree_commit::FlagScope::Image => &["make-image"],
            };
            let usage = match flag.action {
                ostree_commit::FlagAction::Switch => format!("--{}\n", flag.name),
                _ => format!("--{} <{}>", flag.name, flag.value_name),
            };
            for verb in verbs {
                let help = help(verb);
                assert!(help.contains(&usage), "{verb}: {usage}");
                assert!(
                    help.contains(&format!("`{}`", flag.key)),
                    "{verb}: --{} does not name {}",
                    flag.name,
                    flag.key
                );
            }
            // Each flag reaches its key: a tree flag changes the Debian tree, a commit flag
            // the branch or version.
            let value = match flag.key.as_str() {
                "base.mirror" => "http://mirror.example/debian",
                "base.image" => "docker://registry.example/xy:1",
                "base.init" => "openrc",
                _ => "xy",
            };
            let arg = format!("--{}={value}", flag.name);
            match flag.scope {
                ostree_commit::FlagScope::Tree => {
                    let cli = parse(&["osbuild", "bootstrap", "--output", "t", &arg]).unwrap();
                    let Command::Bootstrap(a) = cli.verb() else {
                        panic!()
                    };
                    let spec = a.tree.bootstrap(None).unwrap();
                    let plain = TreeArgs::default().bootstrap(None).unwrap();
                    assert_ne!(
                        format!("{spec:?}"),
                        format!("{plain:?}"),
                        "--{} changed nothing",
                        flag.name
                    );
                }
                ostree_commit::FlagScope::Commit => {
                    let cli = parse(&["osbuild", "commit", &arg]).unwrap();
                    let Command::Commit(a) = cli.verb() else {
                        panic!()
                    };
                    assert_eq!(a.keys.0.value(&flag.key), Some(value), "--{}", flag.name);
                }
                ostree_commit::FlagScope::Image => {
                    // A valid value of each key, different from its default.
                    let arg = match flag.key.as_str() {
                        "image.bootloader" => "--bootloader=syslinux".to_string(),
                        "image.firmware" => "--firmware=bios".to_string(),
                        "image.partition_table" => "--partition-table=mbr".to_string(),
                        "image.format" => "--format=qcow2".to_string(),
                        "image.size" => "--size=4G".to_string(),
                        "image.secure_boot" => "--secure-boot".to_string(),
                        "remote.url" => "--remote-url=http://example.com/repo".to_string(),
                        _ => arg.clone(),
                    };
                    let argv = ["osbuild", "make-image", "--url", "u", "--output", "o", &arg];
                    let cli = parse(&argv).unwrap();
                    let Command::MakeImage(a) = cli.verb() else {
                        panic!()
                    };
                    let mut image = ostree_commit::ImageSettings::default();
                    a.keys.0.apply_image(&mut image).unwrap();
                    let remote = a.keys.0.remote().unwrap();
                    assert_ne!(
                        (format!("{image:?}"), format!("{remote:?}")),
                        (
                            format!("{:?}", ostree_commit::ImageSettings::default()),
                            format!("{:?}", ostree_commit::RemoteFlags::default())
                        ),
                        "{arg} changed nothing"
                    );
                }
            }
        }
        // --branch and --version are what commit uses.
        let cli = parse(&["osbuild", "commit", "--branch", "a/b", "--version", "7"]).unwrap();
        let Command::Commit(a) = cli.verb() else {
            panic!()
        };
        assert_eq!(
            (a.keys.0.value("ref"), a.keys.0.value("version")),
            (Some("a/b"), Some("7"))
        );
    }

    #[test]
    fn image_flags_are_checked_as_the_manifest_keys_are() {
        for (flag, value, says) in [
            (
                "--bootloader",
                "lilo",
                "is not one of syslinux, grub, systemd-boot",
            ),
            ("--format", "vdi", "is not one of"),
            ("--size", "huge", ""),
            ("--os", "a/b", "stateroot name"),
            ("--remote-url", "ftp://h/r", ""),
            ("--remote-name", "a b", "remote name"),
        ] {
            let argv = [
                "osbuild",
                "make-image",
                "--url",
                "u",
                "--output",
                "o",
                flag,
                value,
            ];
            let cli = parse(&argv).unwrap();
            let Command::MakeImage(a) = cli.verb() else {
                panic!("{cli:?}")
            };
            let mut image = ostree_commit::ImageSettings::default();
            let err = a
                .keys
                .0
                .apply_image(&mut image)
                .and_then(|()| a.keys.0.remote().map(|_| ()))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{flag} {value:?}: ")) && err.contains(says),
                "{err}"
            );
        }
    }

    #[test]
    fn cache_flags() {
        let spec = |args: &[&str]| {
            let mut argv = vec!["osbuild", "bootstrap", "--output", "t"];
            argv.extend(args);
            let cli = parse(&argv).unwrap();
            let Command::Bootstrap(a) = cli.verb() else {
                panic!("{cli:?}")
            };
            a.tree.bootstrap(None).unwrap()
        };
        let cache = spec(&["--cache-dir", "/c"]).cache.unwrap();
        assert_eq!(cache, ostree_commit::Cache::new("/c"));
        assert_eq!(cache.packages(), PathBuf::from("/c/packages"));
        assert_eq!(
            spec(&["--cache-dir", "/c", "--rebuild-base"]).cache,
            Some(ostree_commit::Cache::new("/c").rebuild_base())
        );
        assert_eq!(spec(&["--no-cache"]).cache, None);
        if std::env::var_os("HOME").is_some() {
            assert!(spec(&[]).cache.unwrap().dir().ends_with("osbuild"));
        }
        assert!(parse(&[
            "osbuild",
            "bootstrap",
            "--output",
            "t",
            "--no-cache",
            "--cache-dir",
            "c"
        ])
        .is_err());
        // commit and commit-push take them too.
        let cli = parse(&["osbuild", "commit", "--manifest", "m", "--no-cache"]).unwrap();
        assert!(matches!(cli.verb(), Command::Commit(a) if a.tree_flags.cache.no_cache));
        let cli = parse(&[
            "osbuild",
            "commit-push",
            "--server",
            "h",
            "--cache-dir",
            "c",
        ])
        .unwrap();
        assert!(matches!(cli.verb(), Command::CommitPush(_)));
    }

    #[test]
    fn make_image_and_status_parse() {
        let cli = parse(&[
            "osbuild",
            "make-image",
            "--url",
            "u",
            "--branch",
            "b",
            "--output",
            "o",
            "--size",
            "512M",
            "--karg",
            "quiet",
        ])
        .unwrap();
        let Command::MakeImage(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        let mut image = ostree_commit::ImageSettings::default();
        a.keys.0.apply_image(&mut image).unwrap();
        assert_eq!(
            (image.size, a.kargs.as_slice()),
            (
                Some(image_builder::Size::Bytes(512 << 20)),
                &["quiet".to_string()][..]
            )
        );
        // As users type it: the ref is the only one the server lists.
        let cli = parse(&[
            "osbuild",
            "make-image",
            "--url",
            "u",
            "--output",
            "disk.img",
        ])
        .unwrap();
        assert!(matches!(cli.verb(), Command::MakeImage(a) if a.branch.is_none()));
        let cli = parse(&["osbuild", "admin", "status", "--json"]).unwrap();
        assert!(matches!(cli.verb(), Command::Admin(_)));
        assert!(parse(&["osbuild", "admin", "upgrade", "--check", "--reboot"]).is_err());
        assert!(parse(&["osbuild", "admin", "rollback", "--sysroot", "/mnt"]).is_ok());
    }
}
