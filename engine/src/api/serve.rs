//! The HTTP/1 serve loop: accepts connections, applies the server-side limits a hostile or
//! broken client meets before any handler runs, and drains connections on shutdown.
//!
//! - A request head (method, path, headers) must arrive within `limits.header_read_timeout`
//!   and fit in [`MAX_REQUEST_HEAD_BYTES`] (else `431` and a close); a slow-loris client is
//!   disconnected, and an idle keep-alive connection is closed after the same time.
//! - A request body may pause at most `limits.body_read_timeout` between chunks, and must
//!   arrive whole within twice that plus its length at 16 KiB/s; a stalled or dripping body
//!   fails the extractor reading it, which answers `408 request_timeout` (`api/error.rs`). A
//!   `Content-Length` over the route's limit gets `413` before anything is read.
//! - Each connection is its own task, so idle or slow connections never block others.
//! - On shutdown the listener closes at once, idle connections close, requests in progress get
//!   [`SHUTDOWN_DRAIN`] to finish.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;
use tracing::{debug, warn};

/// Largest request line plus headers; a larger head gets `431` and the connection closes.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// How long requests in progress may run on after shutdown starts.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// How long a request's whole body may take before its length's share (twice
/// `limits.body_read_timeout`; `ApiBody` adds time for long bodies and answers `408` past it).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// Server-side timeouts (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then drains (bounded).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: CancellationToken,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %err, "accepting a connection failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(|body| Body::new(TimeoutBody::new(body_timeout, body)));
            request
                .extensions_mut()
                .insert(BodyDeadline(body_timeout * 2));
            app.clone().oneshot(request)
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => debug!("every connection closed"),
        () = tokio::time::sleep(SHUTDOWN_DRAIN) => {
            warn!("connections still open after {SHUTDOWN_DRAIN:?}; leaving them");
        }
    }
}
