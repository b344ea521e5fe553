//! The SSH side of a push: connect, verify the host key, log in with a key, ask for the
//! remote forward, serve the tunnelled connections, run the receive command.

use super::console::{Console, Stream};
use super::known_hosts::{self, HostKeyStatus};
use super::tunnel::Tunnel;
use anyhow::{anyhow, bail, Context, Result};
use russh::client::{self, AuthResult, ChannelOpenHandle, Handle, Msg};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, Disconnect, MethodKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The forward address ostree-push asks for; OpenSSH names it back in every tunnelled
/// channel.
const FORWARD_ADDRESS: &str = "localhost";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Dead connections are noticed after three unanswered keepalives.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// How the server's host key is checked.
pub(super) struct HostKeyPolicy {
    pub host: String,
    pub port: u16,
    /// Files to look the key up in, in order.
    pub files: Vec<PathBuf>,
    /// Where a newly accepted key is recorded.
    pub learn_to: PathBuf,
    pub accept_new: bool,
}

impl HostKeyPolicy {
    fn verify(&self, key: &PublicKey) -> Result<()> {
        let name = known_hosts::host_entry_name(&self.host, self.port);
        let fingerprint = key.fingerprint(HashAlg::Sha256);
        let algorithm = key.algorithm();
        match known_hosts::check(&self.files, &self.host, self.port, key)? {
            HostKeyStatus::Known => Ok(()),
            HostKeyStatus::Unknown if self.accept_new => {
                known_hosts::learn(&self.learn_to, &self.host, self.port, key)?;
                eprintln!(
                    "Added the {algorithm} host key of {name} ({fingerprint}) to {}",
                    self.learn_to.display()
                );
                Ok(())
            }
            HostKeyStatus::Unknown => bail!(
                "the host key of {name} is not known: {algorithm} {fingerprint} is not in {}; \
                 if that is the server's key, run again with --accept-new-host-key to add it",
                self.files_display()
            ),
            HostKeyStatus::Changed { path, line } => bail!(
                "the host key of {name} has CHANGED: the server sent {algorithm} {fingerprint}, \
                 which differs from line {line} of {}. Someone could be intercepting the \
                 connection; if the server was reinstalled, remove the old key with \
                 `ssh-keygen -R '{name}' -f {}`",
                path.display(),
                path.display()
            ),
            HostKeyStatus::Revoked { path, line } => bail!(
                "the host key of {name} ({algorithm} {fingerprint}) is marked @revoked at line \
                 {line} of {}",
                path.display()
            ),
        }
    }

    fn files_display(&self) -> String {
        self.files
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

struct Client {
    policy: HostKeyPolicy,
    tunnel: Tunnel,
    forward_port: Arc<AtomicU32>,
}

impl client::Handler for Client {
    type Error = anyhow::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool> {
        match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                self.policy.verify(key)?;
                Ok(true)
            }
            PublicKeyOrCertificate::Certificate(_) => bail!(
                "{} presented a host certificate; only plain host keys are supported",
                self.policy.host
            ),
        }
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<()> {
        // Only the forward we asked for reaches the repository.
        let port = self.forward_port.load(Ordering::SeqCst);
        if connected_address != FORWARD_ADDRESS || port == 0 || connected_port != port {
            tracing::warn!(
                "refusing a tunnelled connection for {connected_address}:{connected_port}, \
                 which was not requested"
            );
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        tracing::debug!("tunnelled connection from {originator_address}:{originator_port}");
        reply.accept().await;
        tokio::spawn(self.tunnel.clone().serve_connection(channel.into_stream()));
        Ok(())
    }

    async fn server_channel_open_forwarded_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<()> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn server_channel_open_agent_forward(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<()> {
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RemoteExit {
    Status(u32),
    Signal(String),
    /// The channel closed without either.
    Unknown,
}

/// A logged-in SSH connection whose forwarded connections are served by the tunnel.
pub(super) struct Connection {
    handle: Handle<Client>,
    forward_port: Arc<AtomicU32>,
    host: String,
}

/// Where the keys to offer come from, in this order.
pub(super) struct Keys<'a> {
    pub identities: &'a [PathBuf],
    /// The directory holding `id_ed25519` etc., usually `~/.ssh`.
    pub ssh_dir: Option<&'a Path>,
}

/// Connect, verify the host and log in as `user`.
pub(super) async fn connect(
    policy: HostKeyPolicy,
    user: &str,
    keys: &Keys<'_>,
    tunnel: Tunnel,
) -> Result<Connection> {
    let (host, port) = (policy.host.clone(), policy.port);
    let mut config = client::Config {
        keepalive_interval: Some(KEEPALIVE),
        nodelay: true,
        ..Default::default()
    };
    // Ask for a host key type known_hosts already has, so a known host is not reported
    // as unknown just because the server prefers another type (as OpenSSH does).
    let known = known_hosts::known_algorithms(&policy.files, &host, port);
    if !known.is_empty() {
        let mut order: Vec<Algorithm> = config.preferred.key.to_vec();
        order.sort_by_key(|a| {
            !known
                .iter()
                .any(|k| k == a || (k.clone().is_rsa() && a.clone().is_rsa()))
        });
        config.preferred.key = order.into();
    }
    let forward_port = Arc::new(AtomicU32::new(0));
    let handler = Client {
        policy,
        tunnel,
        forward_port: forward_port.clone(),
    };
    let mut handle = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client::connect(Arc::new(config), (host.as_str(), port), handler),
    )
    .await
    .map_err(|_| anyhow!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))
    .and_then(|r| r)
    .with_context(|| format!("connecting to {host} port {port}"))?;
    authenticate(&mut handle, &host, user, keys).await?;
    Ok(Connection {
        handle,
        forward_port,
        host,
    })
}

/// Offer keys until one is accepted: `--identity` files, then the agent's, then the
/// default key files. Passphrase-protected files are skipped (an agent can hold them).
async fn authenticate(
    handle: &mut Handle<Client>,
    host: &str,
    user: &str,
    keys: &Keys<'_>,
) -> Result<()> {
    let mut auth = Auth {
        handle,
        user,
        tried: Vec::new(),
        skipped: Vec::new(),
        offered: Vec::new(),
        rsa_hash: None,
    };
    for path in keys.identities {
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => {
                if auth.offer_file(path, key).await? {
                    return Ok(());
                }
            }
            Err(russh::keys::Error::KeyIsEncrypted) => auth.skip_encrypted(path),
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("reading the identity {}", path.display()))
            }
        }
    }

    if let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") {
        let sock = PathBuf::from(sock);
        match AgentClient::connect_uds(&sock).await {
            Ok(mut agent) => match agent.request_identities().await {
                Ok(identities) => {
                    for identity in identities {
                        if let AgentIdentity::PublicKey { key, comment } = identity {
                            if auth.offer_agent(&mut agent, key, &comment).await? {
                                return Ok(());
                            }
                        }
                    }
                }
                Err(e) => auth
                    .skipped
                    .push(format!("ssh-agent at {} ({e})", sock.display())),
            },
            Err(e) => auth
                .skipped
                .push(format!("ssh-agent at {} ({e})", sock.display())),
        }
    }

    if let Some(dir) = keys.ssh_dir {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            match russh::keys::load_secret_key(&path, None) {
                Ok(key) => {
                    if auth.offer_file(&path, key).await? {
                        return Ok(());
                    }
                }
                Err(russh::keys::Error::KeyIsEncrypted) => auth.skip_encrypted(&path),
                Err(e) => auth.skipped.push(format!("{} ({e})", path.display())),
            }
        }
    }

    let skipped = if auth.skipped.is_empty() {
        String::new()
    } else {
        format!("; not usable: {}", auth.skipped.join(", "))
    };
    if auth.tried.is_empty() {
        bail!(
            "no SSH key to log in to {host} as {user}: pass --identity FILE, load a key into \
             ssh-agent, or create ~/.ssh/id_ed25519{skipped}"
        );
    }
    bail!(
        "{host} refused every key for user {user}; keys tried: {}{skipped}",
        auth.tried.join(", ")
    )
}

struct Auth<'a> {
    handle: &'a mut Handle<Client>,
    user: &'a str,
    tried: Vec<String>,
    skipped: Vec<String>,
    offered: Vec<PublicKey>,
    rsa_hash: Option<Option<HashAlg>>,
}

impl Auth<'_> {
    fn skip_encrypted(&mut self, path: &Path) {
        self.skipped.push(format!(
            "{} (passphrase-protected: load it into ssh-agent)",
            path.display()
        ));
    }

    /// Whether this key was already offered; records it otherwise.
    fn seen(&mut self, key: &PublicKey) -> bool {
        if self.offered.iter().any(|k| k.key_data() == key.key_data()) {
            return true;
        }
        self.offered.push(key.clone());
        false
    }

    /// The signature hash for RSA keys, asked of the server once.
    async fn hash_for(&mut self, algorithm: &Algorithm) -> Result<Option<HashAlg>> {
        if !algorithm.clone().is_rsa() {
            return Ok(None);
        }
        if self.rsa_hash.is_none() {
            let best = self
                .handle
                .best_supported_rsa_hash()
                .await
                .context("asking the server which RSA signatures it accepts")?;
            self.rsa_hash = Some(best.flatten());
        }
        Ok(self.rsa_hash.flatten())
    }

    async fn offer_file(&mut self, path: &Path, key: PrivateKey) -> Result<bool> {
        let public = key.public_key().clone();
        if self.seen(&public) {
            return Ok(false);
        }
        let hash = self.hash_for(&key.algorithm()).await?;
        self.tried
            .push(format!("{} ({})", path.display(), public.algorithm()));
        let result = self
            .handle
            .authenticate_publickey(self.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .context("sending the public key authentication")?;
        self.accepted(result)
    }

    async fn offer_agent(
        &mut self,
        agent: &mut AgentClient<tokio::net::UnixStream>,
        key: PublicKey,
        comment: &str,
    ) -> Result<bool> {
        if self.seen(&key) {
            return Ok(false);
        }
        let hash = self.hash_for(&key.algorithm()).await?;
        let name = if comment.is_empty() {
            key.fingerprint(HashAlg::Sha256).to_string()
        } else {
            comment.to_string()
        };
        self.tried
            .push(format!("ssh-agent key {name} ({})", key.algorithm()));
        let result = self
            .handle
            .authenticate_publickey_with(self.user, key, hash, agent)
            .await
            .map_err(|e| anyhow!("ssh-agent could not sign with key {name}: {e}"))?;
        self.accepted(result)
    }

    fn accepted(&self, result: AuthResult) -> Result<bool> {
        match result {
            AuthResult::Success => Ok(true),
            AuthResult::Failure {
                remaining_methods, ..
            } => {
                // The server may not take keys at all; say so rather than list keys.
                if !remaining_methods.is_empty()
                    && !remaining_methods.contains(&MethodKind::PublicKey)
                {
                    let names: Vec<&str> = remaining_methods.iter().map(<&str>::from).collect();
                    bail!(
                        "the server does not accept public keys for user {} (it offers: {})",
                        self.user,
                        names.join(", ")
                    );
                }
                Ok(false)
            }
        }
    }
}

impl Connection {
    /// Ask the server to forward a port of its own to us, as ostree-push does: address
    /// `localhost`, port chosen by the server. Returns that port.
    pub(super) async fn forward(&self) -> Result<u32> {
        let port = self
            .handle
            .tcpip_forward(FORWARD_ADDRESS, 0)
            .await
            .with_context(|| {
                format!(
                    "asking {} to forward a port back to us (does its sshd allow TCP \
                     forwarding?)",
                    self.host
                )
            })?;
        if port == 0 || port > u32::from(u16::MAX) {
            bail!(
                "{} accepted the port forward but allocated port {port}",
                self.host
            );
        }
        self.forward_port.store(port, Ordering::SeqCst);
        Ok(port)
    }

    /// Run `command` on a new session channel, passing its output to the console.
    pub(super) async fn run(&self, command: &str, console: &Console) -> Result<RemoteExit> {
        let what = || format!("running `{command}` on {}", self.host);
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .with_context(what)?;
        channel.exec(true, command).await.with_context(what)?;
        let mut exit = RemoteExit::Unknown;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => console.write(Stream::Stdout, &data),
                ChannelMsg::ExtendedData { data, ext: 1 } => console.write(Stream::Stderr, &data),
                ChannelMsg::ExitStatus { exit_status } => exit = RemoteExit::Status(exit_status),
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    exit = RemoteExit::Signal(format!("{signal_name:?}"))
                }
                ChannelMsg::Failure => {
                    console.flush();
                    bail!("{} refused to run `{command}`", self.host);
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        console.flush();
        Ok(exit)
    }

    pub(super) async fn disconnect(self) {
        // The work is done; a failure to say goodbye changes nothing.
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await;
    }
}
