//! `backstop status`: one screen for the operator, gathered from the spool and the store.
//!
//! Responsible for: collecting queue sizes, call-out backend health, held senders, blocked
//! clients, the DNSBL state of our IPs, and today's report, bounce and alert counts into one
//! JSON object, and rendering it for people. Not responsible for: any of the decisions behind them.

use crate::config::Config;
use crate::queue::{Spool, Status};
use crate::store::{Store, StoreError, daily};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Everything `backstop status` shows, as JSON.
pub async fn gather(
    cfg: &Config,
    store: &dyn Store,
    spool: &Spool,
    verifier: &crate::policy::Verifier,
    now: u64,
) -> Result<Value, StoreError> {
    let callout = callout(cfg, verifier);
    let held: Vec<Value> = crate::senders::held_senders(store, now)
        .await?
        .into_iter()
        .map(|(s, h)| json!({ "sender": s, "why": h.why, "since": h.since }))
        .collect();
    let blocked: Vec<Value> = crate::harvest::blocked(store, now)
        .await?
        .into_iter()
        .map(|(c, until)| json!({ "client": c, "until": until }))
        .collect();
    let mut dnsbl = Vec::new();
    for ip in &cfg.reputation.ips {
        for zone in &cfg.reputation.dnsbl {
            let state = store
                .get(&format!("reputation:dnsbl:{ip}:{zone}"), now)
                .await?;
            let state = state.unwrap_or_else(|| "not checked yet".into());
            dnsbl.push(json!({ "ip": ip.to_string(), "zone": zone, "state": state }));
        }
    }
    let reports = daily::today(store, "reports", &crate::notify::REPORT_LABELS, now).await?;
    let bounces = crate::backscatter::stats::today(store, now).await?;
    let alerts = daily::today(store, "alerts", &crate::alert::KINDS, now).await?;
    let defence = daily::today(store, "defence", &crate::harvest::COUNTED, now).await?;
    Ok(json!({
        "host": cfg.hostname,
        "day": backstop_proto::datetime::iso_date(now),
        "queue": queue(spool),
        "callout": callout,
        "held_senders": held,
        "blocked_clients": blocked,
        "dnsbl": dnsbl,
        "reports_today": counts(&reports),
        "bounces_today": counts(&bounces),
        "alerts_today": counts(&alerts),
        "defence_today": counts(&defence),
    }))
}

/// Each call-out internal server (per domain) with its health since start.
pub fn callout(cfg: &Config, verifier: &crate::policy::Verifier) -> Vec<Value> {
    let health = verifier.backend_health();
    let mut callout = Vec::new();
    for d in &cfg.domains {
        for src in &d.sources {
            if let crate::config::Source::Callout(hp) = src {
                let target = hp.to_string();
                let h = health
                    .iter()
                    .find(|(t, _)| *t == target)
                    .map(|(_, h)| h.clone())
                    .unwrap_or_default();
                callout
                    .push(json!({ "domain": d.name.to_string(), "target": target, "health": h }));
            }
        }
    }
    callout
}

/// Whether an internal server answers, from its health as [`gather`] shows it: its last
/// definite answer is newer than its last failure. `None` before its first probe.
pub fn answering(health: &Value) -> Option<bool> {
    match (
        health["last_ok"].as_u64(),
        health["last_failure"][0].as_u64(),
    ) {
        (None, None) => None,
        (Some(ok), Some(bad)) => Some(ok >= bad),
        (Some(_), None) => Some(true),
        (None, Some(_)) => Some(false),
    }
}

fn counts(c: &[(&str, u64)]) -> Value {
    Value::Object(
        c.iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect(),
    )
}

fn queue(spool: &Spool) -> Value {
    let list = spool.list();
    let (mut queued, mut deferred, mut failed) = (0, 0, 0);
    for r in list.iter().flat_map(|m| &m.rcpts) {
        match &r.status {
            Status::Queued { last: None, .. } => queued += 1,
            Status::Queued { last: Some(_), .. } => deferred += 1,
            Status::Failed { .. } => failed += 1,
            Status::Delivered { .. } => {}
        }
    }
    json!({
        "messages": list.len(),
        "held": list.iter().filter(|m| m.held).count(),
        "rcpts_queued": queued,
        "rcpts_deferred": deferred,
        "rcpts_failed_kept": failed,
    })
}

/// The status as text for people.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(out, "backstop on {} ({} UTC)", s(&v["host"]), s(&v["day"]));
    let q = &v["queue"];
    let _ = writeln!(
        out,
        "queue: {} message(s), {} held; recipients {} queued, {} deferred, {} failed (kept)",
        n(&q["messages"]),
        n(&q["held"]),
        n(&q["rcpts_queued"]),
        n(&q["rcpts_deferred"]),
        n(&q["rcpts_failed_kept"])
    );
    let list = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    for c in list("callout") {
        let h = &c["health"];
        let state = match answering(h) {
            None => "no probes since start".to_string(),
            Some(true) => "answering".to_string(),
            Some(false) => format!("failing: {}", s(&h["last_failure"][1])),
        };
        let _ = writeln!(
            out,
            "call-out {} for {}: {state} ({} probes, {} failed)",
            s(&c["target"]),
            s(&c["domain"]),
            n(&h["probes"]),
            n(&h["failures"])
        );
    }
    let held = list("held_senders");
    let _ = writeln!(out, "held senders: {}", held.len());
    for h in &held {
        let _ = writeln!(out, "  {}  {}", s(&h["sender"]), s(&h["why"]));
    }
    let blocked = list("blocked_clients");
    let _ = writeln!(out, "blocked clients: {}", blocked.len());
    for b in &blocked {
        let _ = writeln!(out, "  {}  until {}", s(&b["client"]), n(&b["until"]));
    }
    let dnsbl = list("dnsbl");
    match dnsbl.is_empty() {
        true => out.push_str("dnsbl: not configured ([reputation])\n"),
        false => {
            out.push_str("dnsbl:\n");
            for d in &dnsbl {
                let _ = writeln!(
                    out,
                    "  {} in {}: {}",
                    s(&d["ip"]),
                    s(&d["zone"]),
                    s(&d["state"])
                );
            }
        }
    }
    let r = &v["reports_today"];
    let _ = writeln!(
        out,
        "reports today: {} sent, {} suppressed",
        n(&r["sent"]),
        n(&r["suppressed"])
    );
    let alerts: Vec<String> = v["alerts_today"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "alerts today: {}",
        match alerts.is_empty() {
            true => "none".to_string(),
            false => alerts.join(", "),
        }
    );
    let d = &v["defence_today"];
    let _ = writeln!(
        out,
        "defence today: {} connections refused, {} clients blocked, {} sessions cut off, {} outbound recipients over a limit",
        n(&d["client_refused"]),
        n(&d["client_blocked"]),
        n(&d["cut_off"]),
        n(&d["outbound_limit"])
    );
    let b = &v["bounces_today"];
    let _ = writeln!(
        out,
        "bounces today: {} genuine, {} backscatter; BATV {} valid, {} untagged, {} expired or invalid",
        n(&b["verdict=genuine"]),
        n(&b["verdict=backscatter"]),
        n(&b["batv=valid"]),
        n(&b["batv=missing"]),
        n(&b["batv=invalid"]) + n(&b["batv=expired"])
    );
    out
}
