//! Static file serving of the repository: GET and HEAD of files inside it, nothing else.

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

struct RepoRoot {
    /// Canonical path of the repository, so resolved files can be checked to lie inside it.
    root: PathBuf,
}

/// The router that serves the repository at `repo` under `/repo/`. Shared by `osbuild
/// serve` and the push tunnel.
pub fn router(repo: &Path) -> Result<Router> {
    let root = repo
        .canonicalize()
        .with_context(|| format!("resolving repository path {}", repo.display()))?;
    let state = Arc::new(RepoRoot { root });
    Ok(Router::new()
        .route("/repo/{*path}", get(serve_file).head(serve_file))
        .with_state(state))
}

/// Bind the HTTP listener, with an error that names the address when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("cannot listen on {addr}: the port is already in use; stop the other server or pick another --http port")
        } else {
            anyhow::anyhow!("cannot listen on {addr}: {e}")
        }
    })
}

/// A running server.
pub struct Server {
    listener: TcpListener,
    router: Router,
}

impl Server {
    /// Open the repository (which must be archive mode) and bind the listener.
    pub async fn new(repo: &Path, addr: SocketAddr) -> Result<Self> {
        osbuild_core::repo::open_archive(repo)?;
        let router = router(repo)?;
        let listener = bind(addr).await?;
        Ok(Server { listener, router })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serve until `shutdown` completes, then finish in-flight requests.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")
    }
}

/// Serve `repo` on `addr` until Ctrl-C or SIGTERM.
pub async fn serve(repo: &Path, addr: SocketAddr) -> Result<()> {
    let server = Server::new(repo, addr).await?;
    eprintln!(
        "Serving {} at http://{}/repo/",
        repo.display(),
        server.local_addr()?
    );
    server.run(shutdown_signal()).await
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

/// Map a URL path to a file inside the repository, refusing anything that could escape it.
fn resolve(root: &Path, url_path: &str) -> Result<PathBuf, StatusCode> {
    if url_path.contains('\0') || url_path.contains('\\') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let rel = Path::new(url_path);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(StatusCode::BAD_REQUEST);
    }
    let full = root.join(rel);
    // Symlinks inside the repo are fine as long as they resolve inside it.
    let real = full.canonicalize().map_err(|_| StatusCode::NOT_FOUND)?;
    if !real.starts_with(root) {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(real)
}

async fn serve_file(
    State(state): State<Arc<RepoRoot>>,
    method: Method,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let file_path = match resolve(&state.root, &path) {
        Ok(p) => p,
        Err(status) => return status.into_response(),
    };
    let file = match tokio::fs::File::open(&file_path).await {
        Ok(f) => f,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024))
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("config"), "x").unwrap();
        assert_eq!(resolve(&root, "config").unwrap(), root.join("config"));
        assert_eq!(resolve(&root, "../etc/passwd"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(resolve(&root, "/etc/passwd"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(resolve(&root, "a\\b"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(resolve(&root, "missing"), Err(StatusCode::NOT_FOUND));
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        assert_eq!(resolve(&root, "out/passwd"), Err(StatusCode::NOT_FOUND));
    }
}
