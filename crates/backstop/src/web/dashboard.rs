//! The dashboard: one HTML page, rendered here with its charts as inline SVG (no script, no
//! font or library from elsewhere: it works with no internet), reloading itself every 15 s.
//!
//! Responsible for: laying out what the API offers for a person: messages accepted vs
//! refused over time, backscatter stopped and reports suppressed per reason, the queue, held
//! senders, blocked clients, the DNSBL state of our IPs, call-out health. Not responsible for:
//! the figures (the tally, its series, `status`), or any action.

use super::Shared;
use crate::telemetry::metrics::Reading;
use crate::telemetry::series::{Bucket, Series};
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use std::fmt::Write as _;

/// A chart line: its name, its colour, and which counters it sums.
struct Line {
    name: &'static str,
    colour: &'static str,
    keep: fn(&Reading) -> bool,
}

fn refused_or_deferred(r: &Reading) -> bool {
    r.label("result") != "accepted"
}

const MESSAGES: &[Line] = &[
    Line {
        name: "accepted",
        colour: "#2e7d32",
        keep: |r| r.name == "backstop_messages_total" && r.label("result") == "accepted",
    },
    Line {
        name: "refused or deferred",
        colour: "#c62828",
        keep: |r| r.name == "backstop_messages_total" && refused_or_deferred(r),
    },
];

const STOPPED: &[Line] = &[
    Line {
        name: "recipients refused at RCPT",
        colour: "#ef6c00",
        keep: |r| r.name == "backstop_rcpt_total" && refused_or_deferred(r),
    },
    Line {
        name: "bounces refused",
        colour: "#6a1b9a",
        keep: |r| r.name == "backstop_bounces_refused_total",
    },
    Line {
        name: "reports suppressed",
        colour: "#1565c0",
        keep: |r| r.name == "backstop_reports_suppressed_total",
    },
    Line {
        name: "connections refused",
        colour: "#546e7a",
        keep: |r| r.name == "backstop_connections_refused_total",
    },
];

/// `GET /`.
pub async fn page(State(web): State<Shared>) -> Response {
    let now = web.served().clock.unix();
    let counters = web.metrics.tally().counters();
    let status = web
        .served()
        .status()
        .await
        .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
    let series = web.series.lock().unwrap_or_else(|e| e.into_inner());
    let day = series.growth(&counters, now.saturating_sub(86_400));
    let mut out = String::with_capacity(32 * 1024);
    head(&mut out, &web.served().cfg.hostname, now, series.first());
    tiles(&mut out, &day, &status);
    out.push_str("<section class=\"charts\">");
    for (title, lines, n, width) in [
        ("Messages, last hour (per minute)", MESSAGES, 60, 60),
        (
            "Messages, last 24 hours (per 30 minutes)",
            MESSAGES,
            48,
            1800,
        ),
        ("Stopped, last hour (per minute)", STOPPED, 60, 60),
        ("Stopped, last 24 hours (per 30 minutes)", STOPPED, 48, 1800),
    ] {
        chart(&mut out, title, lines, &series, &counters, (now, n, width));
    }
    out.push_str("</section>");
    drop(series);
    reasons(&mut out, &day);
    state(&mut out, &status);
    recent(&mut out, &web.served().guard.recent());
    out.push_str("</main></body></html>\n");
    Html(out).into_response()
}

fn head(out: &mut String, host: &str, now: u64, since: Option<u64>) {
    let since = since.map_or("now".to_string(), |s| {
        format!("{} {}", backstop_proto::datetime::iso_date(s), clock(s))
    });
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="15"><title>backstop on {host}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f5f5f5;color:#212121}}
header{{background:#263238;color:#fff;padding:.6em 1em}} header h1{{font-size:1.2em;margin:0}}
main{{padding:1em}} section{{margin-bottom:1.2em}}
.tiles{{display:flex;flex-wrap:wrap;gap:.6em}}
.tile{{background:#fff;border-radius:4px;padding:.6em 1em;min-width:9em;box-shadow:0 1px 2px #0002}}
.tile b{{display:block;font-size:1.6em}}
.charts{{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:.8em}}
figure{{background:#fff;margin:0;padding:.6em;border-radius:4px;box-shadow:0 1px 2px #0002}}
figcaption{{font-weight:600}} svg{{width:100%;height:auto}}
table{{border-collapse:collapse;background:#fff;margin:.3em 0}}
td,th{{padding:.2em .6em;border-bottom:1px solid #e0e0e0;text-align:left}}
.grid{{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:.8em}}
.bad{{color:#c62828;font-weight:600}} .ok{{color:#2e7d32}} .muted{{color:#757575}}
</style></head><body>
<header><h1>backstop on {host}</h1><span>{} {} UTC · this node's counters since {since} · reloads every 15 s</span></header>
<main>
"#,
        backstop_proto::datetime::iso_date(now),
        clock(now),
        host = esc(host),
    );
}

/// `HH:MM` (UTC).
fn clock(t: u64) -> String {
    format!("{:02}:{:02}", t % 86_400 / 3600, t % 3600 / 60)
}

fn sum(readings: &[Reading], keep: fn(&Reading) -> bool) -> u64 {
    readings.iter().filter(|r| keep(r)).map(|r| r.value).sum()
}

fn tiles(out: &mut String, day: &[Reading], status: &Value) {
    let len = |k: &str| status[k].as_array().map_or(0, Vec::len) as u64;
    let q = &status["queue"];
    let (day_, now_) = (" · 24 h", " · now");
    let tiles = [
        (
            "messages accepted",
            sum(day, MESSAGES[0].keep),
            "accepted",
            day_,
        ),
        (
            "messages refused",
            sum(day, MESSAGES[1].keep),
            "refused",
            day_,
        ),
        (
            "recipients refused",
            sum(day, STOPPED[0].keep),
            "rcpt-refused",
            day_,
        ),
        (
            "bounces refused",
            sum(day, STOPPED[1].keep),
            "bounces-refused",
            day_,
        ),
        (
            "reports suppressed",
            sum(day, STOPPED[2].keep),
            "reports-suppressed",
            day_,
        ),
        (
            "queued messages",
            q["messages"].as_u64().unwrap_or(0),
            "queue",
            now_,
        ),
        ("senders held", len("held_senders"), "held", now_),
        ("clients blocked", len("blocked_clients"), "blocked", now_),
    ];
    out.push_str("<section class=\"tiles\">");
    for (name, n, id, when) in tiles {
        let _ = write!(
            out,
            "<div class=\"tile\" id=\"tile-{id}\"><b>{n}</b>{name}<span class=\"muted\">{when}</span></div>"
        );
    }
    out.push_str("</section>");
}

fn chart(
    out: &mut String,
    title: &str,
    lines: &[Line],
    series: &Series,
    counters: &[Reading],
    (now, n, width): (u64, u64, u64),
) {
    let data: Vec<(&Line, Vec<Bucket>)> = lines
        .iter()
        .map(|l| (l, series.buckets(counters, now, n, width, &l.keep)))
        .collect();
    let max = data
        .iter()
        .flat_map(|(_, b)| b.iter().map(|b| b.count))
        .max()
        .unwrap_or(0)
        .max(1);
    let total: u64 = data
        .iter()
        .flat_map(|(_, b)| b.iter().map(|b| b.count))
        .sum();
    let (w, h, left, bottom) = (600.0, 180.0, 40.0, 20.0);
    let x = |i: usize| left + (w - left - 10.0) * i as f64 / (n.max(2) - 1) as f64;
    let y = |c: u64| 10.0 + (h - bottom - 10.0) * (1.0 - c as f64 / max as f64);
    let _ = write!(
        out,
        r##"<figure class="chart" data-total="{total}"><figcaption>{}</figcaption><svg viewBox="0 0 {w} {h}" role="img" aria-label="{}">
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#9e9e9e"/><line x1="{left}" y1="10" x2="{left}" y2="{}" stroke="#9e9e9e"/>
<text x="{}" y="14" font-size="11" text-anchor="end">{max}</text><text x="{}" y="{}" font-size="11" text-anchor="end">0</text>"##,
        esc(title),
        esc(title),
        h - bottom,
        w - 10.0,
        h - bottom,
        h - bottom,
        left - 4.0,
        left - 4.0,
        h - bottom,
    );
    let start = now.saturating_sub(n * width);
    let mid = (n as usize / 2, start + n / 2 * width, "middle");
    for (i, t, anchor) in [(0, start, "start"), mid, (n as usize - 1, now, "end")] {
        let _ = write!(
            out,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="{anchor}">{}</text>"##,
            x(i),
            h - 4.0,
            clock(t)
        );
    }
    for (line, buckets) in &data {
        let points: Vec<String> = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{:.1},{:.1}", x(i), y(b.count)))
            .collect();
        let _ = write!(
            out,
            r##"<polyline class="series" fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}</title></polyline>"##,
            line.colour,
            points.join(" "),
            line.name
        );
    }
    out.push_str("</svg><div>");
    for (line, buckets) in &data {
        let n: u64 = buckets.iter().map(|b| b.count).sum();
        let _ = write!(
            out,
            r#"<span style="color:{}">■</span> {} ({n}) "#,
            line.colour, line.name
        );
    }
    out.push_str("</div></figure>");
}

/// The last day's refusals per reason, one table per kind.
fn reasons(out: &mut String, day: &[Reading]) {
    type Table = (
        &'static str,
        &'static str,
        fn(&Reading) -> bool,
        &'static str,
    );
    let tables: [Table; 4] = [
        (
            "Recipients refused or deferred at RCPT",
            "backstop_rcpt_total",
            refused_or_deferred,
            "reason",
        ),
        (
            "Bounces refused",
            "backstop_bounces_refused_total",
            |_| true,
            "reason",
        ),
        (
            "Reports suppressed",
            "backstop_reports_suppressed_total",
            |_| true,
            "why",
        ),
        (
            "Connections refused",
            "backstop_connections_refused_total",
            |_| true,
            "reason",
        ),
    ];
    out.push_str("<h2>Per reason, last 24 hours</h2><section class=\"grid\">");
    for (title, name, keep, label) in tables {
        let _ = write!(out, "<div><h3>{title}</h3><table>");
        let mut rows: Vec<&Reading> = day
            .iter()
            .filter(|r| r.name == name && r.value > 0 && keep(r))
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.value));
        if rows.is_empty() {
            out.push_str("<tr><td class=\"muted\">none</td></tr>");
        }
        for r in rows {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(r.label(label)),
                r.value
            );
        }
        out.push_str("</table></div>");
    }
    out.push_str("</section>");
}

/// Queue, held senders, blocked clients, DNSBL, TLS policy failures by destination,
/// internal servers.
fn state(out: &mut String, status: &Value) {
    let s = |v: &Value| esc(v.as_str().unwrap_or(""));
    let list = |k: &str| status[k].as_array().cloned().unwrap_or_default();
    let q = &status["queue"];
    out.push_str("<h2>Now</h2><section class=\"grid\">");
    let _ = write!(
        out,
        "<div><h3>Queue</h3><table><tr><td>messages</td><td>{}</td></tr><tr><td>held</td><td>{}</td></tr><tr><td>recipients queued</td><td>{}</td></tr><tr><td>recipients deferred</td><td>{}</td></tr><tr><td>failed, kept for review</td><td>{}</td></tr></table></div>",
        q["messages"], q["held"], q["rcpts_queued"], q["rcpts_deferred"], q["rcpts_failed_kept"]
    );
    let rows = |title: &str, items: Vec<String>| {
        let mut t = format!("<div><h3>{title}</h3><table>");
        if items.is_empty() {
            t.push_str("<tr><td class=\"muted\">none</td></tr>");
        }
        for i in items {
            t.push_str(&i);
        }
        t.push_str("</table></div>");
        t
    };
    let held = list("held_senders")
        .iter()
        .map(|h| {
            format!(
                "<tr><td>{}</td><td>{}</td></tr>",
                s(&h["sender"]),
                s(&h["why"])
            )
        })
        .collect();
    out.push_str(&rows("Held senders", held));
    let blocked = list("blocked_clients")
        .iter()
        .map(|b| {
            let until = b["until"].as_u64().unwrap_or(0);
            format!(
                "<tr><td>{}</td><td>until {} UTC</td></tr>",
                s(&b["client"]),
                clock(until)
            )
        })
        .collect();
    out.push_str(&rows("Blocked clients", blocked));
    let dnsbl = list("dnsbl")
        .iter()
        .map(|d| {
            let state = d["state"].as_str().unwrap_or("");
            let class = if state.starts_with("listed") {
                "bad"
            } else {
                "ok"
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td></tr>",
                s(&d["ip"]),
                s(&d["zone"]),
                esc(state)
            )
        })
        .collect();
    out.push_str(&rows("DNSBL state of our IPs", dnsbl));
    let tls = list("tls_failures_today")
        .iter()
        .map(|t| {
            format!(
                "<tr><td>{}</td><td class=\"bad\">{} failed</td><td>{} succeeded</td><td>{}</td></tr>",
                s(&t["domain"]),
                t["failed"],
                t["succeeded"],
                s(&t["why"])
            )
        })
        .collect();
    out.push_str(&rows("TLS policy failures today", tls));
    let backends = list("backends")
        .iter()
        .map(|b| {
            let (class, state) = match b["up"].as_bool() {
                Some(true) => ("ok", "answering".to_string()),
                Some(false) => (
                    "bad",
                    format!("down: {}", b["error"].as_str().unwrap_or("")),
                ),
                None => ("muted", "not checked yet".to_string()),
            };
            let asked = match b["role"].as_str() {
                Some("directory") => "searches",
                _ => "probes",
            };
            let probes = match b["probes"].as_u64() {
                Some(p) => format!("; {p} {asked}, {} failed", b["failures"]),
                None => String::new(),
            };
            let domains: Vec<String> = b["for"].as_array().into_iter().flatten().map(s).collect();
            format!(
                "<tr><td>{} {}</td><td>{}</td><td class=\"{class}\">{}{}</td></tr>",
                s(&b["role"]),
                s(&b["target"]),
                domains.join(", "),
                esc(&state),
                probes
            )
        })
        .collect();
    out.push_str(&rows("Internal servers", backends));
    out.push_str("</section>");
}

fn recent(out: &mut String, stopped: &[crate::backscatter::Stopped]) {
    out.push_str("<h2>Bounces stopped lately</h2><table id=\"recent\"><tr><th>UTC</th><th>client</th><th>recipient</th><th>action</th><th>why</th></tr>");
    if stopped.is_empty() {
        out.push_str("<tr><td class=\"muted\" colspan=\"5\">none</td></tr>");
    }
    for b in stopped.iter().take(20) {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            clock(b.at),
            esc(&b.client),
            esc(&b.rcpt),
            b.action,
            esc(&b.reasons)
        );
    }
    out.push_str("</table>");
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}
