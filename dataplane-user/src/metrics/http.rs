//! The exporter's HTTP server: `GET /metrics` (OpenMetrics when asked for, else the
//! Prometheus text format), `GET /healthz`, 404 for anything else.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::{encode, Format, MetricsSnapshot};

/// Produces the snapshot of one scrape. It runs on a blocking-task thread, so it may read
/// maps; it should not wait for locks a reload holds for long.
pub type SnapshotSource = Arc<dyn Fn() -> Result<MetricsSnapshot, ScrapeError> + Send + Sync>;

/// Why a scrape failed: the source's error or the encoder's, shown to the scraper as is.
pub type ScrapeError = Box<dyn std::error::Error + Send + Sync>;

/// A client that has not sent its request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections served at once; further clients wait in the listen backlog, holding no
/// descriptor of the daemon's (a Prometheus server needs one).
pub const MAX_CONNECTIONS: usize = 32;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Serves `/metrics` and `/healthz` on `listener` until the future is dropped. Each scrape
/// calls `source` on a blocking-task thread, so slow map reads never stall the runtime.
pub async fn serve(listener: TcpListener, source: SnapshotSource) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                warn!(%err, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| respond(req, source.clone()));
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                debug!(%err, "metrics: connection ended with an error");
            }
        });
    }
}

async fn respond(
    req: Request<Incoming>,
    source: SnapshotSource,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT_PLAIN, "use GET\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(resp);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let scraped = tokio::task::spawn_blocking(move || -> Result<String, ScrapeError> {
                Ok(encode(source()?, format)?)
            })
            .await;
            match scraped {
                Ok(Ok(body)) => reply(StatusCode::OK, format.content_type(), body),
                Ok(Err(err)) => {
                    warn!(error = %err, "metrics: scrape failed");
                    reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        TEXT_PLAIN,
                        format!("scrape failed: {err}\n"),
                    )
                }
                Err(err) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT_PLAIN,
                    format!("scrape failed: {err}\n"),
                ),
            }
        }
        "/healthz" => reply(StatusCode::OK, TEXT_PLAIN, "ok\n"),
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT_PLAIN,
            "not found; the exporter serves /metrics and /healthz\n",
        ),
    })
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
