//! `osbuild`: the command line. Each verb parses its options and calls one library crate.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "osbuild",
    version,
    about = "Build, ship and upgrade immutable OSTree-based Debian systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Show the deployments of a sysroot.
    Status(StatusArgs),
    /// Push refs to a repository on a server over SSH (the ostree-push protocol); exits
    /// with the receiver's status.
    Push(PushArgs),
    /// Commit a tree, then push the new commit's ref over SSH.
    CommitPush(CommitPushArgs),
}

#[derive(clap::Args)]
struct BootstrapArgs {
    /// Directory to create; must not exist.
    #[arg(long)]
    output: PathBuf,
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    suite: String,
    /// Archive mirror (mmdebstrap's default when unset).
    #[arg(long)]
    mirror: Option<String>,
    /// Kernel package.
    #[arg(long, default_value = "linux-image-cloud-amd64")]
    kernel: String,
    /// Extra package to install (repeatable, or comma-separated).
    #[arg(long = "package", value_delimiter = ',')]
    packages: Vec<String>,
    /// Static hostname.
    #[arg(long, default_value = "osbuild")]
    hostname: String,
    /// Directory copied over the tree before conversion (with /etc at /etc); repeatable,
    /// applied in order.
    #[arg(long = "overlay")]
    overlays: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct CommitArgs {
    /// Archive repository; created if it does not exist.
    #[arg(long)]
    repo: PathBuf,
    /// The ref to commit to, e.g. debian/bookworm/x86_64.
    #[arg(long)]
    branch: String,
    /// The OSTree-ready tree to commit.
    #[arg(long)]
    tree: PathBuf,
    #[arg(long)]
    subject: Option<String>,
    /// Version metadata shown by `ostree admin status`.
    #[arg(long)]
    version: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file of serve settings, keyed by the flag names (`tls-cert = "…"`); flags
    /// given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ostree_serve::ServeConfig,
}

#[derive(clap::Args)]
struct MakeImageArgs {
    /// Repository URL the builder pulls from, e.g. http://127.0.0.1:8080/repo/.
    #[arg(long)]
    url: String,
    /// The ref to deploy [default: the only ref the server lists].
    #[arg(long)]
    branch: Option<String>,
    /// The disk image to write (raw).
    #[arg(long)]
    output: PathBuf,
    /// Repository URL the device pulls upgrades from (default: --url).
    #[arg(long)]
    remote_url: Option<String>,
    /// Name of the remote in the device's repo config.
    #[arg(long, default_value = "origin")]
    remote_name: String,
    /// Disk size, e.g. 4G.
    #[arg(long, default_value = "4G", value_parser = image_builder::parse_size)]
    size: u64,
    /// The OS (stateroot) name.
    #[arg(long, default_value = "debian")]
    os: String,
    /// Extra kernel argument (repeatable).
    #[arg(long = "karg")]
    kargs: Vec<String>,
}

#[derive(clap::Args)]
struct ReceiveArgs {
    /// Only accept pushes to this repository.
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Refuse commits without a valid GPG signature from --trusted-keyring.
    #[arg(long, requires = "trusted_keyring")]
    require_signature: bool,
    /// GPG keyring (binary or armored public keys) that signatures must come from.
    #[arg(long, value_name = "FILE")]
    trusted_keyring: Option<PathBuf>,
    /// Honour a client's --force (non-fast-forward or older commits).
    #[arg(long)]
    allow_force: bool,
    /// The protocol's arguments ([-n] REPO URL [REF…]); by default the command the SSH
    /// client asked for, from $SSH_ORIGINAL_COMMAND.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The sysroot to inspect.
    #[arg(long, default_value = "/")]
    sysroot: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct PushArgs {
    /// The local archive repository.
    #[arg(long)]
    repo: PathBuf,
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    destination: ostree_commit::Destination,
    /// Refs to push (all refs of the repository when none).
    refs: Vec<String>,
    #[command(flatten)]
    ssh: PushSshArgs,
}

#[derive(clap::Args)]
struct CommitPushArgs {
    #[command(flatten)]
    commit: CommitArgs,
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    destination: ostree_commit::Destination,
    #[command(flatten)]
    ssh: PushSshArgs,
}

/// How a push reaches the server and what it runs there.
#[derive(clap::Args)]
struct PushSshArgs {
    /// Only report what the server would update (passes -n to the receiver).
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Remote receive command, tried in order until one exists (repeatable; default
    /// ostree-receive-1, then ostree-receive).
    #[arg(long = "command", value_name = "CMD")]
    commands: Vec<String>,
    /// Private key to offer before ssh-agent's and ~/.ssh/id_* (repeatable).
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    identities: Vec<PathBuf>,
    /// known_hosts file to check the server's key against [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Trust a server whose key is not in known_hosts yet, and record it there.
    #[arg(long)]
    accept_new_host_key: bool,
}

impl PushSshArgs {
    fn options(self) -> ostree_commit::PushOptions {
        ostree_commit::PushOptions {
            dry_run: self.dry_run,
            commands: self.commands,
            identities: self.identities,
            known_hosts: self.known_hosts,
            accept_new_host_key: self.accept_new_host_key,
        }
    }
}

/// Push, report, and leave with the receiver's exit status.
fn push_and_exit(
    repo: &std::path::Path,
    dest: &ostree_commit::Destination,
    refs: &[String],
    ssh: PushSshArgs,
) -> Result<()> {
    let outcome = ostree_commit::push(repo, dest, refs, &ssh.options())?;
    eprintln!(
        "{} fetched {} objects ({} bytes); the receiver exited with status {}",
        dest.host, outcome.objects, outcome.bytes, outcome.exit_status
    );
    if outcome.exit_status != 0 {
        std::process::exit(i32::try_from(outcome.exit_status).unwrap_or(1));
    }
    Ok(())
}

fn main() {
    // Installed as ostree-receive-1 or ostree-receive (a link to this binary), osbuild is the
    // receiver that ostree-push clients run over OpenSSH.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if ostree_serve::receive::COMMANDS.contains(&name.as_str()) {
        let words: Vec<String> = std::env::args().skip(1).collect();
        let status = match ostree_serve::receive::ReceiveArgs::parse(&words) {
            Ok(args) => {
                ostree_serve::receive::run(&args, None, &Default::default(), &mut std::io::stderr())
            }
            Err(e) => {
                eprintln!("{e}");
                ostree_serve::receive::EXIT_USAGE
            }
        };
        std::process::exit(status as i32);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OSBUILD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Bootstrap(a) => {
            let spec = ostree_commit::Bootstrap {
                base: ostree_commit::Base::Debian(ostree_commit::Debian {
                    suite: a.suite,
                    mirror: a.mirror,
                    kernel: a.kernel,
                    packages: a.packages,
                    ..Default::default()
                }),
                hostname: a.hostname,
                overlays: a.overlays,
            };
            let info = ostree_commit::bootstrap(&spec, &a.output)?;
            eprintln!("Bootstrapped {} (kernel {})", a.output.display(), info.kver);
        }
        Command::Commit(a) => {
            let opts = ostree_commit::CommitOptions {
                branch: a.branch,
                subject: a.subject,
                version: a.version,
            };
            let commit = ostree_commit::commit(&a.repo, &a.tree, &opts)?;
            println!("{}", commit.checksum);
        }
        Command::Serve(a) => {
            let cfg = ostree_serve::ServeConfig::load(a.config.as_deref(), a.settings)?;
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(ostree_serve::serve_config(&cfg))?;
        }
        Command::MakeImage(a) => {
            let mut spec = image_builder::ImageSpec::new(&a.url, a.branch.as_deref());
            spec.remote_url = a.remote_url;
            spec.remote_name = a.remote_name;
            spec.size = a.size;
            spec.os = a.os;
            spec.kargs = a.kargs;
            let image = image_builder::make_image(&spec, &a.output)?;
            eprintln!(
                "Wrote {} ({} bytes) with commit {}",
                a.output.display(),
                image.size,
                image.checksum
            );
            println!("{}", a.output.display());
        }
        Command::Receive(a) => {
            let parsed = if a.args.is_empty() {
                let original = std::env::var("SSH_ORIGINAL_COMMAND").context(
                    "no protocol arguments and no SSH_ORIGINAL_COMMAND: run this as sshd's ForceCommand",
                )?;
                ostree_serve::receive::ReceiveArgs::parse_command(&original)
            } else {
                ostree_serve::receive::ReceiveArgs::parse(&a.args)
            };
            let args = match parsed {
                Ok(args) => args,
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(ostree_serve::receive::EXIT_USAGE as i32);
                }
            };
            let policy = ostree_serve::receive::Policy {
                require_signature: a.require_signature,
                trusted_keyring: a.trusted_keyring,
                allow_force: a.allow_force,
            };
            let status = ostree_serve::receive::run(
                &args,
                a.repo.as_deref(),
                &policy,
                &mut std::io::stderr(),
            );
            std::process::exit(status as i32);
        }
        Command::Status(a) => {
            let status = osbuild_admin::status(&a.sysroot)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
        Command::Push(a) => push_and_exit(&a.repo, &a.destination, &a.refs, a.ssh)?,
        Command::CommitPush(a) => {
            let opts = ostree_commit::CommitOptions {
                branch: a.commit.branch,
                subject: a.commit.subject,
                version: a.commit.version,
            };
            let commit = ostree_commit::commit(&a.commit.repo, &a.commit.tree, &opts)?;
            println!("{}", commit.checksum);
            push_and_exit(&a.commit.repo, &a.destination, &[opts.branch], a.ssh)?;
        }
    }
    Ok(())
}
