//! The HTTP listener (`[web] addr`): `/metrics` for Prometheus, `/healthz` for load
//! balancers, the JSON API under `/api/`, and the dashboard at `/`.
//!
//! Responsible for: routing, who may ask (`[web] allow` networks for everything but
//! `/healthz`; the `[web] token` as well for admin actions), the metrics exposition (with the
//! gauges read at scrape time), readiness, and sampling the counters into the dashboard's time
//! series. Not responsible for: the decisions shown (each module records its own events) or the
//! actions taken (they call the same functions as the control socket and the CLI).

mod api;
mod dashboard;

use crate::config::{in_networks, unmapped};
use crate::control::Served;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::series::Series;
use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How often the counters are sampled for the time series.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// What the handlers use.
pub struct Web {
    /// The same parts the control socket serves, as of the last reload.
    pub current: Arc<arc_swap::ArcSwap<Served>>,
    /// The metrics recorder.
    pub metrics: Metrics,
    /// The counters' history.
    pub series: Mutex<Series>,
}

impl Web {
    /// The web side of a running gateway; its counters' history starts now.
    pub fn new(current: Arc<arc_swap::ArcSwap<Served>>, metrics: Metrics) -> Web {
        let mut series = Series::default();
        series.sample(current.load().clock.unix(), &metrics.tally().counters());
        Web {
            current,
            metrics,
            series: Mutex::new(series),
        }
    }
}

impl Web {
    /// What requests are answered from now (the configuration of the last reload).
    pub fn served(&self) -> Arc<Served> {
        self.current.load_full()
    }
}

type Shared = Arc<Web>;

/// The routes, with the access rules applied.
pub fn router(web: Shared) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/summary", get(api::summary))
        .route("/api/status", get(api::status))
        .route("/api/queue", get(api::queue))
        .route("/api/queue/retry-all", post(api::retry_all))
        .route("/api/queue/{id}", get(api::show).delete(api::delete))
        .route("/api/queue/{id}/{action}", post(api::queue_action))
        .route("/api/senders/held", get(api::held))
        .route("/api/senders/{sender}/{action}", post(api::sender_action))
        .route("/api/clients/blocked", get(api::blocked))
        .route("/api/clients/{client}/unblock", post(api::unblock))
        .route("/api/bounces/refused", get(api::refused))
        .route("/api/backends", get(api::backends))
        .route("/api/cache/{what}", get(api::cache).delete(api::cache))
        .route("/api/callout", get(api::backends))
        .layer(middleware::from_fn_with_state(web.clone(), access))
        .with_state(web)
}

/// Serves until `shutdown` turns true; samples the counters every [`SAMPLE_EVERY`] meanwhile.
pub fn serve(
    listener: TcpListener,
    web: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let sampler = tokio::spawn(sample(web.clone()));
    tokio::spawn(async move {
        let app = router(web).into_make_service_with_connect_info::<SocketAddr>();
        let stop = async move {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "web listener failed");
        }
        sampler.abort();
    })
}

async fn sample(web: Shared) {
    // the first sample was taken by Web::new
    let first = tokio::time::Instant::now() + SAMPLE_EVERY;
    let mut tick = tokio::time::interval_at(first, SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let now = web.served().clock.unix();
        let counters = web.metrics.tally().counters();
        web.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(now, &counters);
        web.metrics.upkeep();
    }
}

/// `/healthz` answers everyone; the rest only `[web] allow`; anything but a read also needs
/// the token.
async fn access(
    State(web): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let served = web.served();
    let cfg = &served.cfg.web;
    if !in_networks(&cfg.allow, peer.ip()) {
        let ip = unmapped(peer.ip());
        return refuse(StatusCode::FORBIDDEN, format!("{ip} is not in [web] allow"));
    }
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let Some(token) = &cfg.token else {
        let why = "admin actions are off: no [web] token is configured";
        return refuse(StatusCode::FORBIDDEN, why.into());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        let mut r = refuse(StatusCode::UNAUTHORIZED, "a valid token is needed".into());
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// Compares in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, why: String) -> Response {
    (status, axum::Json(json!({ "error": why }))).into_response()
}

/// Ready when the store answers (Redis, or this node's fallback while Redis is away: the node
/// still serves safely) and the spool can be written (the SMTP listeners are bound before this
/// one).
async fn healthz(State(web): State<Shared>) -> Response {
    let s = &web.served();
    let now = s.clock.unix();
    // a read: a load balancer's probe every few seconds must not cost a durable write
    let store = s.store.get("web:healthz", now).await.map(|_| ());
    let spool = s.spool.usable().await;
    let mut degraded: Vec<String> = s
        .backends
        .down()
        .iter()
        .map(|b| {
            let e = b.error.as_deref().unwrap_or("");
            format!("{} {} does not answer ({e})", b.role.as_str(), b.target)
        })
        .collect();
    if s.store.degraded() {
        degraded.push("the shared store is unreachable; this node runs on its own".into());
    }
    match (store, spool) {
        // still serving safely (what cannot be verified or relayed gets 451): ready, and says so
        (Ok(()), Ok(())) if !degraded.is_empty() => {
            let why = format!("ok, degraded: {}\n", degraded.join("; "));
            (StatusCode::OK, why).into_response()
        }
        (Ok(()), Ok(())) => (StatusCode::OK, "ok\n").into_response(),
        (store, spool) => {
            let mut why = String::new();
            if let Err(e) = store {
                why.push_str(&format!("store: {e}\n"));
            }
            if let Err(e) = spool {
                why.push_str(&format!("spool: {e}\n"));
            }
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

/// The Prometheus exposition, with the gauges read now.
async fn metrics(State(web): State<Shared>) -> Response {
    let s = &web.served();
    let status = s.status().await;
    let degraded = f64::from(u8::from(s.store.degraded()));
    web.metrics.with(|| {
        metrics::gauge!("backstop_store_degraded").set(degraded);
        match &status {
            Ok(status) => set_gauges(status),
            Err(e) => tracing::warn!(error = %e, "gauges not read: store failed"),
        }
    });
    let body = web.metrics.render();
    let ctype = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, ctype)], body).into_response()
}

fn set_gauges(status: &serde_json::Value) {
    use metrics::gauge;
    let q = &status["queue"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64;
    let held = n(&q["held"]);
    gauge!("backstop_queue_messages", "state" => "active").set(n(&q["messages"]) - held);
    gauge!("backstop_queue_messages", "state" => "held").set(held);
    for (status, key) in [
        ("queued", "rcpts_queued"),
        ("deferred", "rcpts_deferred"),
        ("failed", "rcpts_failed_kept"),
    ] {
        gauge!("backstop_queue_recipients", "status" => status).set(n(&q[key]));
    }
    let len = |k: &str| status[k].as_array().map_or(0, Vec::len) as f64;
    gauge!("backstop_senders_held").set(len("held_senders"));
    gauge!("backstop_clients_blocked").set(len("blocked_clients"));
    for b in status["backends"].as_array().into_iter().flatten() {
        // not checked yet: nothing known against it
        let up = f64::from(u8::from(b["up"].as_bool().unwrap_or(true)));
        let target = b["target"].as_str().unwrap_or("").to_string();
        match b["role"].as_str() {
            Some("callout") => gauge!("backstop_callout_backend_up", "target" => target).set(up),
            Some("directory") => gauge!("backstop_directory_up", "target" => target).set(up),
            _ => gauge!("backstop_next_hop_up", "target" => target).set(up),
        }
    }
}

#[cfg(test)]
mod tests;
