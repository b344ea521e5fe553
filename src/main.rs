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
    /// Show the deployments of a sysroot.
    Status(StatusArgs),
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
    /// Directory copied over the tree before conversion (with /etc at /etc).
    #[arg(long)]
    overlay: Option<PathBuf>,
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
    /// The ref to deploy.
    #[arg(long)]
    branch: String,
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
struct StatusArgs {
    /// The sysroot to inspect.
    #[arg(long, default_value = "/")]
    sysroot: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn main() {
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
                suite: a.suite,
                mirror: a.mirror,
                kernel: a.kernel,
                packages: a.packages,
                hostname: a.hostname,
                overlay: a.overlay,
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
            let mut spec = image_builder::ImageSpec::new(&a.url, &a.branch);
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
        Command::Status(a) => {
            let status = osbuild_admin::status(&a.sysroot)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{status}");
            }
        }
    }
    Ok(())
}
