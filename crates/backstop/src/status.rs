//! `backstop status`: one screen for the operator, gathered from the spool and the store.
//!
//! Responsible for: collecting queue sizes, call-out backend health, held senders, blocked
//! clients, the DNSBL state of our IPs, today's report, bounce and alert counts, and today's
//! outbound TLS policy failures by destination into one JSON object, and rendering it for
//! people. Not responsible for: any of the decisions behind them.

use crate::config::{Config, NextHop, Source};
use crate::health::{Backends, Role, Target};
use crate::queue::{Spool, Status};
use crate::store::{Store, StoreError, daily};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// Most destinations listed with TLS policy failures.
const TLS_FAILURES_SHOWN: usize = 10;

/// Everything `backstop status` shows, as JSON. `backends`: the running gateway's watch on
/// its internal servers (none when no gateway runs: their state is not known).
pub async fn gather(
    cfg: &Config,
    store: &dyn Store,
    (spool, tls): (&Spool, &crate::tlsrpt::Ledger),
    (verifier, backends): (&crate::policy::Verifier, Option<&Backends>),
    now: u64,
) -> Result<Value, StoreError> {
    let backends_known = backends.is_some();
    let backends = backends_of(cfg, verifier, backends);
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
        "now": now,
        "backends_known": backends_known,
        "day": backstop_proto::datetime::iso_date(now),
        "queue": queue(spool),
        "backends": backends,
        "held_senders": held,
        "blocked_clients": blocked,
        "dnsbl": dnsbl,
        "reports_today": counts(&reports),
        "bounces_today": counts(&bounces),
        "alerts_today": counts(&alerts),
        "defence_today": counts(&defence),
        "tls_failures_today": tls.current().failures(TLS_FAILURES_SHOWN),
    }))
}

/// Each next hop, call-out server and directory: the domains that use it, whether it answers
/// (and since when, or what went wrong), and for call-outs and directories the probes (or
/// searches) made since start and how many failed.
pub fn backends_of(
    cfg: &Config,
    verifier: &crate::policy::Verifier,
    backends: Option<&Backends>,
) -> Vec<Value> {
    let probes = verifier.backend_health();
    let known = backends.map(Backends::list).unwrap_or_default();
    let mut out = Vec::new();
    for (role, t) in crate::health::targets(cfg) {
        let target = t.to_string();
        let uses = |sources: &[Source], next_hop: &NextHop| match (role, &t) {
            (Role::Callout, Target::Smtp(hp)) => sources.contains(&Source::Callout(hp.clone())),
            (Role::Directory, Target::Ldap(n)) => sources.contains(&Source::Ldap(n.clone())),
            (Role::NextHop, Target::Smtp(hp)) => *next_hop == NextHop::Smtp(hp.clone()),
            _ => false,
        };
        let domains: Vec<String> = cfg
            .domains
            .iter()
            .filter(|d| uses(&d.sources, &d.next_hop))
            .map(|d| d.name.to_string())
            .chain(
                cfg.routes
                    .iter()
                    .filter(|r| uses(&[], &r.next_hop))
                    .map(|r| format!("route {}", r.domain)),
            )
            .collect();
        let state = known.iter().find(|b| b.role == role && b.target == target);
        let mut v = json!({
            "role": role.as_str(),
            "target": target,
            "for": domains,
            "up": state.and_then(|b| b.up),
            "since": state.map(|b| b.since),
            "error": state.and_then(|b| b.error.clone()),
        });
        if role != Role::NextHop {
            let h = probes
                .iter()
                .find(|(t, _)| *t == target)
                .map(|(_, h)| h.clone());
            let h = h.unwrap_or_default();
            v["probes"] = h.probes.into();
            v["failures"] = h.failures.into();
        }
        out.push(v);
    }
    out
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
    let now = n(&v["now"]);
    for b in list("backends") {
        let (role, asked) = match s(&b["role"]).as_str() {
            "callout" => ("call-out", "probes"),
            "directory" => ("directory", "searches"),
            _ => ("next hop", ""),
        };
        let domains: Vec<String> = b["for"].as_array().into_iter().flatten().map(&s).collect();
        let since = crate::config::ago(now.saturating_sub(n(&b["since"])));
        let mut state = match (b["up"].as_bool(), v["backends_known"].as_bool()) {
            (None, Some(true)) => "not checked yet".to_string(),
            (None, _) => "not known (no gateway is running)".to_string(),
            (Some(true), _) => format!("answering for {since}"),
            (Some(false), _) => format!("DOWN for {since}: {}", s(&b["error"])),
        };
        if let Some(p) = b["probes"].as_u64() {
            let _ = write!(state, " ({p} {asked}, {} failed)", n(&b["failures"]));
        }
        let _ = writeln!(
            out,
            "{role} {} for {}: {state}",
            s(&b["target"]),
            domains.join(", ")
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
    let tls = list("tls_failures_today");
    match tls.is_empty() {
        true => out.push_str("TLS policy failures today: none\n"),
        false => out.push_str("TLS policy failures today, by destination:\n"),
    }
    for t in &tls {
        let _ = writeln!(
            out,
            "  {}: {} failed, {} succeeded; {}",
            s(&t["domain"]),
            n(&t["failed"]),
            n(&t["succeeded"]),
            s(&t["why"])
        );
    }
    out
}
