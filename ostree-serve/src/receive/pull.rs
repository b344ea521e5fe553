//! Fetching what the pusher offers: its refs (from the summary over plain HTTP) and their
//! objects (libostree pulls through a transient remote pointing at the pusher's tunnel).

use super::Policy;
use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use osbuild_core::glib;
use osbuild_core::{gio, ostree};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Refs the receiver never takes from a client (generated metadata, as ostree-receive).
const EXCLUDED_REF_PREFIXES: &[&str] = &["appstream/", "appstream2/", "ostree-metadata"];

/// The name of the transient remote that points at the pusher's tunnel.
const PUSH_REMOTE: &str = "_receive";

/// The most a summary or ref file from the pusher may weigh.
const MAX_BODY: usize = 64 << 20;

/// How long the HTTP client waits for the pusher's tunnel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// To establish the connection.
    pub(super) connect: Duration,
    /// For the response head, and then for each piece of the body.
    pub(super) read: Duration,
}

/// The tunnel is on loopback: a connection is immediate, and the pusher serves a summary
/// from memory or disk, so minutes of silence mean it is stuck.
pub(super) const TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(10),
    read: Duration::from_secs(120),
};

/// The refs offered by the pusher, from its summary (all of them when `only` is empty).
pub(super) fn remote_refs(
    url: &str,
    only: &[String],
    timeouts: Timeouts,
) -> Result<BTreeMap<String, String>> {
    let base = url.trim_end_matches('/');
    let mut refs = BTreeMap::new();
    let summary = http_get(&format!("{base}/summary"), timeouts)?;
    if let Some(bytes) = &summary {
        let ty = glib::VariantTy::new("(a(s(taya{sv}))a{sv})").context("summary type")?;
        let v = glib::Variant::from_bytes_with_type(&glib::Bytes::from(bytes), ty);
        let list = v.child_value(0);
        for i in 0..list.n_children() {
            let entry = list.child_value(i);
            let name = entry.child_value(0).str().unwrap_or_default().to_string();
            let csum_bytes = entry.child_value(1).child_value(1).data_as_bytes();
            refs.insert(name, osbuild_core::hex(csum_bytes));
        }
    }
    let mut wanted = BTreeMap::new();
    if only.is_empty() {
        if summary.is_none() {
            anyhow::bail!("the pushed repository has no summary; name the refs to push");
        }
        for (name, rev) in refs {
            if !EXCLUDED_REF_PREFIXES.iter().any(|p| name.starts_with(p)) {
                wanted.insert(name, rev);
            }
        }
        return Ok(wanted);
    }
    for name in only {
        ostree::validate_rev(name).map_err(|e| anyhow::anyhow!("invalid ref {name:?}: {e}"))?;
        let rev = match refs.get(name) {
            Some(r) => r.clone(),
            // A summary older than the ref: the loose ref file is authoritative.
            None => match http_get(&format!("{base}/refs/heads/{name}"), timeouts)? {
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

/// GET from the pusher's tunnel (always plain HTTP on loopback); None on 404. Every
/// error names the URL.
pub(super) fn http_get(url: &str, timeouts: Timeouts) -> Result<Option<Vec<u8>>> {
    // Receives run on blocking threads (one per SSH session, or a command's main thread):
    // a small event loop of their own keeps them off the server's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting an event loop for HTTP")?;
    rt.block_on(get(url, timeouts))
        .with_context(|| format!("GET {url}"))
}

async fn get(url: &str, timeouts: Timeouts) -> Result<Option<Vec<u8>>> {
    let uri: hyper::Uri = url.parse().context("invalid URL")?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "not an http:// URL");
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(timeouts.connect));
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let resp = tokio::time::timeout(timeouts.read, client.get(uri))
        .await
        .map_err(|_| anyhow::anyhow!("no response within {:?}", timeouts.read))??;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut data = Vec::new();
    loop {
        let frame = tokio::time::timeout(timeouts.read, body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("the response stalled for {:?}", timeouts.read))?;
        let Some(frame) = frame else { break };
        if let Ok(chunk) = frame.context("reading the response")?.into_data() {
            anyhow::ensure!(
                data.len() + chunk.len() <= MAX_BODY,
                "the response is larger than {MAX_BODY} bytes"
            );
            data.extend_from_slice(&chunk);
        }
    }
    match status.as_u16() {
        200 => Ok(Some(data)),
        404 => Ok(None),
        s => anyhow::bail!("HTTP {s}"),
    }
}

/// Open the repository with a transient remote for the pusher's URL, kept in its own
/// remotes directory so the repository's config is never touched.
pub(super) fn open_with_push_remote(
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
    let conf_path = remotes_dir.join(format!("{PUSH_REMOTE}.conf"));
    std::fs::write(&conf_path, conf)
        .with_context(|| format!("writing the temporary remote {}", conf_path.display()))?;
    let repo: ostree::Repo = glib::Object::builder()
        .property("path", gio::File::for_path(repo_path))
        .property(
            "remotes-config-dir",
            remotes_dir
                .to_str()
                .with_context(|| format!("non-UTF-8 path {}", remotes_dir.display()))?,
        )
        .build();
    repo.open(gio::Cancellable::NONE)
        .with_context(|| format!("opening repository {}", repo_path.display()))?;
    Ok(repo)
}

/// Pull `revs` through the push remote; `gpg_verify` overrides the remote's setting.
pub(super) fn pull(
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

/// Check that `rev` carries a valid signature from a key of `keyring`.
pub(super) fn verify_signature(
    repo: &ostree::Repo,
    rev: &str,
    keyring: Option<&Path>,
) -> Result<()> {
    let keyring = keyring.context("--require-signature needs --trusted-keyring")?;
    let no_valid_signature = || {
        format!(
            "commit {rev} has no valid signature from {}",
            keyring.display()
        )
    };
    let result = repo
        .verify_commit_ext(
            rev,
            gio::File::NONE,
            Some(&gio::File::for_path(keyring)),
            gio::Cancellable::NONE,
        )
        .with_context(no_valid_signature)?;
    result
        .require_valid_signature()
        .with_context(no_valid_signature)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_that_never_answers_is_an_error_naming_the_url() {
        // Accepts, reads the request, and never answers (until the test ends).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/summary", silent.local_addr().unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = silent.accept().unwrap();
            let _ = std::io::Read::read(&mut conn, &mut [0u8; 1024]);
            let _ = done_rx.recv();
        });
        let err = http_get(
            &url,
            Timeouts {
                connect: Duration::from_secs(5),
                read: Duration::from_millis(200),
            },
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&url) && msg.contains("no response"), "{msg}");
        drop(done_tx);
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_names_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/summary");
        let msg = format!("{:#}", http_get(&url, TIMEOUTS).unwrap_err());
        assert!(msg.contains(&url), "{msg}");
    }
}
