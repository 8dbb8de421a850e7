//! Alerts for the operator: each is one log event (`event="alert"`), a count per day in the
//! store (`backstop status`) and, with `[alerts] webhook`, a JSON POST to that URL.
//!
//! Responsible for: raising an alert and delivering it to the webhook in the background (a
//! webhook that is down delays nothing; its failure is logged). Not responsible for: deciding
//! when something is alarming (the watches do).

use crate::config::Config;
use crate::store::Store;
use crate::telemetry::Event;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for the webhook.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// One alert.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    /// What kind: `sender_held`, `sender_released`, ...
    pub kind: &'static str,
    /// What it is about (an address, an IP, a destination).
    pub subject: String,
    /// Why, for people.
    pub detail: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The gateway that raised it.
    pub host: String,
}

/// Every kind of alert, as counted per day (`backstop status`).
pub const KINDS: [&str; 9] = [
    "sender_held",
    "sender_released",
    "dnsbl_listed",
    "dnsbl_delisted",
    "blocked_by_destination",
    "store_degraded",
    "store_recovered",
    "backend_down",
    "backend_up",
];

/// Raises alerts.
pub struct Alerts {
    cfg: Arc<Config>,
    store: Arc<dyn Store>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Alerts {
    /// Alerts per `cfg.alerts`, counted per day in `store`.
    pub fn new(cfg: Arc<Config>, store: Arc<dyn Store>) -> Alerts {
        Alerts {
            cfg,
            store,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Logs the alert, counts it, and sends it to the webhook, if any, in the background.
    pub fn raise(&self, kind: &'static str, subject: &str, detail: &str, at: u64) {
        Event::Alert {
            kind,
            subject,
            detail,
        }
        .emit();
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::store::daily::count(store.as_ref(), "alerts", &[kind], at).await
            {
                tracing::warn!(error = %e, "alert not counted: store failed");
            }
        });
        let Some(url) = self.cfg.alerts.webhook.clone() else {
            return;
        };
        let alert = Alert {
            kind,
            subject: subject.to_string(),
            detail: detail.to_string(),
            at,
            host: self.cfg.hostname.clone(),
        };
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = post(&client, &url, &alert).await {
                tracing::warn!(url, error = %e, kind, "alert not delivered to the webhook");
            }
        });
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    alert: &Alert,
) -> Result<(), String> {
    let body = serde_json::to_vec(alert).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(WEBHOOK_TIMEOUT, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    match resp.status().is_success() {
        true => Ok(()),
        false => Err(format!("answered {}", resp.status())),
    }
}
