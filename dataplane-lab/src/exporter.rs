//! The exporter's HTTP server run in-process on a free loopback port, and a small HTTP
//! client for it.

use std::{net::SocketAddr, time::Duration};

use dataplane::metrics::http::{serve, SnapshotSource};

/// Per-request timeout of [`get`].
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// `dataplane::metrics::http::serve` on its own runtime; stops when dropped.
pub struct Exporter {
    /// Where it listens.
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Exporter {
    /// Serves `source` on a free loopback port.
    pub fn start(source: SnapshotSource) -> Exporter {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        runtime.spawn(serve(listener, source, std::sync::Arc::new(|| Ok(()))));
        Exporter {
            addr,
            _runtime: runtime,
        }
    }

    /// URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// An HTTP client that returns non-2xx answers instead of failing on them.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(HTTP_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into()
}

/// An HTTP answer.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, empty if absent.
    pub content_type: String,
    /// Body text.
    pub body: String,
}

/// GETs `url`, with an `Accept` header if given.
pub fn get(agent: &ureq::Agent, url: &str, accept: Option<&str>) -> Answer {
    let mut req = agent.get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.body_mut().read_to_string().expect("body");
    Answer {
        status: resp.status().as_u16(),
        content_type,
        body,
    }
}
