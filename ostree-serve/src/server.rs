//! The listener around the router: bounded connections, header and stall timeouts,
//! optional TLS and basic auth, access log lines and graceful shutdown.

use crate::access_log::AccessLog;
use crate::auth::Htpasswd;
use crate::config::{ServeConfig, Settings};
use crate::http::{router_with, RouterOptions};
use anyhow::{Context, Result};
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

/// How long in-flight requests may still run after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Request heads larger than this are refused (431): a repository client sends a few
/// hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Bind the listener, with an error that names the address when it is taken.
async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot listen on {addr}: the port is already in use; stop the other server or pick another --http port")
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// What every connection shares.
struct Shared {
    router: Router,
    auth: Option<Htpasswd>,
    log: Option<AccessLog>,
    header_timeout: Duration,
    send_timeout: Duration,
    tls: Option<TlsAcceptor>,
}

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    threads: usize,
}

impl std::fmt::Debug for Server {
    // The router and the TLS acceptor have no Debug; the address says which server it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.shared.tls.is_some())
            .field("max_connections", &self.max_connections)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serve `repo` (which must be archive mode) on `addr` with the default settings and
    /// no access log: the form for embedding and tests.
    pub async fn new(repo: &Path, addr: SocketAddr) -> Result<Self> {
        Self::from_config(&ServeConfig {
            repo: Some(repo.to_path_buf()),
            http: Some(addr),
            access_log: Some(false),
            ..Default::default()
        })
        .await
    }

    /// Check the settings, then everything they name (repository, certificate,
    /// htpasswd), and bind the listener last, so a bad setting never leaves a
    /// half-started server.
    pub async fn from_config(cfg: &ServeConfig) -> Result<Self> {
        Self::from_settings(&cfg.resolve()?).await
    }

    /// [`Server::from_config`] for settings already resolved.
    async fn from_settings(cfg: &Settings) -> Result<Self> {
        osbuild_core::repo::open_archive(&cfg.repo)?;
        let router = router_with(
            &cfg.repo,
            &RouterOptions {
                cache_bytes: cfg.cache_bytes,
            },
        )?;
        let tls = match &cfg.tls {
            Some(files) => Some(crate::tls::acceptor(&files.cert, &files.key)?),
            None => None,
        };
        let auth = cfg.htpasswd.as_deref().map(Htpasswd::load).transpose()?;
        raise_fd_limit(cfg.max_connections);
        let listener = bind(cfg.http).await?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                router,
                auth,
                log: cfg.access_log.then(AccessLog::stdout),
                header_timeout: cfg.header_timeout,
                send_timeout: cfg.send_timeout,
                tls,
            }),
            max_connections: cfg.max_connections,
            threads: cfg.threads,
        })
    }

    /// The address the listener is bound to (the port chosen, when asked for port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .context("reading the listener's address")
    }

    /// Serve until `shutdown` completes, then stop accepting, let in-flight requests finish
    /// (for up to 30 s) and close idle connections.
    ///
    /// Connections are served by `threads` threads, each with its own single-threaded
    /// event loop accepting from the shared socket, the way nginx runs one worker per
    /// core: a connection stays on one thread, so no request pays for waking or stealing
    /// across threads. Measured with bench/serve.sh on 2 cores, tokio's work-stealing
    /// scheduler served about two thirds of the small-object requests per second that
    /// this does.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let Server {
            listener,
            shared,
            max_connections,
            threads,
        } = self;
        let listener = listener
            .into_std()
            .context("taking the listening socket off the caller's runtime")?;
        let slots = Arc::new(Semaphore::new(max_connections));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<()>>();
        let mut started = 0;
        let mut failure = None;
        for i in 0..threads {
            let spawned = listener
                .try_clone()
                .context("duplicating the listening socket")
                .and_then(|listener| {
                    let (shared, slots, stop, done) = (
                        shared.clone(),
                        slots.clone(),
                        stop_rx.clone(),
                        done_tx.clone(),
                    );
                    std::thread::Builder::new()
                        .name(format!("serve-{i}"))
                        .spawn(move || {
                            let result = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .context("starting a server thread's event loop")
                                .and_then(|rt| {
                                    rt.block_on(accept_loop(listener, shared, slots, stop))
                                });
                            let _ = done.send(result);
                        })
                        .context("starting a server thread")
                });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop((listener, done_tx, shared));
        if failure.is_none() {
            // A thread that ends before shutdown has failed: stop the others too.
            tokio::select! {
                () = shutdown => {}
                Some(result) = done_rx.recv() => {
                    started -= 1;
                    failure = Some(result.err().unwrap_or_else(|| anyhow::anyhow!("a server thread stopped")));
                }
            }
        }
        let _ = stop_tx.send(true);
        for _ in 0..started {
            match done_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    failure.get_or_insert(e);
                }
                None => {
                    failure.get_or_insert_with(|| anyhow::anyhow!("a server thread panicked"));
                    break;
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// One thread's share of the serving: accept, serve, and on `stop` drain.
async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listening socket")?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let stopped = async move {
        // A dropped sender means the server is going away too.
        let _ = stop.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopped);
    loop {
        // Past the limit, clients wait in the kernel's listen queue, not in memory here.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("connection limiter closed")?,
            () = &mut stopped => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut stopped => break,
        };
        while conns.try_join_next().is_some() {}
        let shared = shared.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            serve_connection(shared, tcp, peer, watcher).await;
            drop(slot);
        });
    }
    drop(listener);
    // Idle connections close now; busy ones after their current response.
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}: closing them");
    }
    conns.shutdown().await;
    Ok(())
}

/// Keep accepting after transient errors; back off when out of descriptors or memory.
async fn accept_error(e: std::io::Error) {
    use rustix::io::Errno;
    tracing::warn!("accepting a connection: {e}");
    let exhausted = [Errno::MFILE, Errno::NFILE, Errno::NOMEM, Errno::NOBUFS]
        .iter()
        .any(|n| e.raw_os_error() == Some(n.raw_os_error()));
    if exhausted {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Let the process hold the connections it is configured for: raise the soft file
/// descriptor limit toward the hard one (often 1024 by default).
fn raise_fd_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    let lim = getrlimit(Resource::Nofile);
    let Some(cur) = lim.current else { return };
    if cur >= want {
        return;
    }
    let new = lim.maximum.map_or(want, |max| want.min(max));
    if new > cur {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(new),
                maximum: lim.maximum,
            },
        );
    }
    if new < want {
        tracing::warn!(
            "the open file limit ({new}) is low for --max-connections {max_connections}; raise it (LimitNOFILE=) or lower --max-connections"
        );
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) {
    // Small responses go out at once rather than waiting for an ACK (Nagle).
    let _ = tcp.set_nodelay(true);
    let io = Stall::new(tcp, shared.send_timeout);
    let svc_shared = shared.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = svc_shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(shared, peer, req).await) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.header_timeout)
        .max_header_size(MAX_HEAD_BYTES);
    let result = match &shared.tls {
        None => {
            watcher
                .watch(http.serve_connection(TokioIo::new(io), service))
                .await
        }
        Some(acceptor) => {
            // The handshake is bounded like a request head, so it cannot be trickled either.
            let tls = match tokio::time::timeout(shared.header_timeout, acceptor.accept(io)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake with {peer}: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with {peer}: timed out");
                    return;
                }
            };
            watcher
                .watch(http.serve_connection(TokioIo::new(tls), service))
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!("connection from {peer}: {e}");
    }
}

/// One request: basic auth (if configured), then the router, then the access log line.
async fn handle(shared: Arc<Shared>, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let start = std::time::Instant::now();
    let req = req.map(Body::new);
    let line = shared
        .log
        .as_ref()
        .map(|_| crate::access_log::RequestLine::of(&req, peer));
    let (resp, user) = match authorize(&shared, req.headers()).await {
        Ok(user) => {
            use tower::ServiceExt;
            let resp = match shared.router.clone().oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            (resp, user)
        }
        Err(resp) => (resp, None),
    };
    if let (Some(log), Some(line)) = (&shared.log, line) {
        log.write(line, user.as_deref(), &resp, start.elapsed());
    }
    resp
}

/// The authenticated user (if auth is on), or the 401 response.
async fn authorize(
    shared: &Shared,
    headers: &axum::http::HeaderMap,
) -> Result<Option<String>, Response<Body>> {
    let Some(auth) = &shared.auth else {
        return Ok(None);
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.as_bytes();
        let ok = auth.check_cached(value) || {
            // bcrypt takes milliseconds: keep it off the threads that serve files.
            let auth = auth.clone();
            let owned = value.to_vec();
            tokio::task::spawn_blocking(move || auth.check(&owned))
                .await
                .unwrap_or(false)
        };
        if ok {
            return Ok(crate::auth::user_of(value));
        }
    }
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"osbuild\", charset=\"UTF-8\""),
    );
    Err(resp)
}

/// A stream that fails with `TimedOut` once no byte has moved in either direction for
/// `timeout` while it is waited on. This bounds slow readers (a response nobody drains)
/// and stalled request bodies, without cutting long downloads that keep progressing.
struct Stall<S> {
    inner: S,
    timeout: Duration,
    last_progress: Instant,
    // Re-armed only when it fires, so progress costs a clock read, not a timer update.
    timer: Pin<Box<Sleep>>,
}

impl<S> Stall<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        let now = Instant::now();
        Stall {
            inner,
            timeout,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Called when the inner stream is not ready: an error once the stall has lasted
    /// `timeout`, otherwise keep waiting (with the timer registered).
    /// Note progress after a write, or check the stall timer when the write must wait.
    fn after_write(
        &mut self,
        cx: &mut TaskContext<'_>,
        r: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_progress = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }

    fn check_stall(&mut self, cx: &mut TaskContext<'_>) -> std::io::Result<()> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let deadline = self.last_progress + self.timeout;
            if Instant::now() >= deadline {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no data moved within the send timeout",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stall<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_progress = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stall<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => match this.check_stall(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            other => other,
        }
    }
}

/// `osbuild serve`: serve as configured until Ctrl-C or SIGTERM.
pub async fn serve_config(cfg: &ServeConfig) -> Result<()> {
    let settings = cfg.resolve()?;
    let server = Server::from_settings(&settings).await?;
    let addr = server.local_addr()?;
    eprintln!(
        "Serving {} at {}{}",
        settings.repo.display(),
        settings.url(addr),
        if settings.htpasswd.is_some() {
            " (basic auth)"
        } else {
            ""
        }
    );
    let publisher = settings.publish.clone().map(|opts| {
        eprintln!("Publishing every change to {}", opts.to);
        crate::s3::Publisher::start(settings.repo.clone(), opts)
    });
    let ssh = match &settings.ssh {
        Some(opts) => {
            let ssh = crate::ssh::SshServer::bind(opts, publisher).await?;
            eprintln!("Accepting pushes over SSH on {}", ssh.local_addr()?);
            Some(ssh)
        }
        None => None,
    };
    // One signal stops both listeners.
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });
    match ssh {
        Some(ssh) => {
            let (http, ssh) = tokio::join!(server.run(stopped(rx.clone())), ssh.run(stopped(rx)));
            http.and(ssh)
        }
        None => server.run(stopped(rx)).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // Virtual time: the runtime jumps the clock forward whenever every task waits.

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut s = Stall::new(server, Duration::from_secs(10));
        let start = Instant::now();
        let err = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut s = Stall::new(server, Duration::from_secs(10));
        let err = s.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_download_is_not_cut() {
        let (mut client, server) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 1024 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                got += client.read(&mut buf).await.unwrap();
            }
        });
        let mut s = Stall::new(server, Duration::from_secs(10));
        let start = Instant::now();
        s.write_all(&[0u8; 1024]).await.unwrap();
        // Far longer than the timeout in all, but never 10 s without progress.
        assert!(start.elapsed() > Duration::from_secs(100));
        reader.await.unwrap();
    }
}
