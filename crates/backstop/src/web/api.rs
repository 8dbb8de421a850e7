//! The JSON API: what the gateway is doing (summary counters over the last hour and day, the
//! queue, held senders, blocked clients, bounces stopped lately, call-out health) and the
//! admin actions (retry, hold, release, delete, unblock).
//!
//! Responsible for: turning requests into calls of the functions the control socket and the
//! CLI use, and their answers into JSON with fitting status codes. Not responsible for: who
//! may call (`super::access`).

use super::Shared;
use crate::control::{self, parse_address};
use crate::store::StoreError;
use crate::telemetry::metrics::Reading;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

fn store_failed(e: StoreError) -> Response {
    let body = json!({ "error": format!("store: {e}") });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// An answer with `{"error": ...}` is `status`; any other is 200.
fn answer(v: Value, status: StatusCode) -> Response {
    match v.get("error") {
        Some(_) => (status, Json(v)).into_response(),
        None => Json(v).into_response(),
    }
}

/// `GET /api/status`.
pub async fn status(State(web): State<Shared>) -> Response {
    match web.served().status().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => store_failed(e),
    }
}

/// Counters that grew, grouped by metric: `{"backstop_rcpt_total": [{"result": ..,
/// "reason": .., "value": N}], ...}`.
pub fn grouped(readings: &[Reading]) -> Value {
    let mut out = Map::new();
    for r in readings.iter().filter(|r| r.value > 0) {
        let mut o: Map<String, Value> = r
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        o.insert("value".into(), r.value.into());
        let list = out.entry(r.name.clone()).or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.push(Value::Object(o));
        }
    }
    Value::Object(out)
}

/// `GET /api/summary`: this node's counters over the last hour and the last day (since it
/// started, when younger: `since`), and today's per-day totals from the store.
pub async fn summary(State(web): State<Shared>) -> Response {
    let now = web.served().clock.unix();
    let counters = web.metrics.tally().counters();
    let (hour, day, since) = {
        let series = web.series.lock().unwrap_or_else(|e| e.into_inner());
        (
            series.growth(&counters, now.saturating_sub(3600)),
            series.growth(&counters, now.saturating_sub(86_400)),
            series.first().unwrap_or(now),
        )
    };
    let status = match web.served().status().await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let today: Map<String, Value> = [
        "reports_today",
        "bounces_today",
        "alerts_today",
        "defence_today",
    ]
    .iter()
    .map(|k| (k.to_string(), status[*k].clone()))
    .collect();
    Json(json!({
        "host": web.served().cfg.hostname,
        "now": now,
        "since": since,
        "last_hour": grouped(&hour),
        "last_day": grouped(&day),
        "today": today,
    }))
    .into_response()
}

/// `GET /api/queue`: every message, held ones with why.
pub async fn queue(State(web): State<Shared>) -> Response {
    let s = &web.served();
    let now = s.clock.unix();
    let mut v = control::queue_request(&s.spool, now, &["list"]).await;
    control::why_held(&s.watch, &mut v, now).await;
    Json(v).into_response()
}

/// `GET /api/queue/{id}`.
pub async fn show(State(web): State<Shared>, Path(id): Path<String>) -> Response {
    let s = &web.served();
    let v = control::queue_request(&s.spool, s.clock.unix(), &["show", &id]).await;
    answer(v, StatusCode::NOT_FOUND)
}

/// `DELETE /api/queue/{id}` (admin).
pub async fn delete(State(web): State<Shared>, Path(id): Path<String>) -> Response {
    let s = &web.served();
    let v = control::queue_request(&s.spool, s.clock.unix(), &["delete", &id]).await;
    answer(v, StatusCode::NOT_FOUND)
}

/// `POST /api/queue/{id}/{retry|hold|release|delete}` (admin).
pub async fn queue_action(
    State(web): State<Shared>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if !matches!(action.as_str(), "retry" | "hold" | "release" | "delete") {
        let why = format!("{action:?}: expected retry, hold, release or delete");
        return answer(json!({ "error": why }), StatusCode::BAD_REQUEST);
    }
    let s = &web.served();
    let v = control::queue_request(&s.spool, s.clock.unix(), &[&action, &id]).await;
    answer(v, StatusCode::NOT_FOUND)
}

/// `POST /api/queue/retry-all` (admin).
pub async fn retry_all(State(web): State<Shared>) -> Response {
    let s = &web.served();
    Json(control::queue_request(&s.spool, s.clock.unix(), &["retry", "--all"]).await)
        .into_response()
}

/// `GET /api/senders/held`.
pub async fn held(State(web): State<Shared>) -> Response {
    let s = &web.served();
    match crate::senders::held_senders(s.store.as_ref(), s.clock.unix()).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .into_iter()
                .map(|(sender, h)| json!({ "sender": sender, "why": h.why, "since": h.since, "messages": h.messages }))
                .collect();
            Json(json!({ "held_senders": list })).into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// `POST /api/senders/{sender}/{hold|release}` (admin).
pub async fn sender_action(
    State(web): State<Shared>,
    Path((sender, action)): Path<(String, String)>,
) -> Response {
    let s = &web.served();
    let now = s.clock.unix();
    match action.as_str() {
        "release" => answer(
            control::sender_release(&s.watch, &sender, now).await,
            StatusCode::NOT_FOUND,
        ),
        "hold" => {
            let m = match parse_address(&sender) {
                Ok(m) => m,
                Err(e) => {
                    let why = format!("{sender:?}: {e}");
                    return answer(json!({ "error": why }), StatusCode::BAD_REQUEST);
                }
            };
            match s.watch.hold(&m, "held by the operator", now).await {
                Ok(h) => Json(json!({ "sender": m.to_string(), "held": h.messages.len() }))
                    .into_response(),
                Err(e) => store_failed(e),
            }
        }
        _ => {
            let why = format!("{action:?}: expected hold or release");
            answer(json!({ "error": why }), StatusCode::BAD_REQUEST)
        }
    }
}

/// `GET /api/clients/blocked`.
pub async fn blocked(State(web): State<Shared>) -> Response {
    let s = &web.served();
    match crate::harvest::blocked(s.store.as_ref(), s.clock.unix()).await {
        Ok(list) => {
            let list: Vec<Value> = list
                .into_iter()
                .map(|(c, until)| json!({ "client": c, "until": until }))
                .collect();
            Json(json!({ "blocked_clients": list })).into_response()
        }
        Err(e) => store_failed(e),
    }
}

/// `POST /api/clients/{client}/unblock` (admin; a network's `/` written `%2F`).
pub async fn unblock(State(web): State<Shared>, Path(client): Path<String>) -> Response {
    let s = &web.served();
    match crate::harvest::unblock(s.store.as_ref(), &client, s.clock.unix()).await {
        Ok(true) => {
            tracing::info!(client, "client unblocked by the operator");
            Json(json!({ "unblocked": client })).into_response()
        }
        Ok(false) => answer(
            json!({ "error": format!("{client} is not blocked") }),
            StatusCode::NOT_FOUND,
        ),
        Err(e) => store_failed(e),
    }
}

/// `GET /api/cache/{what}`: the call-out cache entry of an address (or of `@domain`: its
/// catch-all answer and cached addresses); `DELETE /api/cache/{what}` (admin): forget them.
pub async fn cache(
    State(web): State<Shared>,
    method: axum::http::Method,
    Path(what): Path<String>,
) -> Response {
    let s = &web.served();
    let action = match method {
        axum::http::Method::DELETE => "forget",
        _ => "show",
    };
    let v = control::cache_request(&s.verifier, action, &what, s.clock.unix()).await;
    if action == "forget" && v["forgot"] == false {
        let why = format!("{what}: nothing cached");
        return answer(json!({ "error": why }), StatusCode::NOT_FOUND);
    }
    answer(v, StatusCode::BAD_REQUEST)
}

/// `GET /api/bounces/refused`: the bounces this node stopped lately, newest first.
pub async fn refused(State(web): State<Shared>) -> Response {
    Json(json!({ "refused": web.served().guard.recent() })).into_response()
}

/// `GET /api/backends` (and its old name `/api/callout`): each next hop and call-out server,
/// whether it answers, and the probes made.
pub async fn backends(State(web): State<Shared>) -> Response {
    let s = &web.served();
    let backends = crate::status::backends_of(&s.cfg, &s.verifier, Some(&s.backends));
    Json(json!({ "backends": backends })).into_response()
}
