//! Receiving pushed commits: the `ostree-receive` side of the ostree-push protocol.
//!
//! Unlike ostree-push's receiver, which re-commits what it pulled, this keeps the client's
//! commit checksums (and so its detached signatures). A ref only moves forward: the new
//! commit must descend from the current head and be newer. Publication runs under one lock
//! per repository, in the order objects, static delta, ref, summary, so that a client never
//! sees a ref or summary naming something that is missing.

use anyhow::{Context, Result};
use osbuild_core::glib;
use osbuild_core::{gio, ostree};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The command names clients run, newest protocol version first.
pub const COMMANDS: &[&str] = &["ostree-receive-1", "ostree-receive"];

/// Exit statuses of the protocol.
pub const EXIT_OK: u32 = 0;
pub const EXIT_ERROR: u32 = 1;
pub const EXIT_USAGE: u32 = 2;

/// Refs the receiver never takes from a client (generated metadata, as ostree-receive).
const EXCLUDED_REF_PREFIXES: &[&str] = &["appstream/", "appstream2/", "ostree-metadata"];

/// The arguments of `ostree-receive-1 [-n] [-f] [-q] [-v] [--no-update] REPO URL [REF…]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReceiveArgs {
    pub dry_run: bool,
    pub force: bool,
    pub quiet: bool,
    pub update_summary: bool,
    pub repo: String,
    pub url: String,
    pub refs: Vec<String>,
}

/// A usage error: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("usage: ostree-receive-1 [-n] [-f] [-q] [-v] [--no-update] REPO URL [REF…]: {0}")]
pub struct UsageError(pub String);

impl ReceiveArgs {
    /// Parse the words after the command name.
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Self, UsageError> {
        let mut args = ReceiveArgs {
            update_summary: true,
            ..Default::default()
        };
        let mut positional = Vec::new();
        let mut only_positional = false;
        for w in words.iter().map(AsRef::as_ref) {
            if only_positional || !w.starts_with('-') || w == "-" {
                positional.push(w.to_string());
                continue;
            }
            match w {
                "--" => only_positional = true,
                "-n" | "--dry-run" => args.dry_run = true,
                "-f" | "--force" => args.force = true,
                "-q" | "--quiet" => args.quiet = true,
                "-v" | "--verbose" => args.quiet = false,
                "--no-update" => args.update_summary = false,
                other => return Err(UsageError(format!("unknown option {other}"))),
            }
        }
        let mut it = positional.into_iter();
        args.repo = it.next().ok_or_else(|| UsageError("missing REPO".into()))?;
        args.url = it.next().ok_or_else(|| UsageError("missing URL".into()))?;
        args.refs = it.collect();
        Ok(args)
    }

    /// Parse a whole command line as the client sent it (`ostree-receive-1 …`).
    pub fn parse_command(command: &str) -> Result<Self, UsageError> {
        let words = shell_words::split(command)
            .map_err(|e| UsageError(format!("cannot parse command {command:?}: {e}")))?;
        let (program, rest) = words
            .split_first()
            .ok_or_else(|| UsageError("empty command".into()))?;
        let name = Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !COMMANDS.contains(&name.as_str()) {
            return Err(UsageError(format!(
                "command {program:?} is not allowed; only {} are",
                COMMANDS.join(" and ")
            )));
        }
        Self::parse(rest)
    }
}

/// What the server allows.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Refuse commits without a valid GPG signature from `trusted_keyring`.
    pub require_signature: bool,
    pub trusted_keyring: Option<PathBuf>,
    /// Honour a client's `--force` (non-fast-forward or older commits).
    pub allow_force: bool,
}

/// One ref that moved, or would move on a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub name: String,
    pub old: Option<String>,
    pub new: String,
}

/// Receive the pushed refs from `args.url` into the archive repository at `repo_path`.
/// Messages for the pusher go to `log`.
pub fn receive(
    repo_path: &Path,
    args: &ReceiveArgs,
    policy: &Policy,
    log: &mut dyn Write,
) -> Result<Vec<RefUpdate>> {
    let repo = osbuild_core::repo::open_archive(repo_path)?;
    let cancellable = gio::Cancellable::NONE;
    if args.force && !policy.allow_force {
        anyhow::bail!("--force is not allowed by this server");
    }
    let remote_refs = remote_refs(&args.url, &args.refs)?;
    let mut wanted = BTreeMap::new();
    for (name, rev) in remote_refs {
        let current = osbuild_core::repo::resolve(&repo, &name)?;
        if current.as_deref() == Some(rev.as_str()) && !args.force {
            say(log, args, &format!("{name}: already at {rev}"));
            continue;
        }
        wanted.insert(name, (current, rev));
    }
    if wanted.is_empty() {
        say(log, args, "No refs need updating");
        return Ok(Vec::new());
    }

    // Objects first. Each pull is a libostree transaction: nothing is visible until it
    // completes, and an interrupted one leaves only libostree's staging directory, which
    // the next pull resumes from. Pulling by checksum writes no ref.
    let revs: Vec<String> = wanted.values().map(|(_, r)| r.clone()).collect();
    // Inside the repo's tmp/, where libostree expires whatever a killed receiver left.
    let remotes = tempfile::Builder::new()
        .prefix("osbuild-receive-")
        .tempdir_in(repo_path.join("tmp"))
        .context("creating a temporary remote configuration")?;
    let pull_repo = open_with_push_remote(repo_path, remotes.path(), &args.url, policy)?;
    // The ancestry check needs the commit objects between the current head and the pushed
    // one: only commit objects, not their trees.
    // Signatures are required of the pushed commits, not of every ancestor.
    pull(
        &pull_repo,
        &revs,
        ostree::RepoPullFlags::COMMIT_ONLY,
        -1,
        Some(false),
    )
    .and_then(|()| pull(&pull_repo, &revs, ostree::RepoPullFlags::NONE, 0, None))
    .with_context(|| format!("pulling {} from {}", revs.join(" "), args.url))?;
    if policy.require_signature {
        for rev in &revs {
            verify_signature(&repo, rev, policy.trusted_keyring.as_deref())?;
        }
    }

    let _lock = RepoLock::acquire(repo_path)?;
    // Heads may have moved while we pulled: check against what is current now.
    let mut updates = Vec::new();
    for (name, (_, rev)) in &wanted {
        let current = osbuild_core::repo::resolve(&repo, name)?;
        if let Some(cur) = &current {
            if cur == rev {
                continue;
            }
            check_forward(&repo, name, cur, rev, args.force)?;
        }
        updates.push(RefUpdate {
            name: name.clone(),
            old: current,
            new: rev.clone(),
        });
    }
    for u in &updates {
        say(
            log,
            args,
            &format!(
                "{}{}: {} -> {}",
                if args.dry_run { "would update " } else { "" },
                u.name,
                u.old.as_deref().unwrap_or("(new)"),
                u.new
            ),
        );
    }
    if args.dry_run {
        return Ok(updates);
    }
    for u in &updates {
        if let Some(old) = &u.old {
            // A delta from the old head lets devices upgrade with one download; failing to
            // make one is not a reason to refuse the push.
            let params = glib::VariantDict::new(None);
            params.insert("inline-parts", true);
            if let Err(e) = repo.static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(old),
                &u.new,
                None,
                Some(&params.end()),
                cancellable,
            ) {
                say(
                    log,
                    args,
                    &format!("warning: no static delta {old}-{}: {e}", u.new),
                );
            }
        }
    }
    for u in &updates {
        repo.set_ref_immediate(None, &u.name, Some(&u.new), cancellable)
            .with_context(|| format!("updating ref {}", u.name))?;
    }
    if args.update_summary && !updates.is_empty() {
        // libostree writes the summary to a temporary file and renames it into place.
        repo.regenerate_summary(None, cancellable)
            .context("regenerating the summary")?;
    }
    Ok(updates)
}

fn say(log: &mut dyn Write, args: &ReceiveArgs, msg: &str) {
    if !args.quiet {
        let _ = writeln!(log, "{msg}");
    }
}

/// Refuse anything but a fast-forward to a newer commit, unless forced.
fn check_forward(
    repo: &ostree::Repo,
    name: &str,
    current: &str,
    new: &str,
    force: bool,
) -> Result<()> {
    let (new_commit, _) = repo
        .load_commit(new)
        .with_context(|| format!("loading commit {new}"))?;
    let (cur_commit, _) = repo
        .load_commit(current)
        .with_context(|| format!("loading commit {current}"))?;
    let mut descends = false;
    let mut parent = ostree::commit_get_parent(&new_commit);
    // Bounded: a parent chain is finite, but a client controls it.
    for _ in 0..100_000 {
        match parent {
            Some(p) if p.as_str() == current => {
                descends = true;
                break;
            }
            Some(p) => match repo.load_commit(&p) {
                Ok((c, _)) => parent = ostree::commit_get_parent(&c),
                Err(_) => break,
            },
            None => break,
        }
    }
    if !descends && !force {
        anyhow::bail!(
            "{name}: not a fast-forward: {new} does not descend from the current head {current} \
             (another push may have won; pull, rebase your commit on it and push again)"
        );
    }
    let (t_new, t_cur) = (
        ostree::commit_get_timestamp(&new_commit),
        ostree::commit_get_timestamp(&cur_commit),
    );
    if t_new <= t_cur && !force {
        anyhow::bail!("{name}: commit {new} is not newer than the current head {current}");
    }
    Ok(())
}

fn verify_signature(repo: &ostree::Repo, rev: &str, keyring: Option<&Path>) -> Result<()> {
    let keyring = keyring
        .context("--require-signature needs --trusted-keyring")?
        .to_path_buf();
    let result = repo
        .verify_commit_ext(
            rev,
            gio::File::NONE,
            Some(&gio::File::for_path(&keyring)),
            gio::Cancellable::NONE,
        )
        .with_context(|| {
            format!(
                "commit {rev} has no valid signature from {}",
                keyring.display()
            )
        })?;
    result.require_valid_signature().with_context(|| {
        format!(
            "commit {rev} has no valid signature from {}",
            keyring.display()
        )
    })?;
    Ok(())
}

/// The name of the transient remote that points at the pusher's tunnel.
const PUSH_REMOTE: &str = "_receive";

/// Open the repository with a transient remote for the pusher's URL, kept in its own
/// remotes directory so the repository's config is never touched.
fn open_with_push_remote(
    repo_path: &Path,
    remotes_dir: &Path,
    url: &str,
    policy: &Policy,
) -> Result<ostree::Repo> {
    let mut conf = format!("[remote \"{PUSH_REMOTE}\"]\nurl={url}\ngpg-verify-summary=false\n");
    match (&policy.require_signature, &policy.trusted_keyring) {
        (true, Some(keyring)) => {
            // libostree then refuses unsigned commits while pulling.
            conf.push_str(&format!(
                "gpg-verify=true\ngpgkeypath={}\n",
                keyring.display()
            ));
        }
        (true, None) => anyhow::bail!("--require-signature needs --trusted-keyring"),
        (false, _) => conf.push_str("gpg-verify=false\n"),
    }
    std::fs::write(remotes_dir.join(format!("{PUSH_REMOTE}.conf")), conf)
        .context("writing the temporary remote configuration")?;
    let repo: ostree::Repo = glib::Object::builder()
        .property("path", gio::File::for_path(repo_path))
        .property(
            "remotes-config-dir",
            remotes_dir.to_str().context("non-UTF-8 temp path")?,
        )
        .build();
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening repository {}", repo_path.display()))?;
    Ok(repo)
}

/// Pull `revs` through the push remote; `gpg_verify` overrides the remote's setting.
fn pull(
    repo: &ostree::Repo,
    revs: &[String],
    flags: ostree::RepoPullFlags,
    depth: i32,
    gpg_verify: Option<bool>,
) -> Result<()> {
    let opts = glib::VariantDict::new(None);
    if let Some(v) = gpg_verify {
        opts.insert("gpg-verify", v);
    }
    opts.insert("refs", revs.to_vec());
    opts.insert("flags", flags.bits() as i32);
    opts.insert("depth", depth);
    // The pusher's repo need not have deltas; objects are verified one by one.
    opts.insert("disable-static-deltas", true);
    // libostree runs the pull's I/O on the thread-default main context. Receives run on
    // several threads at once (one per SSH session), so each needs a context of its own;
    // sharing the global one lets threads dispatch each other's callbacks.
    let ctx = glib::MainContext::new();
    ctx.with_thread_default(|| {
        repo.pull_with_options(PUSH_REMOTE, &opts.end(), None, gio::Cancellable::NONE)
    })
    .map_err(|e| anyhow::anyhow!("no main context for the pull: {e}"))??;
    Ok(())
}

/// The refs offered by the pusher, from its summary (all of them when `only` is empty).
fn remote_refs(url: &str, only: &[String]) -> Result<BTreeMap<String, String>> {
    let base = url.trim_end_matches('/');
    let mut refs = BTreeMap::new();
    let summary = http_get(&format!("{base}/summary"))?;
    if let Some(bytes) = &summary {
        let ty = glib::VariantTy::new("(a(s(taya{sv}))a{sv})").context("summary type")?;
        let v = glib::Variant::from_bytes_with_type(&glib::Bytes::from(bytes), ty);
        let list = v.child_value(0);
        for i in 0..list.n_children() {
            let entry = list.child_value(i);
            let name = entry.child_value(0).str().unwrap_or_default().to_string();
            let csum_bytes = entry.child_value(1).child_value(1).data_as_bytes();
            let rev: String = csum_bytes.iter().map(|b| format!("{b:02x}")).collect();
            refs.insert(name, rev);
        }
    }
    let mut wanted = BTreeMap::new();
    if only.is_empty() {
        for (name, rev) in refs {
            if !EXCLUDED_REF_PREFIXES.iter().any(|p| name.starts_with(p)) {
                wanted.insert(name, rev);
            }
        }
        if summary.is_none() {
            anyhow::bail!("the pushed repository has no summary; name the refs to push");
        }
        return Ok(wanted);
    }
    for name in only {
        ostree::validate_rev(name).map_err(|e| anyhow::anyhow!("invalid ref {name:?}: {e}"))?;
        let rev = match refs.get(name) {
            Some(r) => r.clone(),
            // A summary older than the ref: the loose ref file is authoritative.
            None => match http_get(&format!("{base}/refs/heads/{name}"))? {
                Some(b) => String::from_utf8_lossy(&b).trim().to_string(),
                None => anyhow::bail!("ref {name} is not in the pushed repository"),
            },
        };
        ostree::validate_checksum_string(&rev)
            .map_err(|e| anyhow::anyhow!("ref {name} names an invalid commit {rev:?}: {e}"))?;
        wanted.insert(name.clone(), rev);
    }
    Ok(wanted)
}

/// A minimal HTTP/1.0 GET for the pusher's tunnel, which is always plain HTTP on loopback.
/// Returns None on 404.
fn http_get(url: &str) -> Result<Option<Vec<u8>>> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("URL {url} is not http://"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream =
        TcpStream::connect(hostport).with_context(|| format!("connecting to {hostport}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .with_context(|| format!("reading {url}"))?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {url}"))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed HTTP status from {url}"))?;
    match status {
        200 => Ok(Some(resp[split + 4..].to_vec())),
        404 => Ok(None),
        s => anyhow::bail!("GET {url}: HTTP {s}"),
    }
}

/// The per-repository publication lock.
struct RepoLock(File);

impl RepoLock {
    fn acquire(repo: &Path) -> Result<Self> {
        let path = repo.join(".osbuild-publish.lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(RepoLock(f))
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Refuse a push that names another repository than the served one.
pub fn check_served(requested: &str, served: &Path) -> Result<()> {
    let same = match (Path::new(requested).canonicalize(), served.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        anyhow::bail!(
            "repository {requested} is not served here; push to {}",
            served.display()
        );
    }
    Ok(())
}

/// Run one receive as a command does (`osbuild receive`, `ostree-receive-1`): check the
/// repository against `served` when the server restricts it, report to `log`, and return
/// the protocol's exit status.
pub fn run(args: &ReceiveArgs, served: Option<&Path>, policy: &Policy, log: &mut dyn Write) -> u32 {
    let result = (|| {
        if let Some(served) = served {
            check_served(&args.repo, served)?;
        }
        receive(Path::new(&args.repo), args, policy, log)
    })();
    if let Err(e) = &result {
        let _ = writeln!(log, "error: {e:#}");
    }
    exit_status(&result)
}

/// The exit status for a receive result, and the message to print for an error.
pub fn exit_status(result: &Result<Vec<RefUpdate>>) -> u32 {
    match result {
        Ok(_) => EXIT_OK,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => EXIT_USAGE,
        Err(_) => EXIT_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_protocol_arguments() {
        let a =
            ReceiveArgs::parse_command("ostree-receive-1 -n /srv/repo http://127.0.0.1:4000 a/b c")
                .unwrap();
        assert!(a.dry_run && !a.force && a.update_summary);
        assert_eq!(a.repo, "/srv/repo");
        assert_eq!(a.url, "http://127.0.0.1:4000");
        assert_eq!(a.refs, ["a/b", "c"]);
        let a = ReceiveArgs::parse_command("/usr/bin/ostree-receive --no-update -f repo http://x")
            .unwrap();
        assert!(a.force && !a.update_summary && a.refs.is_empty());
    }

    #[test]
    fn refuses_other_commands_and_bad_usage() {
        let e = ReceiveArgs::parse_command("bash -c id").unwrap_err();
        assert!(e.to_string().contains("not allowed"), "{e}");
        assert!(ReceiveArgs::parse_command("ostree-receive-1 /repo").is_err());
        assert!(ReceiveArgs::parse_command("ostree-receive-1 --evil /r http://x").is_err());
        assert!(ReceiveArgs::parse_command("ostree-receive-1 'unterminated").is_err());
    }
}
