//! The exporter's HTTP server: `GET /metrics` (OpenMetrics when asked for, else the
//! Prometheus text format), `GET /healthz`, 404 for anything else.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::AbortHandle};
use tracing::{debug, warn};

use super::{encode, Format, MetricsSnapshot};

/// Produces the snapshot of one scrape. It runs on a blocking-task thread, so it may read
/// maps; it should not wait for locks a reload holds for long.
pub type SnapshotSource = Arc<dyn Fn() -> Result<MetricsSnapshot, ScrapeError> + Send + Sync>;

/// Why a scrape failed: the source's error or the encoder's, shown to the scraper as is.
pub type ScrapeError = Box<dyn std::error::Error + Send + Sync>;

/// What `/healthz` reports: `Err` with the reason when the daemon is not healthy (its
/// control loop stuck, say); answered 503 then.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// A client that has not sent its request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Connections served at once (a bound on the daemon's descriptors and memory).
pub const MAX_CONNECTIONS: usize = 64;
/// Time every connection gets to send a request before it may be closed to make room.
const EVICTION_GRACE: Duration = Duration::from_millis(200);

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A connection being served, as the accept loop sees it.
struct Conn {
    /// Accepted, or when its last request was answered.
    since: Instant,
    /// Answering a request now (never closed to make room then).
    busy: Arc<AtomicBool>,
    /// Ends its task, closing it (set once the task is spawned).
    abort: Option<AbortHandle>,
}

type Conns = Arc<Mutex<BTreeMap<u64, Conn>>>;

/// Takes a connection off the table when its task ends (also when aborted).
struct Registered {
    id: u64,
    conns: Conns,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Closes the connection that has waited longest without a request in progress, if it had
/// its grace time: idle and slowloris clients cannot hold every slot while a scrape waits.
fn evict_one(conns: &Conns) {
    let oldest = {
        let conns = conns.lock().unwrap_or_else(|e| e.into_inner());
        conns
            .values()
            .filter(|c| !c.busy.load(Ordering::Relaxed) && c.since.elapsed() >= EVICTION_GRACE)
            .filter_map(|c| c.abort.as_ref().map(|a| (c.since, a.clone())))
            .min_by_key(|(since, _)| *since)
    };
    if let Some((_, abort)) = oldest {
        debug!("metrics: all connections taken; closing the one idle longest");
        abort.abort();
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until the future is dropped. Each scrape
/// calls `source` on a blocking-task thread, so slow map reads never stall the runtime.
///
/// At most [`MAX_CONNECTIONS`] are served at once. When all are taken, a new client is still
/// accepted: the connection idle longest (no request in progress for at least
/// [`EVICTION_GRACE`]) is closed to make room, so clients that connect and send nothing, or
/// send their headers a byte at a time, cannot keep a scraper out.
pub async fn serve(listener: TcpListener, source: SnapshotSource, health: HealthCheck) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let conns: Conns = Arc::default();
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                warn!(%err, "metrics: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = loop {
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break slot;
            }
            evict_one(&conns);
            // An evicted connection's slot comes back as its task is dropped; when every
            // connection is busy or new, wait for one to finish or to outlive its grace.
            match tokio::time::timeout(EVICTION_GRACE, slots.clone().acquire_owned()).await {
                Ok(Ok(slot)) => break slot,
                Ok(Err(_)) => return, // the semaphore is never closed
                Err(_) => continue,
            }
        };
        next_id += 1;
        let id = next_id;
        let busy = Arc::new(AtomicBool::new(false));
        conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Conn {
                since: Instant::now(),
                busy: busy.clone(),
                abort: None,
            },
        );
        let registered = Registered {
            id,
            conns: conns.clone(),
        };
        let (source, health) = (source.clone(), health.clone());
        let task = tokio::spawn(async move {
            let _slot = slot;
            let registered = registered;
            let conns = registered.conns.clone();
            let service = service_fn(move |req| {
                let (source, health, busy, conns) =
                    (source.clone(), health.clone(), busy.clone(), conns.clone());
                async move {
                    busy.store(true, Ordering::Relaxed);
                    let response = respond(req, source, health).await;
                    if let Some(c) = conns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
                        c.since = Instant::now();
                    }
                    busy.store(false, Ordering::Relaxed);
                    response
                }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                debug!(%err, "metrics: connection ended with an error");
            }
        });
        if let Some(c) = conns.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            c.abort = Some(task.abort_handle());
        }
    }
}

async fn respond(
    req: Request<Incoming>,
    source: SnapshotSource,
    health: HealthCheck,
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
        "/healthz" => match health() {
            Ok(()) => reply(StatusCode::OK, TEXT_PLAIN, "ok\n"),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT_PLAIN,
                format!("unhealthy: {why}\n"),
            ),
        },
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
