//! `osbuild push`: publish refs of a local archive repository to a server over SSH,
//! speaking the ostree-push 1.2 protocol so that either end can be ostree-push's.
//!
//! The server pulls, we serve: the repository is served by `osbuild serve`'s router into
//! a remote port forward (`tcpip-forward` for `localhost`, port 0), and the server runs
//! `ostree-receive-1 [-n] PATH http://127.0.0.1:PORT [REF…]`, which pulls through the
//! tunnel. If that command is missing (exit status 127), `ostree-receive` is tried. The
//! receiver's exit status is the push's: 0 for success or nothing to update, 1 for an
//! error, 2 for a usage error. No local port is opened: each tunnelled connection is
//! served straight from its SSH channel.

mod console;
mod destination;
mod known_hosts;
mod local;
mod ssh;
mod tunnel;

pub use destination::Destination;

use anyhow::{bail, Context, Result};
use osbuild_core::cmd::quote_word;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The receive commands tried by default, in order: the versioned entry point first, so
/// that old and new receivers can coexist on a server.
pub(crate) const DEFAULT_COMMANDS: [&str; 2] = ["ostree-receive-1", "ostree-receive"];

/// The exit status a shell gives for a command it cannot find.
const COMMAND_NOT_FOUND: u32 = 127;

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Ask the receiver what it would update, without updating (`-n`).
    pub dry_run: bool,
    /// Remote commands to try in order until one exists; ostree-receive-1 then ostree-receive when empty.
    /// Each is used verbatim as the start of the remote command line.
    pub commands: Vec<String>,
    /// Private key files offered before ssh-agent's keys and `~/.ssh/id_*`.
    pub identities: Vec<PathBuf>,
    /// The known_hosts file; `~/.ssh/known_hosts` (and the system-wide
    /// `/etc/ssh/ssh_known_hosts`) when unset.
    pub known_hosts: Option<PathBuf>,
    /// Trust and record the key of a host that known_hosts does not list. A key that
    /// differs from a recorded one is refused regardless.
    pub accept_new_host_key: bool,
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// The receiver's exit status: 0 success or nothing to update, 1 error, 2 usage.
    pub exit_status: u32,
    /// The remote command line that ran.
    pub command: String,
    /// Objects the server fetched through the tunnel.
    pub objects: u64,
    /// Bytes of responses the server fetched through the tunnel.
    pub bytes: u64,
}

/// Push `refs` (all refs when empty) of the archive repository at `repo` to `dest`.
///
/// Refs are checked before connecting, and the summary is regenerated if it does not
/// list the refs as they are (the receiver reads them from it). Runs its own async
/// runtime: call it from synchronous code. The receiver's output is passed through to
/// our stdout and stderr. An error is returned only when the push could not be carried
/// out; a receiver that ran and failed is an outcome with a non-zero status.
pub fn push(
    repo: &Path,
    dest: &Destination,
    refs: &[String],
    opts: &PushOptions,
) -> Result<PushOutcome> {
    let pushed = local::prepare(repo, refs)
        .with_context(|| format!("preparing {} for a push", repo.display()))?;
    let router = ostree_serve::router(repo)?;
    let (user, home) = local_user()?;
    let user = dest.user.clone().unwrap_or(user);
    let ssh_dir = home.map(|h| h.join(".ssh"));
    let (files, learn_to) = match &opts.known_hosts {
        Some(path) => (vec![path.clone()], path.clone()),
        None => {
            let Some(dir) = &ssh_dir else {
                bail!("no home directory for known_hosts: pass --known-hosts FILE");
            };
            let user_file = dir.join("known_hosts");
            (
                vec![user_file.clone(), PathBuf::from("/etc/ssh/ssh_known_hosts")],
                user_file,
            )
        }
    };
    let policy = ssh::HostKeyPolicy {
        host: dest.host.clone(),
        port: dest.port(),
        files,
        learn_to,
        accept_new: opts.accept_new_host_key,
    };
    let keys = ssh::Keys {
        identities: &opts.identities,
        ssh_dir: ssh_dir.as_deref(),
    };
    let names: Vec<&str> = pushed.keys().map(String::as_str).collect();
    eprintln!(
        "Pushing {} from {} to {dest}{}",
        names.join(", "),
        repo.display(),
        if opts.dry_run { " (dry run)" } else { "" }
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(async {
            let tunnel = tunnel::Tunnel::new(router);
            let stats = tunnel.stats();
            let conn = ssh::connect(policy, &user, &keys, tunnel).await?;
            let port = conn.forward().await?;
            let url = format!("http://127.0.0.1:{port}");

            let console = Arc::new(console::Console::new(&format!("Pushing to {}", dest.host)));
            let ticker = tokio::spawn({
                let (console, stats, host) = (console.clone(), stats.clone(), dest.host.clone());
                async move {
                    let mut every = tokio::time::interval(Duration::from_millis(200));
                    loop {
                        every.tick().await;
                        console.set_counts(&host, stats.objects(), stats.bytes());
                    }
                }
            });
            let result = run_receive(&conn, dest, refs, opts, &url, &console).await;
            ticker.abort();
            console.finish();
            conn.disconnect().await;
            let (exit_status, command) = result?;
            tracing::debug!("the receiver made {} requests", stats.requests());
            Ok::<_, anyhow::Error>(PushOutcome {
                exit_status,
                command,
                objects: stats.objects(),
                bytes: stats.bytes(),
            })
        })
        .with_context(|| format!("pushing to {dest}"))
}

/// Try each receive command until one exists; returns its exit status and command line.
async fn run_receive(
    conn: &ssh::Connection,
    dest: &Destination,
    refs: &[String],
    opts: &PushOptions,
    url: &str,
    console: &console::Console,
) -> Result<(u32, String)> {
    let host = &dest.host;
    let programs: Vec<&str> = if opts.commands.is_empty() {
        DEFAULT_COMMANDS.to_vec()
    } else {
        opts.commands.iter().map(String::as_str).collect()
    };
    for (i, program) in programs.iter().enumerate() {
        let command = remote_command(program, opts.dry_run, &dest.path, url, refs);
        tracing::info!("running on {host}: {command}");
        let exit = conn.run(&command, console).await?;
        match exit {
            ssh::RemoteExit::Status(COMMAND_NOT_FOUND) if i + 1 < programs.len() => {
                tracing::info!("{program} is not on {host}; trying {}", programs[i + 1]);
            }
            ssh::RemoteExit::Status(COMMAND_NOT_FOUND) => bail!(
                "{host} has none of the receive commands {} (exit status 127): install \
                 ostree-push there, or name the command with --command",
                programs.join(", ")
            ),
            ssh::RemoteExit::Status(status) => return Ok((status, command)),
            ssh::RemoteExit::Signal(signal) => {
                bail!("`{command}` on {host} was killed by signal {signal}")
            }
            ssh::RemoteExit::Unknown => {
                bail!("`{command}` on {host} ended without an exit status")
            }
        }
    }
    bail!("no receive command to run")
}

/// `PROGRAM [-n] PATH URL [REF…]`, the arguments quoted for the remote shell. The
/// program is kept as given, so it may carry arguments of its own.
fn remote_command(program: &str, dry_run: bool, path: &str, url: &str, refs: &[String]) -> String {
    let mut words = vec![program.to_string()];
    if dry_run {
        words.push("-n".into());
    }
    // `~/repo` stays relative to the login directory, as with ostree-push.
    words.push(match path.strip_prefix("~/") {
        Some(rest) => format!("~/{}", quote_word(rest)),
        None => quote_word(path),
    });
    words.push(quote_word(url));
    words.extend(refs.iter().map(|r| quote_word(r)));
    words.join(" ")
}

/// The local login name and home directory, from the password database (as ssh does),
/// falling back to `$USER` and `$HOME`.
fn local_user() -> Result<(String, Option<PathBuf>)> {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 7 && f[2].parse() == Ok(uid)).then(|| (f[0].to_string(), f[5].to_string()))
    });
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| entry.as_ref().map(|(_, h)| PathBuf::from(h)));
    let name = match entry {
        Some((name, _)) => name,
        None => std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .with_context(|| format!("uid {uid} has no user name: give one as USER@HOST"))?,
    };
    Ok((name, home))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_command_lines() {
        let refs = vec!["os/x86_64".to_string(), "it's".to_string()];
        assert_eq!(
            remote_command(
                "ostree-receive-1",
                false,
                "/srv/repo",
                "http://127.0.0.1:4000",
                &[]
            ),
            "ostree-receive-1 /srv/repo http://127.0.0.1:4000"
        );
        assert_eq!(
            remote_command(
                "ostree-receive-1",
                true,
                "/srv/my repo",
                "http://127.0.0.1:1",
                &refs
            ),
            r"ostree-receive-1 -n '/srv/my repo' http://127.0.0.1:1 os/x86_64 'it'\''s'"
        );
        assert_eq!(
            remote_command(
                "/opt/venv/bin/ostree-receive --no-update",
                false,
                "~/r$x",
                "u",
                &[]
            ),
            "/opt/venv/bin/ostree-receive --no-update ~/'r$x' u"
        );
    }

    #[test]
    fn local_user_has_a_name() {
        let (name, _) = local_user().unwrap();
        assert!(!name.is_empty());
    }
}
