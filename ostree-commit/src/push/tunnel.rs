//! The HTTP side of the tunnel: every `forwarded-tcpip` channel is one HTTP/1.1
//! connection from the receiver, answered by `osbuild serve`'s router. The receiver pulls
//! the repository at the root of its URL, the router serves it under `/repo/`, so each
//! request path gets that prefix. Responses are counted for the progress display.

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt;

/// What the receiver has fetched so far.
#[derive(Debug, Default)]
pub(super) struct Stats {
    objects: AtomicU64,
    bytes: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    /// Objects (`/objects/…`) served in full.
    pub(super) fn objects(&self) -> u64 {
        self.objects.load(Ordering::Relaxed)
    }

    /// Response body bytes sent, of every request.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// The repository served into the tunnel.
#[derive(Clone)]
pub(super) struct Tunnel {
    router: axum::Router,
    stats: Arc<Stats>,
}

impl Tunnel {
    pub(super) fn new(router: axum::Router) -> Self {
        Tunnel {
            router,
            stats: Arc::default(),
        }
    }

    pub(super) fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Serve HTTP/1.1 on one tunnelled connection until the receiver closes it.
    pub(super) async fn serve_connection<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| self.clone().handle(req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!("tunnelled HTTP connection ended: {e}");
        }
    }

    async fn handle<B>(self, req: Request<B>) -> Result<Response<Body>, Infallible>
    where
        B: hyper::body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        tracing::debug!("tunnel: {} {path}", parts.method);
        parts.uri = match under_repo(&parts.uri) {
            Some(uri) => uri,
            None => {
                let mut resp = Response::new(Body::empty());
                *resp.status_mut() = StatusCode::BAD_REQUEST;
                return Ok(resp);
            }
        };
        let is_get = parts.method == Method::GET;
        let req = Request::from_parts(parts, Body::new(body));
        let resp = match self.router.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        if is_get && resp.status() == StatusCode::OK && path.starts_with("/objects/") {
            self.stats.objects.fetch_add(1, Ordering::Relaxed);
        }
        let stats = self.stats.clone();
        Ok(resp.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                frame
            }))
        }))
    }
}

/// `/objects/ab/cd.filez?x` → `/repo/objects/ab/cd.filez?x`; `None` if not a path.
fn under_repo(uri: &Uri) -> Option<Uri> {
    let pq = uri.path_and_query()?.as_str();
    if !pq.starts_with('/') {
        return None;
    }
    format!("/repo{pq}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    #[test]
    fn paths_move_under_repo() {
        let u = |s: &str| under_repo(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(u("/summary").as_deref(), Some("/repo/summary"));
        assert_eq!(
            u("/objects/ab/cd.filez?x=1").as_deref(),
            Some("/repo/objects/ab/cd.filez?x=1")
        );
        assert_eq!(
            u("http://127.0.0.1:9/config").as_deref(),
            Some("/repo/config")
        );
        assert_eq!(u("*"), None);
    }

    #[tokio::test]
    async fn counts_objects_and_bytes_over_a_stream() {
        let router = axum::Router::new()
            .route("/repo/objects/{*p}", get(|| async { "0123456789" }))
            .route("/repo/summary", get(|| async { "sum" }));
        let tunnel = Tunnel::new(router);
        let stats = tunnel.stats();
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(tunnel.serve_connection(server));

        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(client))
                .await
                .unwrap();
        tokio::spawn(conn);
        for path in ["/summary", "/objects/ab/cd.filez", "/nothing"] {
            let req = Request::get(path).body(Body::empty()).unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            match path {
                "/summary" => assert_eq!(&body[..], b"sum"),
                "/objects/ab/cd.filez" => assert_eq!(&body[..], b"0123456789"),
                _ => assert_eq!(status, StatusCode::NOT_FOUND),
            }
        }
        assert_eq!(stats.objects(), 1);
        assert_eq!(stats.requests(), 3);
        assert!(stats.bytes() >= 13, "{}", stats.bytes());
    }
}
