//! The web listener with the real binary: `/metrics` read by the reference Prometheus parser
//! (Python's prometheus_client) while scripted SMTP sessions run; the dashboard opened in real
//! headless Chromium (through the DevTools protocol) after a harvest and forged bounces, with
//! a screenshot kept as a test artefact; the admin API refused without the token and from
//! outside `[web] allow`.

mod support;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use support::{Backstop, Client, http, list_config, swaks, world_dir};

const TOKEN: &str = "test-token-0123456789";

/// `/metrics` parsed by prometheus_client: the families' types and every sample's value,
/// keyed `name{label="value",...}` (labels sorted).
fn scrape(web: SocketAddr) -> (BTreeMap<String, String>, BTreeMap<String, f64>) {
    let (code, text) = http(web, "GET", "/metrics", None);
    assert_eq!(code, 200, "{text}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/prom.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (Debian python3-prometheus-client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = v["families"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
        .collect();
    let mut samples = BTreeMap::new();
    for s in v["samples"].as_array().unwrap() {
        let labels: Vec<String> = s[1]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.as_str().unwrap()))
            .collect();
        let key = match labels.is_empty() {
            true => s[0].as_str().unwrap().to_string(),
            false => format!("{}{{{}}}", s[0].as_str().unwrap(), labels.join(",")),
        };
        samples.insert(key, s[2].as_f64().unwrap());
    }
    (families, samples)
}

fn grew(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_move_as_a_session_runs_and_parse_as_prometheus_text() {
    let dir = world_dir();
    let extra = "[web]\naddr = \"127.0.0.1:0\"\n";
    let config = list_config(dir.path(), &["alice@example.test"], "maildir:mail", extra);
    let b = Backstop::start(dir.path(), &config);
    let web = b.web();
    assert_eq!(http(web, "GET", "/healthz", None), (200, "ok\n".into()));

    let (families, before) = scrape(web);
    assert_eq!(families["backstop_rcpt"], "counter");
    assert_eq!(families["backstop_queue_messages"], "gauge");
    let (code, t) = swaks(
        b.addr,
        &[
            "--from",
            "someone@sender.test",
            "--to",
            "alice@example.test,nobody@example.test",
        ],
    );
    assert_eq!(code, 0, "{t}");
    assert!(t.contains("550 5.1.1"), "{t}");
    let (_, after) = scrape(web);
    let rcpt = |result: &str, reason: &str| {
        format!("backstop_rcpt_total{{frontend=\"smtp\",reason=\"{reason}\",result=\"{result}\"}}")
    };
    assert_eq!(grew(&before, &after, &rcpt("accepted", "listed")), 1.0);
    assert_eq!(grew(&before, &after, &rcpt("refused", "not-listed")), 1.0);
    let delivered = "backstop_messages_total{reason=\"delivered\",result=\"accepted\"}";
    assert_eq!(grew(&before, &after, delivered), 1.0);
    assert_eq!(grew(&before, &after, "backstop_connections_total"), 1.0);

    // a second session moves them again, by exactly its own recipients
    let (code, t) = swaks(
        b.addr,
        &["--to", "carol@example.test", "--quit-after", "RCPT"],
    );
    assert_ne!(code, 0, "{t}");
    let (_, third) = scrape(web);
    assert_eq!(grew(&after, &third, &rcpt("refused", "not-listed")), 1.0);
    assert_eq!(grew(&after, &third, &rcpt("accepted", "listed")), 0.0);
    assert_eq!(grew(&after, &third, "backstop_connections_total"), 1.0);

    // the JSON summary agrees
    let (code, s) = http(web, "GET", "/api/summary", None);
    assert_eq!(code, 200, "{s}");
    let v: Value = serde_json::from_str(&s).unwrap();
    let refused: Vec<&Value> = v["last_hour"]["backstop_rcpt_total"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["result"] == "refused")
        .collect();
    assert_eq!(refused.len(), 1, "{s}");
    assert_eq!(refused[0]["reason"], "not-listed");
    assert_eq!(refused[0]["value"], 2);
}

/// The JavaScript run in the page: what a person would read off it.
const READ_PAGE: &str = r#"(() => {
  const tile = id => parseInt(document.querySelector('#tile-' + id + ' b').textContent, 10);
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const lines = [...f.querySelectorAll('svg polyline.series')];
    const box = f.querySelector('svg').getBoundingClientRect();
    const drawn = lines.filter(p => {
      const ys = Array.from({ length: p.points.numberOfItems }, (_, i) => p.points.getItem(i).y);
      return ys.length > 1 && Math.max(...ys) - Math.min(...ys) > 1;
    }).length;
    return { title: f.querySelector('figcaption').textContent, total: parseInt(f.dataset.total, 10),
             lines: lines.length, drawn, width: box.width, height: box.height };
  });
  const recent = [...document.querySelectorAll('#recent tr')].slice(1).map(r => r.textContent);
  return { title: document.title,
           tiles: { rcpt: tile('rcpt-refused'), bounces: tile('bounces-refused'),
                    blocked: tile('blocked'), accepted: tile('accepted') },
           charts, recent };
})()"#;

#[test]
fn the_dashboard_shows_a_harvest_and_forged_bounces_in_headless_chromium() {
    let dir = world_dir();
    let extra = "[web]\naddr = \"127.0.0.1:0\"\n[batv]\nwarmup = \"0s\"\n\
                 [harvest]\ntarpit_after = 4\ntarpit_delay = \"1s\"\nclose_after = 5\nblock_after = 8\n";
    let mut config = list_config(dir.path(), &["alice@example.test"], "maildir:mail", extra);
    config.push_str("batv = \"enforce\"\nbackscatter = \"reject\"\n");
    let b = Backstop::start(dir.path(), &config);
    let web = b.web();

    // legitimate mail first
    let (code, t) = swaks(
        b.addr,
        &["--from", "a@sender.test", "--to", "alice@example.test"],
    );
    assert_eq!(code, 0, "{t}");
    // forged bounces: untagged, to a domain that enforces BATV
    for i in 0..3 {
        let (code, t) = swaks(
            b.addr,
            &[
                "--from",
                "<>",
                "--to",
                "alice@example.test",
                "--header",
                &format!("Subject: Undelivered Mail Returned to Sender {i}"),
            ],
        );
        assert_ne!(code, 0, "{t}");
        assert!(t.contains("550 5.7.1"), "{t}");
    }

    // then a harvest (from the same address: the block comes last): made-up addresses until
    // the session is cut off, then again until the client is blocked
    for round in 0..2 {
        let (mut c, _) = Client::connect(b.addr);
        c.cmd("EHLO harvester.test");
        assert!(c.cmd("MAIL FROM:<h@harvester.test>").starts_with("250"));
        for i in 0..5 {
            let r = c.cmd(&format!("RCPT TO:<guess{round}x{i}@example.test>"));
            assert!(r.starts_with("550") || r.starts_with("421"), "{r}");
        }
    }
    let (_, greeting) = (0..50)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            Client::connect(b.addr)
        })
        .find(|(_, g)| g.starts_with("554"))
        .expect("the harvester is blocked");
    assert!(
        greeting.contains("too many unknown recipients"),
        "{greeting}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/cdp.py");
    let out = Command::new("/usr/bin/python3")
        .args([
            script,
            &format!("http://{web}/"),
            shot.to_str().unwrap(),
            READ_PAGE,
        ])
        .output()
        .expect("python3 with websocket (Debian python3-websocket) and chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["title"], "backstop on mx.example.test");
    let tiles = &page["tiles"];
    assert_eq!(tiles["accepted"], 1, "{page}");
    assert_eq!(
        tiles["rcpt"], 13,
        "10 harvest guesses and 3 bounces: {page}"
    );
    assert_eq!(tiles["bounces"], 3, "{page}");
    assert_eq!(tiles["blocked"], 1, "{page}");
    let charts = page["charts"].as_array().unwrap();
    assert_eq!(charts.len(), 4, "{page}");
    for c in charts {
        assert!(c["total"].as_u64().unwrap() > 0, "{c}");
        assert!(
            c["drawn"].as_u64().unwrap() >= 1,
            "a line leaves the baseline: {c}"
        );
        assert!(c["width"].as_f64().unwrap() > 200.0, "{c}");
        assert!(c["height"].as_f64().unwrap() > 60.0, "{c}");
    }
    let recent = page["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{page}");
    assert!(
        recent[0].as_str().unwrap().contains("batv=missing"),
        "{page}"
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
}

#[test]
fn admin_actions_need_the_token_and_an_allowed_network() {
    let dir = world_dir();
    // the API listens on ::1 and lets only ::1 in
    let extra = format!("[web]\naddr = \"[::1]:0\"\nallow = [\"::1\"]\ntoken = \"{TOKEN}\"\n");
    let config = list_config(dir.path(), &["alice@example.test"], "maildir:mail", &extra);
    let b = Backstop::start(dir.path(), &config);
    let web = b.web();
    let action = "/api/queue/retry-all";
    assert_eq!(http(web, "GET", "/api/queue", None).0, 200);
    assert_eq!(http(web, "POST", action, None).0, 401);
    assert_eq!(
        http(web, "POST", action, Some("not-the-token-at-all")).0,
        401
    );
    assert_eq!(
        http(web, "POST", action, Some(TOKEN)),
        (200, r#"{"retried":0}"#.into())
    );
    assert_eq!(
        http(web, "POST", "/api/clients/192.0.2.9/unblock", Some(TOKEN)).0,
        404
    );

    // a second gateway lets only 127.0.0.0/8 in: ::1 may not even read, token or not
    let dir2 = world_dir();
    let extra =
        format!("[web]\naddr = \"[::1]:0\"\nallow = [\"127.0.0.0/8\"]\ntoken = \"{TOKEN}\"\n");
    let config = list_config(dir2.path(), &["alice@example.test"], "maildir:mail", &extra);
    let b2 = Backstop::start(dir2.path(), &config);
    let web2 = b2.web();
    let (code, body) = http(web2, "POST", action, Some(TOKEN));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("::1 is not in [web] allow"), "{body}");
    assert_eq!(http(web2, "GET", "/api/status", None).0, 403);
    // load balancers still get their answer
    assert_eq!(http(web2, "GET", "/healthz", None), (200, "ok\n".into()));
}
