//! The SSH push listener: a russh server that allows exactly what the ostree-push protocol
//! needs, a loopback remote forward and `ostree-receive-1`/`ostree-receive`, and refuses
//! and logs everything else.

mod authorized_keys;

use crate::receive::{self, ExitStatus, Policy, ReceiveArgs, UsageError};
use anyhow::{Context, Result};
use authorized_keys::AuthorizedKey;
use russh::keys::{Algorithm, PrivateKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Environment variables a client may set; anything else is refused.
const ENV_WHITELIST: &[&str] = &["LANG", "LANGUAGE", "TERM"];

/// How the SSH listener is set up.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// OpenSSH private host key; generated (ed25519) if missing.
    pub host_key: PathBuf,
    /// OpenSSH authorized_keys file of the users who may push.
    pub authorized_keys: PathBuf,
    /// The served repository: the only path pushes may name.
    pub repo: PathBuf,
    /// What pushes may do.
    pub policy: Policy,
}

#[derive(Debug)]
struct Shared {
    repo: PathBuf,
    keys: Vec<AuthorizedKey>,
    policy: Policy,
    /// Told after each push that landed.
    publisher: Option<crate::s3::Publisher>,
}

/// A bound SSH listener.
pub struct SshServer {
    listener: TcpListener,
    config: Arc<russh::server::Config>,
    shared: Arc<Shared>,
}

/// Load the host key, generating it in OpenSSH format if the file does not exist.
fn load_or_generate_host_key(path: &Path) -> Result<PrivateKey> {
    if !path.exists() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("generating an ed25519 host key: {e}"))?;
        let text = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| anyhow::anyhow!("encoding the host key: {e}"))?;
        let staging = osbuild_core::fsutil::Staging::new(path)?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(staging.path())
                .with_context(|| format!("writing host key {}", path.display()))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing host key {}", path.display()))?;
        }
        staging.commit()?;
        tracing::warn!("generated SSH host key {}", path.display());
        return Ok(key);
    }
    russh::keys::load_secret_key(path, None)
        .map_err(|e| anyhow::anyhow!("loading SSH host key {}: {e}", path.display()))
}

impl std::fmt::Debug for SshServer {
    // russh's config holds the host key: leave it out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshServer")
            .field("listener", &self.listener)
            .field("repo", &self.shared.repo)
            .finish_non_exhaustive()
    }
}

impl SshServer {
    /// Load keys and bind the listener; every failure names the file or address.
    pub async fn bind(opts: &SshOptions, publisher: Option<crate::s3::Publisher>) -> Result<Self> {
        let host_key = load_or_generate_host_key(&opts.host_key)?;
        let keys = authorized_keys::load(&opts.authorized_keys)?;
        let repo = opts
            .repo
            .canonicalize()
            .with_context(|| format!("resolving repository path {}", opts.repo.display()))?;
        let config = russh::server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![host_key],
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::from_millis(0)),
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        };
        let listener = TcpListener::bind(opts.listen).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "cannot listen for SSH on {}: the port is already in use; pick another --ssh port",
                    opts.listen
                )
            } else {
                anyhow::anyhow!("cannot listen for SSH on {}: {e}", opts.listen)
            }
        })?;
        Ok(SshServer {
            listener,
            config: Arc::new(config),
            shared: Arc::new(Shared {
                repo,
                keys,
                policy: opts.policy.clone(),
                publisher,
            }),
        })
    }

    /// The address the listener is bound to (the port chosen, when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the SSH listener's address")
    }

    /// Accept connections until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("ssh: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                shared: self.shared.clone(),
                peer,
                user: String::new(),
                key: None,
                forwards: HashMap::new(),
                channels: HashMap::new(),
            };
            let config = self.config.clone();
            tokio::spawn(async move {
                match russh::server::run_stream(config, stream, conn).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::info!("ssh: session from {peer} ended: {e:#}");
                        }
                    }
                    Err(e) => tracing::info!("ssh: handshake with {peer} failed: {e:#}"),
                }
            });
        }
    }
}

/// Why an exec request does not run a receive.
#[derive(Debug)]
enum Refusal {
    /// Not a receiver command at all: refused like a shell, and logged.
    NotAllowed,
    /// A receiver command that cannot run: it ends with this status and message.
    Exit(ExitStatus, String),
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    user: String,
    key: Option<AuthorizedKey>,
    /// Allocated loopback port -> (address the client asked for, accept loop).
    forwards: HashMap<u32, (String, JoinHandle<()>)>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // No forward outlives its session.
        for (_, (_, task)) in self.forwards.drain() {
            task.abort();
        }
    }
}

impl Connection {
    fn refuse(&self, what: &str) {
        tracing::warn!("ssh: refused {what} from {}@{}", self.user, self.peer);
    }

    fn find_key(&self, key: &russh::keys::PublicKey) -> Option<AuthorizedKey> {
        let ip: Option<IpAddr> = Some(self.peer.ip());
        self.shared
            .keys
            .iter()
            .find(|k| k.key.key_data() == key.key_data() && k.allows_from(ip))
            .cloned()
    }

    /// Decide what an exec request runs: a receive, or a refusal.
    fn plan(&self, command: &str) -> std::result::Result<ReceiveArgs, Refusal> {
        if let Some(forced) = self.key.as_ref().and_then(|k| k.command.as_deref()) {
            // A forced command can only be the receiver itself (as `osbuild receive` under
            // OpenSSH); the client's command then supplies the protocol arguments.
            let first = shell_words::split(forced)
                .ok()
                .and_then(|w| w.first().cloned())
                .unwrap_or_default();
            let is_osbuild = Path::new(&first).file_name() == Some("osbuild".as_ref());
            if !is_osbuild && !receive::is_receiver(&first) {
                return Err(Refusal::Exit(
                    ExitStatus::Error,
                    format!("forced command {forced:?} cannot run on this server"),
                ));
            }
        }
        let args = ReceiveArgs::parse_command(command).map_err(|e| match e {
            UsageError::NotAllowed { .. } => Refusal::NotAllowed,
            UsageError::Usage(_) => Refusal::Exit(ExitStatus::Usage, e.to_string()),
        })?;
        receive::check_served(&args.repo, &self.shared.repo)
            .map_err(|e| Refusal::Exit(ExitStatus::Error, format!("{e:#}")))?;
        // The receiver may only pull from this session's own tunnel.
        let port = args
            .url
            .strip_prefix("http://127.0.0.1:")
            .or_else(|| args.url.strip_prefix("http://localhost:"))
            .and_then(|rest| rest.trim_end_matches('/').parse::<u32>().ok());
        match port {
            Some(p) if self.forwards.contains_key(&p) => Ok(args),
            _ => Err(Refusal::Exit(
                ExitStatus::Error,
                format!("URL {} is not this session's forwarded port", args.url),
            )),
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = anyhow::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.find_key(offer.public_key) {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
        .inspect(|a| {
            if matches!(a, Auth::Reject { .. }) {
                tracing::warn!("ssh: unknown key offered by {user}@{}", self.peer);
            }
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        self.user = user.to_string();
        match self.find_key(key.public_key) {
            Some(k) => {
                tracing::info!(
                    "ssh: {user}@{} authenticated (authorized_keys line {})",
                    self.peer,
                    k.line
                );
                self.key = Some(k);
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!("direct-tcpip to {host}:{port}"));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("an X11 channel");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!("direct-streamlocal to {path}"));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let allowed = self.key.as_ref().is_some_and(|k| k.port_forwarding);
        if !allowed || *port != 0 || !matches!(address, "localhost" | "127.0.0.1") {
            self.refuse(&format!("tcpip-forward {address}:{port}"));
            return Ok(false);
        }
        // Bound on loopback only, whatever name the client used.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for a remote forward")?;
        let allocated = u32::from(
            listener
                .local_addr()
                .context("reading a forward's loopback port")?
                .port(),
        );
        *port = allocated;
        let handle = session.handle();
        let name = address.to_string();
        let task_name = name.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut tcp, origin)) = listener.accept().await {
                let handle = handle.clone();
                let name = task_name.clone();
                tokio::spawn(async move {
                    // OpenSSH clients check that the channel names exactly the forward they
                    // asked for.
                    match handle
                        .channel_open_forwarded_tcpip(
                            name,
                            allocated,
                            origin.ip().to_string(),
                            u32::from(origin.port()),
                        )
                        .await
                    {
                        Ok(ch) => {
                            let mut stream = ch.into_stream();
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut stream).await;
                        }
                        Err(e) => {
                            tracing::warn!("ssh: opening a forwarded-tcpip channel failed: {e}")
                        }
                    }
                });
            }
        });
        self.forwards.insert(allocated, (name, task));
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(match self.forwards.remove(&port) {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        })
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if ENV_WHITELIST.contains(&name) || name.starts_with("LC_") {
            session.channel_success(channel)?;
        } else {
            self.refuse(&format!("env {name}"));
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("a pty");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse("a shell");
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(&format!("subsystem {name}"));
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse("agent forwarding");
        session.channel_failure(channel)?;
        Ok(false)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        let planned = self.plan(&command);
        let handle = session.handle();
        let args = match planned {
            Ok(args) => args,
            Err(Refusal::NotAllowed) => {
                self.refuse(&format!("command {command:?}"));
                session.channel_failure(channel)?;
                return Ok(());
            }
            Err(Refusal::Exit(status, msg)) => {
                tracing::warn!("ssh: {}@{}: {command:?}: {msg}", self.user, self.peer);
                session.channel_success(channel)?;
                tokio::spawn(async move {
                    let _ = handle
                        .extended_data(channel, 1, format!("osbuild: {msg}\n"))
                        .await;
                    finish(&handle, channel, status).await;
                });
                return Ok(());
            }
        };
        tracing::info!("ssh: {}@{} runs {command:?}", self.user, self.peer);
        session.channel_success(channel)?;
        let shared = self.shared.clone();
        let publisher = shared.publisher.clone();
        tokio::spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let job = tokio::task::spawn_blocking(move || {
                let mut out = ChannelWriter(tx);
                receive::run(&args, Some(&shared.repo), &shared.policy, &mut out)
            });
            while let Some(chunk) = rx.recv().await {
                let _ = handle.extended_data(channel, 1, chunk).await;
            }
            let status = job.await.unwrap_or(ExitStatus::Error);
            if status == ExitStatus::Ok {
                if let Some(p) = &publisher {
                    p.notify();
                }
            }
            finish(&handle, channel, status).await;
        });
        Ok(())
    }
}

async fn finish(handle: &russh::server::Handle, channel: ChannelId, status: ExitStatus) {
    let _ = handle
        .exit_status_request(channel, u32::from(status.code()))
        .await;
    let _ = handle.eof(channel).await;
    let _ = handle.close(channel).await;
}

/// Sends what the receiver writes to the client's stderr.
struct ChannelWriter(tokio::sync::mpsc::UnboundedSender<Vec<u8>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
