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
