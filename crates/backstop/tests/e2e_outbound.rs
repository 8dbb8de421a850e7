//! Outbound limits with the real binary: a sender over its hourly message limit gets
//! `450 4.7.1` at RCPT; other senders and inbound mail are not counted.

mod support;

use support::{Backstop, Sink, free_port, list_config, swaks, world_dir};

#[test]
fn a_sender_over_its_limit_gets_450_and_others_are_not_counted() {
    let dir = world_dir();
    let partner = Sink::start();
    let relay_port = free_port();
    let base = list_config(dir.path(), &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.1\"]\n\
         [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
         [outbound]\nsender = {{ messages_per_hour = 2 }}\nsender_domain = {{ rcpts_per_hour = 5 }}\n",
        partner.port
    );
    let b = Backstop::start(dir.path(), &config);
    let relay: std::net::SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let send = |from: &str, to: &str| swaks(relay, &["--from", from, "--to", to]);

    for _ in 0..2 {
        let (code, t) = send("alice@example.test", "bob@partner.test");
        assert_eq!(code, 0, "{t}");
    }
    let (code, t) = send("alice@example.test", "bob@partner.test");
    assert_ne!(code, 0);
    assert!(
        t.contains("450 4.7.1 <bob@partner.test>: sending limit reached (sender alice@example.test: 3 messages in the last hour, limit 2), try again later"),
        "{t}"
    );
    // mail to our own domain is not outbound: not counted, not limited
    let (code, t) = send("alice@example.test", "alice@example.test");
    assert_eq!(code, 0, "{t}");
    // another sender of the domain may still send, until the domain's 5 recipients are used
    let (code, t) = send("carol@example.test", "x@partner.test,y@partner.test");
    assert_eq!(code, 0, "{t}");
    let (_, t) = send("dave@example.test", "z@partner.test,w@partner.test");
    assert!(t.contains("250 2.1.5 Ok"), "{t}");
    assert!(
        t.contains("450 4.7.1 <w@partner.test>: sending limit reached (sender_domain example.test: 6 recipients in the last hour, limit 5)"),
        "{t}"
    );
    assert_eq!(b.count_reaching(&["event=\"outbound_limit\""], 2), 2);
    // what was accepted left: 2 + 1 + 1 messages
    assert_eq!(partner.wait_for(4).len(), 4);
}

/// A webhook receiver on loopback: every request body it got.
struct Webhook {
    port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                let _ =
                    (&stream).write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        Webhook { port, bodies }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

#[test]
fn a_sender_whose_mail_mostly_fails_is_held_alerted_and_released() {
    let dir = world_dir();
    let sink = Sink::start();
    // the far side knows only someone@partner.test: every other recipient fails with 550 5.1.1
    let partner = support::Postfix::internal("partner.test", &["someone@partner.test"], sink.port);
    let hook = Webhook::start();
    let relay_port = free_port();
    let base = list_config(dir.path(), &["alice@example.test"], "maildir:mail", "");
    let config = format!(
        "{base}\n[[listen]]\naddr = \"127.0.0.1:{relay_port}\"\nrelay_from = [\"127.0.0.1\"]\n\
         [[route]]\ndomain = \"partner.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
         [[route]]\ndomain = \"slow.test\"\nnext_hop = \"smtp:127.0.0.1:{}\"\n\
         [delivery]\nretry_min = \"1h\"\nretry_max = \"1h\"\n\
         [senders]\nmin_volume = 3\nhold_failed_ratio = 0.5\n\
         [alerts]\nwebhook = \"http://127.0.0.1:{}/alerts\"\n[web]\naddr = \"127.0.0.1:0\"\n",
        partner.port,
        free_port(),
        hook.port
    );
    let b = Backstop::start(dir.path(), &config);
    let relay: std::net::SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let send = |from: &str, to: &str| swaks(relay, &["--from", from, "--to", to]);

    // a message that cannot leave yet (nothing listens for slow.test): stays queued
    let (code, t) = send("alice@example.test", "x@slow.test");
    assert_eq!(code, 0, "{t}");
    // three recipients the far side does not know: 3 of 3 failed, over 50%
    let (code, t) = send(
        "alice@example.test",
        "n1@partner.test,n2@partner.test,n3@partner.test",
    );
    assert_eq!(code, 0, "{t}");
    assert_eq!(
        b.count_reaching(&["event=\"alert\"", "kind=\"sender_held\""], 1),
        1,
        "{}",
        b.log()
    );
    // the webhook also hears that slow.test's next hop does not answer (backend_down)
    let of_kind = |kind: &str| -> Vec<serde_json::Value> {
        hook.bodies()
            .iter()
            .map(|b| serde_json::from_str::<serde_json::Value>(b).unwrap())
            .filter(|a| a["kind"] == kind)
            .collect()
    };
    assert!(support::wait_until(10, || of_kind("sender_held").len() == 1));
    let alert = of_kind("sender_held").remove(0);
    assert_eq!(alert["kind"], "sender_held");
    assert_eq!(alert["subject"], "alice@example.test");
    assert_eq!(alert["host"], "mx.example.test");
    assert!(
        alert["detail"].as_str().unwrap().starts_with(
            "3 of 3 recipients failed in the last 1h (limit 50%); 1 queued message(s) held"
        ),
        "{alert}"
    );

    // new mail from alice: 450 at MAIL; the queued message is held, and says why
    let (_, t) = send("alice@example.test", "someone@partner.test");
    assert!(
        t.contains("450 4.7.1 <alice@example.test>: sender held (3 of 3 recipients failed"),
        "{t}"
    );
    let (code, out, _) = b.cli(&["queue", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("(held: sender held: 3 of 3 recipients failed in the last 1h (limit 50%))"),
        "{out}"
    );
    let (_, out, _) = b.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        st["held_senders"][0]["sender"], "alice@example.test",
        "{st}"
    );
    assert_eq!(st["queue"]["held"], 1, "{st}");
    // alice (a relay client, trusted) got one report for her three failed recipients
    assert_eq!(st["reports_today"]["sent"], 1, "{st}");
    assert_eq!(st["alerts_today"]["sender_held"], 1, "{st}");
    // and in the metrics
    let (code, metrics) = support::http(b.web(), "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "backstop_alerts_total{kind=\"sender_held\"} 1",
        "backstop_senders_held 1",
        "backstop_queue_messages{state=\"held\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    // another sender is not affected
    let (code, t) = send("bob@example.test", "someone@partner.test");
    assert_eq!(code, 0, "{t}");

    // the operator releases alice
    let (code, out, err) = b.cli(&["sender", "release", "alice@example.test"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim(),
        "alice@example.test: released; 1 held message(s) released"
    );
    let (code, t) = send("alice@example.test", "someone@partner.test");
    assert_eq!(code, 0, "{t}");
    let (_, out, _) = b.cli(&["status", "--json"]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["held_senders"], serde_json::json!([]), "{st}");
    let (code, _, err) = b.cli(&["sender", "release", "alice@example.test"]);
    assert_eq!(code, 2);
    assert!(err.contains("alice@example.test is not held"), "{err}");
    assert!(support::wait_until(10, || of_kind("sender_released").len() == 1));
    assert_eq!(of_kind("sender_held").len(), 1);
}
