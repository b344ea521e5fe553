//! `osbuild push` and `osbuild commit-push`: send refs to a server over SSH.

use super::CommitArgs;
use anyhow::{bail, Result};
use ostree_commit::Destination;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

/// Push refs.
#[derive(Debug, clap::Args)]
pub(crate) struct PushArgs {
    /// The local archive repository.
    #[arg(long)]
    repo: PathBuf,
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    destination: Destination,
    /// Refs to push (all refs of the repository when none).
    refs: Vec<String>,
    #[command(flatten)]
    ssh: PushSshArgs,
}

/// Commit, then push the commit's ref.
#[derive(Debug, clap::Args)]
pub(crate) struct CommitPushArgs {
    #[command(flatten)]
    commit: CommitArgs,
    #[command(flatten)]
    target: PushTarget,
    #[command(flatten)]
    ssh: PushSshArgs,
}

/// The repository path that `osbuild serve --ssh` serves (compose/ and contrib/).
const SERVER_PATH: &str = "/srv/ostree/repo";

/// What commit-push says when it has nowhere to push.
const NO_DESTINATION: &str = "commit-push needs a destination: pass ssh://USER@HOST:PORT/PATH, \
                              --server HOST, or set [push] destination in osbuild.toml";

/// Where a push goes: a destination as ssh takes it, or a server named by its parts.
#[derive(Debug, clap::Args)]
pub(crate) struct PushTarget {
    /// ssh://[USER@]HOST[:PORT]/PATH or [USER@]HOST:PATH.
    #[arg(conflicts_with = "server")]
    destination: Option<Destination>,
    /// The server to push to, instead of a destination: HOST, HOST:PORT or [IPV6]:PORT.
    /// With --user, --ssh-port and --path it makes ssh://USER@HOST:PORT/PATH.
    #[arg(long, value_name = "HOST[:PORT]")]
    server: Option<Server>,
    /// Login name on --server [default: the local user, as with ssh].
    #[arg(long)]
    user: Option<String>,
    /// SSH port of --server [default: the port in --server, else 22].
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    ssh_port: Option<u16>,
    /// Repository path on --server [default: /srv/ostree/repo, the one `osbuild serve`
    /// serves in compose/ and contrib/].
    #[arg(long)]
    path: Option<String>,
}

impl PushTarget {
    /// The destination given, or the one --server and its flags make, if they name one.
    pub(super) fn given(&self) -> Result<Option<Destination>> {
        // Checked here rather than with clap's `requires`, which a destination (in
        // conflict with --server) would silence.
        let parts: Vec<&str> = [
            ("--user", self.user.is_some()),
            ("--ssh-port", self.ssh_port.is_some()),
            ("--path", self.path.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect();
        let parts = parts.join(", ");
        if let Some(dest) = &self.destination {
            if !parts.is_empty() {
                bail!("{parts}: only with --server HOST; the destination {dest} names its own");
            }
            return Ok(Some(dest.clone()));
        }
        let Some(server) = &self.server else {
            if !parts.is_empty() {
                bail!("{parts}: only with --server HOST");
            }
            return Ok(None);
        };
        let port = match (server.port, self.ssh_port) {
            (Some(a), Some(b)) if a != b => {
                bail!(
                    "--server {server}:{a} and --ssh-port {b} name different ports: \
                     give the port once"
                )
            }
            (a, b) => b.or(a).unwrap_or(22),
        };
        let path = self.path.as_deref().unwrap_or(SERVER_PATH);
        if !path.starts_with('/') {
            bail!(
                "--path {path:?} is not absolute: give the repository's path on the server, \
                 e.g. {SERVER_PATH}"
            );
        }
        if let Some(user) = &self.user {
            // What would end the user part of ssh://USER@HOST or make it an option.
            if user.is_empty()
                || user.starts_with('-')
                || user
                    .chars()
                    .any(|c| c == '/' || c == ':' || c.is_whitespace())
            {
                bail!("--user {user:?} is not a user name");
            }
        }
        Ok(Some(Destination {
            user: self.user.clone(),
            host: server.host.clone(),
            port: Some(port),
            path: path.to_string(),
        }))
    }
}

/// `--server`: a host and maybe a port, no user or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// Without brackets for an IPv6 address.
    host: String,
    port: Option<u16>,
}

impl FromStr for Server {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        if s.contains('@') {
            bail!("{s:?} names a user: --server takes HOST[:PORT], give the user with --user");
        }
        if s.contains('/') {
            bail!("{s:?} has a path: --server takes HOST[:PORT], give the path with --path");
        }
        let (host, port) = if let Some(v6) = s.strip_prefix('[') {
            match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, after)) => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => bail!("{s:?}: expected [IPV6]:PORT"),
                },
                None => bail!("{s:?} has an unclosed '['"),
            }
        } else if s.matches(':').count() > 1 {
            // A bare IPv6 address: its colons are not a port.
            (s, None)
        } else {
            match s.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            bail!("{s:?} has no host");
        }
        if host.starts_with('-') || host.chars().any(|c| c.is_whitespace() || c == '[') {
            bail!("{s:?} is not a host name or address");
        }
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => bail!("{s:?} has an invalid port {p:?}"),
            },
        };
        Ok(Server {
            host: host.to_string(),
            port,
        })
    }
}

/// The host as a URL writes it (an IPv6 address in brackets), without the port.
impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)
        } else {
            f.write_str(&self.host)
        }
    }
}

/// How a push reaches the server and what it runs there.
#[derive(Debug, clap::Args)]
pub(crate) struct PushSshArgs {
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

impl PushArgs {
    pub(super) fn run(self) -> Result<ExitCode> {
        push(&self.repo, &self.destination, &self.refs, self.ssh)
    }
}

impl CommitPushArgs {
    pub(super) fn run(mut self) -> Result<ExitCode> {
        // First: a command line that cannot push commits nothing (and creates no repo).
        let manifest = self.commit.manifest.load()?;
        let pushed = manifest.as_ref().and_then(|m| m.push());
        let dest = match (self.target.given()?, pushed) {
            (Some(dest), _) => dest,
            (None, Some(p)) => p.destination.clone(),
            (None, None) => bail!("{NO_DESTINATION}"),
        };
        // The manifest's key and known_hosts unless the command line names its own.
        if let Some(p) = pushed {
            if self.ssh.identities.is_empty() {
                self.ssh.identities.extend(p.identity.clone());
            }
            if self.ssh.known_hosts.is_none() {
                self.ssh.known_hosts.clone_from(&p.known_hosts);
            }
        }
        let branch = self.commit.run(manifest.as_ref())?;
        push(&self.commit.repo, &dest, &[branch], self.ssh)
    }
}

/// Push, report, and end with the receiver's exit status.
fn push(repo: &Path, dest: &Destination, refs: &[String], ssh: PushSshArgs) -> Result<ExitCode> {
    let outcome = ostree_commit::push(repo, dest, refs, &ssh.options())?;
    eprintln!(
        "{} fetched {} objects ({} bytes); the receiver exited with status {}",
        dest.host, outcome.objects, outcome.bytes, outcome.exit_status
    );
    // A status beyond a byte cannot be passed on: it is still a failure.
    Ok(ExitCode::from(
        u8::try_from(outcome.exit_status).unwrap_or(1),
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::super::Command;
    use super::*;
    use anyhow::Context;

    #[test]
    fn push_parses_both_destination_forms() {
        let cli = parse(&[
            "osbuild",
            "push",
            "--repo",
            "r",
            "ssh://u@h:2222/srv/repo",
            "a",
            "b",
            "-n",
            "-i",
            "k",
        ])
        .unwrap();
        let Command::Push(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        assert_eq!(a.refs, ["a", "b"]);
        assert!(a.ssh.dry_run && a.ssh.identities.len() == 1);
        assert_eq!(a.destination.host, "h");
        assert!(parse(&["osbuild", "push", "--repo", "r", "u@h:/srv/repo"]).is_ok());
        assert!(parse(&["osbuild", "push", "--repo", "r"]).is_err());
    }

    #[test]
    fn commit_push_parses() {
        let cli = parse(&[
            "osbuild",
            "commit-push",
            "--repo",
            "r",
            "--branch",
            "b",
            "--tree",
            "t",
            "h:/srv/repo",
            "--command",
            "ostree-receive",
        ])
        .unwrap();
        let Command::CommitPush(a) = cli.verb() else {
            panic!("{cli:?}")
        };
        assert_eq!(a.commit.keys.0.value("ref"), Some("b"));
        assert_eq!(a.commit.repo, Path::new("r"));
        assert_eq!(a.ssh.commands, ["ostree-receive"]);
        assert_eq!(
            a.target.given().unwrap().unwrap().to_string(),
            "h:/srv/repo"
        );
    }

    fn commit_push(args: &[&str]) -> Result<CommitPushArgs, clap::Error> {
        let mut argv = vec!["osbuild", "commit-push", "--branch", "b", "--tree", "t"];
        argv.extend(args);
        match parse(&argv)?.command {
            Command::CommitPush(a) => Ok(a),
            other => panic!("{other:?}"),
        }
    }

    /// The destination that `args` push to, as a URL (or the error, as printed).
    fn destination(args: &[&str]) -> Result<String, String> {
        let a = commit_push(args).map_err(|e| e.to_string())?;
        a.target
            .given()
            .and_then(|d| d.context(NO_DESTINATION))
            .map(|d| d.to_string())
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn repo_defaults_to_repo_in_the_current_directory() {
        assert_eq!(
            commit_push(&["--server", "h"]).unwrap().commit.repo,
            Path::new("repo")
        );
        assert_eq!(
            commit_push(&["--server", "h", "--repo", "/x"])
                .unwrap()
                .commit
                .repo,
            Path::new("/x")
        );
    }

    #[test]
    fn server_and_its_parts_make_the_destination() {
        for (args, want) in [
            (&["--server", "h"][..], "ssh://h:22/srv/ostree/repo"),
            (&["--server", "h:2222"], "ssh://h:2222/srv/ostree/repo"),
            (
                &["--server", "h", "--ssh-port", "2222"],
                "ssh://h:2222/srv/ostree/repo",
            ),
            // The same port twice is no conflict.
            (
                &["--server", "h:2222", "--ssh-port", "2222"],
                "ssh://h:2222/srv/ostree/repo",
            ),
            (
                &["--server", "h", "--user", "ostree"],
                "ssh://ostree@h:22/srv/ostree/repo",
            ),
            (
                &["--server", "h", "--path", "/var/repo"],
                "ssh://h:22/var/repo",
            ),
            (
                &["--server=h.example.org:2222", "--user=me", "--path=/r"],
                "ssh://me@h.example.org:2222/r",
            ),
            (
                &["--server", "[::1]:2222"],
                "ssh://[::1]:2222/srv/ostree/repo",
            ),
            (&["--server", "[::1]"], "ssh://[::1]:22/srv/ostree/repo"),
            (
                &["--server", "fe80::1"],
                "ssh://[fe80::1]:22/srv/ostree/repo",
            ),
            (
                &["--server", "10.0.2.2:2222"],
                "ssh://10.0.2.2:2222/srv/ostree/repo",
            ),
            // ssh splits USER@HOST at the last '@'.
            (
                &["--server", "h", "--user", "a@b"],
                "ssh://a@b@h:22/srv/ostree/repo",
            ),
            // A destination alone is taken as given.
            (&["ssh://u@h:2200/r"], "ssh://u@h:2200/r"),
            (&["u@h:repo"], "u@h:repo"),
        ] {
            assert_eq!(destination(args).as_deref(), Ok(want), "{args:?}");
            // What is printed is what is pushed to.
            let dest = commit_push(args).unwrap().target.given().unwrap().unwrap();
            assert_eq!(want.parse::<Destination>().unwrap(), dest, "{args:?}");
        }
        // Without --user the push logs in as the local user, as ssh does.
        let dest = commit_push(&["--server", "h"]).unwrap().target.given();
        assert_eq!(dest.unwrap().unwrap().user, None);
    }

    #[test]
    fn nowhere_to_push_says_how_to_give_one() {
        assert_eq!(destination(&[]), Err(NO_DESTINATION.to_string()));
        assert_eq!(
            NO_DESTINATION,
            "commit-push needs a destination: pass ssh://USER@HOST:PORT/PATH, --server HOST, \
             or set [push] destination in osbuild.toml"
        );
    }

    #[test]
    fn conflicting_targets_are_refused() {
        // Both a destination and --server: a usage error naming both.
        let err = destination(&["ssh://h/r", "--server", "h2"]).unwrap_err();
        assert!(
            err.contains("[DESTINATION]") && err.contains("--server"),
            "{err}"
        );
        // The parts of --server need it.
        for flag in ["--user", "--ssh-port", "--path"] {
            let arg = format!(
                "{flag}={}",
                if flag == "--ssh-port" { "2222" } else { "/x" }
            );
            for args in [&[arg.as_str()][..], &["ssh://h/r", &arg]] {
                let err = destination(args).unwrap_err();
                assert!(
                    err.contains(&format!("{flag}: only with --server")),
                    "{args:?}: {err}"
                );
            }
        }
        let err = destination(&["h:r", "--user=u", "--path=/r"]).unwrap_err();
        assert_eq!(
            err,
            "--user, --path: only with --server HOST; the destination h:r names its own"
        );
        for (args, why) in [
            (
                &["--server", "h:2222", "--ssh-port", "2200"][..],
                "different ports",
            ),
            (&["--server", "h", "--path", "srv/repo"], "not absolute"),
            (&["--server", "h", "--user", ""], "not a user name"),
            (&["--server", "h", "--user", "a/b"], "not a user name"),
            (&["--server", "h", "--user", "a:b"], "not a user name"),
            (&["--server", "h", "--user=-oX"], "not a user name"),
            (&["--server", "h", "--ssh-port", "0"], "0"),
            (&["--server", "u@h"], "--user"),
            (&["--server", "h/srv/repo"], "--path"),
            (&["--server", "h:0"], "invalid port"),
            (&["--server", "h:ssh"], "invalid port"),
            (&["--server", "h:70000"], "invalid port"),
            (&["--server", ""], "no host"),
            (&["--server", ":2222"], "no host"),
            (&["--server=-oProxyCommand=x"], "not a host"),
            (&["--server", "[::1"], "unclosed"),
            (&["--server", "[::1]2222"], "[IPV6]:PORT"),
        ] {
            let err = destination(args).unwrap_err();
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }
}
