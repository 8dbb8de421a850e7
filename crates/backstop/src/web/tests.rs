use super::*;
use crate::policy::probe::SmtpProber;
use crate::telemetry::{Answer, Event};
use axum::body::Body;
use axum::http::Request as HttpRequest;
use backstop_proto::address::{Mailbox, ReversePath};
use std::net::IpAddr;
use tower::ServiceExt as _;

const NOW: u64 = 1_795_392_000;
const TOKEN: &str = "0123456789abcdef-token";

async fn web(extra: &str) -> (tempfile::TempDir, Shared) {
    let prober = Arc::new(SmtpProber::new(
        ReversePath::Null,
        "mx.example.test",
        Duration::from_secs(1),
        1,
    ));
    let p = crate::test_support::parts(extra, prober, NOW).await;
    let (spool, watch) = p.watch();
    let ladder = crate::decide::Ladder::standalone(
        p.cfg.clone(),
        p.store.clone(),
        p.verifier.clone(),
        p.guard.clone(),
        p.clock.clone(),
    );
    let crate::test_support::Parts {
        dir: d,
        cfg,
        store,
        clock,
        verifier,
        guard,
    } = p;
    let served = Arc::new(Served {
        cfg,
        store,
        verifier,
        guard,
        ladder: Arc::new(ladder),
        watch,
        spool,
        tls_results: Arc::new(crate::tlsrpt::Ledger::in_memory(clock.unix())),
        clock,
        backends: crate::health::Backends::new(Arc::new(|_, _, _, _| {})),
        tls_reports_now: Arc::new(tokio::sync::Notify::new()),
    });
    let web = Arc::new(Web {
        current: Arc::new(arc_swap::ArcSwap::new(served)),
        metrics: Metrics::new(),
        series: Mutex::new(Series::default()),
    });
    (d, web)
}

async fn call(
    web: &Shared,
    from: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = HttpRequest::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    let peer: SocketAddr = format!("{from}:40000").parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(peer));
    let resp = router(web.clone()).oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn reads_need_an_allowed_network_and_actions_the_token_too() {
    let (_d, w) = web(&format!(
        "[web]\nallow = [\"127.0.0.0/8\", \"2001:db8::/32\"]\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    // reads: allowed networks only (an IPv4-mapped IPv6 peer counts as IPv4)
    assert_eq!(
        call(&w, "127.0.0.1", "GET", "/api/queue", None).await.0,
        200
    );
    assert_eq!(
        call(&w, "[::ffff:127.0.0.9]", "GET", "/api/queue", None)
            .await
            .0,
        200
    );
    assert_eq!(
        call(&w, "[2001:db8::5]", "GET", "/metrics", None).await.0,
        200
    );
    let (code, body) = call(&w, "192.0.2.1", "GET", "/api/queue", None).await;
    assert_eq!(
        (code, body.as_str()),
        (403, r#"{"error":"192.0.2.1 is not in [web] allow"}"#)
    );
    assert_eq!(call(&w, "[::1]", "GET", "/", None).await.0, 403);
    // /healthz answers everyone
    assert_eq!(
        call(&w, "192.0.2.1", "GET", "/healthz", None).await,
        (200, "ok\n".into())
    );
    // actions: the token, and from an allowed network
    let action = "/api/queue/retry-all";
    assert_eq!(call(&w, "127.0.0.1", "POST", action, None).await.0, 401);
    assert_eq!(
        call(&w, "127.0.0.1", "POST", action, Some("wrong")).await.0,
        401
    );
    assert_eq!(
        call(&w, "192.0.2.1", "POST", action, Some(TOKEN)).await.0,
        403
    );
    let (code, body) = call(&w, "127.0.0.1", "POST", action, Some(TOKEN)).await;
    assert_eq!((code, body.as_str()), (200, r#"{"retried":0}"#));
    // an action on what does not exist is a 404, an unknown action a 400
    let (code, _) = call(&w, "127.0.0.1", "POST", "/api/queue/NOPE/hold", Some(TOKEN)).await;
    assert_eq!(code, 404);
    let (code, _) = call(&w, "127.0.0.1", "POST", "/api/queue/NOPE/frob", Some(TOKEN)).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn without_a_token_no_action_is_possible() {
    let (_d, w) = web("").await;
    let (code, body) = call(&w, "127.0.0.1", "POST", "/api/queue/retry-all", Some("x")).await;
    assert_eq!(code, 403);
    assert!(body.contains("no [web] token"), "{body}");
    // loopback may read by default
    assert_eq!(call(&w, "[::1]", "GET", "/api/status", None).await.0, 200);
}

#[tokio::test]
async fn clients_and_senders_are_unblocked_held_and_released() {
    let (_d, w) = web(&format!(
        "[harvest]\nblock_after = 1\n[web]\ntoken = \"{TOKEN}\"\n"
    ))
    .await;
    let harvest = crate::harvest::Harvest::new(w.served().cfg.clone(), w.served().store.clone());
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    harvest.unknown_rcpt(ip, NOW).await.unwrap();
    assert!(harvest.unknown_rcpt(ip, NOW).await.unwrap().is_some());
    let (_, body) = call(&w, "127.0.0.1", "GET", "/api/clients/blocked", None).await;
    assert_eq!(
        body,
        format!(
            r#"{{"blocked_clients":[{{"client":"192.0.2.7","until":{}}}]}}"#,
            NOW + 3600
        )
    );
    let unblock = "/api/clients/192.0.2.7/unblock";
    assert_eq!(
        call(&w, "127.0.0.1", "POST", unblock, Some(TOKEN)).await.0,
        200
    );
    assert_eq!(
        call(&w, "127.0.0.1", "POST", unblock, Some(TOKEN)).await.0,
        404
    );
    assert!(harvest.admit(ip, false, NOW).await.is_ok());

    let hold = "/api/senders/bob@example.test/hold";
    let (code, body) = call(&w, "127.0.0.1", "POST", hold, Some(TOKEN)).await;
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"held":0,"sender":"bob@example.test"}"#)
    );
    let (_, body) = call(&w, "127.0.0.1", "GET", "/api/senders/held", None).await;
    assert!(body.contains(r#""why":"held by the operator""#), "{body}");
    let release = "/api/senders/bob@example.test/release";
    assert_eq!(
        call(&w, "127.0.0.1", "POST", release, Some(TOKEN)).await.0,
        200
    );
    assert_eq!(
        call(&w, "127.0.0.1", "POST", release, Some(TOKEN)).await.0,
        404
    );
}

#[tokio::test]
async fn metrics_show_events_and_the_gauges_read_at_scrape_time() {
    let (_d, w) = web("").await;
    let rcpt = Mailbox::parse("nobody@example.test", false).unwrap();
    let reply = backstop_proto::smtp::reply::Reply::new(
        550,
        backstop_proto::smtp::reply::Enhanced::new(5, 1, 1),
        "<nobody@example.test>: Recipient address rejected: User unknown",
    );
    let client = crate::telemetry::Client {
        ip: "192.0.2.1".parse().unwrap(),
        helo: "client.test",
        tls: "",
    };
    w.metrics.with(|| {
        for _ in 0..2 {
            Event::Rcpt {
                client,
                id: "6B0F4E6C9D505F",
                from: &ReversePath::Null,
                rcpt: &rcpt,
                reply: &reply,
                result: Answer::Refused,
                reason: "not-listed",
                frontend: "smtp",
            }
            .emit();
        }
    });
    let (code, body) = call(&w, "127.0.0.1", "GET", "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(
        body.contains(
            "backstop_rcpt_total{result=\"refused\",reason=\"not-listed\",frontend=\"smtp\"} 2"
        ),
        "{body}"
    );
    assert!(
        body.contains("backstop_queue_messages{state=\"active\"} 0"),
        "{body}"
    );
    assert!(body.contains("backstop_senders_held 0"), "{body}");
    // the summary counts from the first sample on
    w.series.lock().unwrap().sample(NOW - 10, &[]);
    let (_, body) = call(&w, "127.0.0.1", "GET", "/api/summary", None).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["last_hour"]["backstop_rcpt_total"],
        serde_json::json!([{
            "result": "refused", "reason": "not-listed", "frontend": "smtp", "value": 2
        }])
    );
    assert_eq!(v["since"], NOW - 10);
    // and the dashboard shows it, with today's TLS policy failures (escaped)
    let sts = mail_auth::report::tlsrpt::PolicyDetails::new(
        crate::tlsrpt::PolicyType::Sts,
        "partner.test",
    );
    let why = "<b>STARTTLS</b> not offered";
    let kind = crate::tlsrpt::ResultType::StartTlsNotSupported;
    let f = crate::tlsrpt::failure(kind, "mx.partner.test", None, why);
    let failed = crate::tlsrpt::Outcome::Failure(f);
    let served = w.current.load_full();
    served.tls_results.record(NOW, "partner.test", &sts, failed);
    let (code, page) = call(&w, "127.0.0.1", "GET", "/", None).await;
    assert_eq!(code, 200);
    assert!(
        page.contains("<h3>TLS policy failures today</h3>"),
        "{page}"
    );
    assert!(
        page.contains("<td>partner.test</td><td class=\"bad\">1 failed</td><td>0 succeeded</td><td>starttls-not-supported at mx.partner.test: &lt;b&gt;STARTTLS&lt;/b&gt; not offered</td>"),
        "{page}"
    );
    assert!(
        page.contains(r#"id="tile-rcpt-refused"><b>2</b>"#),
        "{page}"
    );
    assert!(
        page.contains("<tr><td>not-listed</td><td>2</td></tr>"),
        "{page}"
    );
}

#[test]
fn tokens_compare_whole() {
    assert!(same(b"abc", b"abc"));
    assert!(!same(b"abc", b"abd"));
    assert!(!same(b"abc", b"abcd"));
    assert!(!same(b"", b"a"));
}
