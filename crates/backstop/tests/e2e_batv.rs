//! Bounces for mail we never sent, end to end with the real binary: BATV signing on the way
//! out, a real Postfix that writes the bounce and sends it back to the signed return path,
//! forged and expired bounces refused at RCPT, and the verdict on untagged bounces during the
//! warm-up (quarantined or tagged per domain), one recipient per bounce, the bounce rate, and
//! `backstop verify --from '<>'`.

mod support;

use backstop_proto::address::Mailbox;
use backstop_proto::batv::{self, Key};
use std::net::SocketAddr;
use std::path::Path;
use support::{Backstop, Client, FORGED_BOUNCE, Postfix, free_port, swaks, wait_until, world_dir};

const SECRET: &str = "e2e-secret";

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gateway for example.test (user alice, Maildir) with a public listener on `mx` and a
/// submission listener for 127.0.0.1 on `submit`; remote.test is routed to `remote`.
fn gateway_config(dir: &Path, mx: u16, submit: u16, remote: u16, extra: &str) -> String {
    let users = dir.join("users.txt");
    std::fs::write(&users, "alice@example.test\ncarol@tagged.test\n").unwrap();
    format!(
        "hostname = \"gw.example.test\"\nstate_dir = {state:?}\n\
         [[listen]]\naddr = \"127.0.0.1:{mx}\"\n\
         [[listen]]\naddr = \"127.0.0.1:{submit}\"\nrelay_from = [\"127.0.0.1\"]\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"list:{users}\"]\n\
         next_hop = \"maildir:{mail}\"\nbatv = \"enforce\"\nbackscatter = \"quarantine\"\n\
         [[domain]]\nname = \"tagged.test\"\nrecipients = [\"list:{users}\"]\n\
         next_hop = \"maildir:{mail}\"\nbatv = \"sign\"\nbackscatter = \"tag\"\n\
         [[route]]\ndomain = \"remote.test\"\nnext_hop = \"smtp:127.0.0.1:{remote}\"\n\
         [delivery]\nretry_min = \"1s\"\nretry_max = \"1s\"\n{extra}",
        state = dir.join("state").display().to_string(),
        users = users.display(),
        mail = dir.join("mail").display(),
    )
}

fn maildir_messages(dir: &Path) -> Vec<String> {
    let new = dir.join("mail/new");
    let mut out: Vec<String> = std::fs::read_dir(new)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// MAIL FROM:<> and RCPT TO:<rcpt> on a fresh connection; the RCPT reply.
fn bounce_rcpt(at: SocketAddr, rcpt: &str) -> String {
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO mx.remote.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    c.cmd(&format!("RCPT TO:<{rcpt}>"))
}

fn tag_for(local: &str, now: u64) -> String {
    let key = Key::new(1, SECRET.as_bytes()).unwrap();
    let m = Mailbox::parse(local, false).unwrap();
    batv::sign(&m, &key, now, 7).unwrap().to_string()
}

#[test]
fn a_real_bounce_to_a_signed_return_path_comes_home_and_forged_ones_are_refused() {
    let dir = world_dir();
    let (mx, submit) = (free_port(), free_port());
    // the remote side: a real Postfix gateway that accepts any remote.test address, then
    // learns from the Postfix mailbox server behind it that bob does not exist (550 5.1.1),
    // writes the bounce itself and sends it to the envelope sender, through our MX listener
    let mailboxes = Postfix::internal("remote.test", &["someone@remote.test"], free_port());
    let remote_cf = format!(
        "relay_recipient_maps =\n\
         transport_maps = inline:{{ remote.test=smtp:[127.0.0.1]:{}, example.test=smtp:[127.0.0.1]:{mx} }}\n",
        mailboxes.port
    );
    let postfix = Postfix::internal_with("remote.test", &[], mailboxes.port, &remote_cf);
    let config = gateway_config(
        dir.path(),
        mx,
        submit,
        postfix.port,
        "[batv]\nkeys = [\"1:e2e-secret\"]\nwarmup = \"0s\"\n",
    );
    let b = Backstop::start(dir.path(), &config);

    let (code, t) = swaks(
        addr(submit),
        &[
            "--from",
            "alice@example.test",
            "--to",
            "bob@remote.test",
            "--header",
            "Message-Id: <first-try@example.test>",
            "--header",
            "Subject: hello remote",
        ],
    );
    assert_eq!(code, 0, "{t}");
    // Postfix got a signed return path and bounced to it; the bounce was taken and delivered
    assert!(
        wait_until(60, || !maildir_messages(dir.path()).is_empty()),
        "no bounce delivered\n{}\n--- postfix:\n{}",
        b.log(),
        postfix.maillog()
    );
    let log = postfix.maillog();
    assert!(log.contains("from=<prvs=1"), "{log}");
    assert!(log.contains("=alice@example.test>"), "{log}");
    let m = maildir_messages(dir.path());
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        m[0].contains("Undelivered Mail Returned to Sender"),
        "{}",
        m[0]
    );
    assert!(m[0].contains("bob@remote.test"), "{}", m[0]);
    assert!(m[0].contains("<first-try@example.test>"), "{}", m[0]);
    assert!(!m[0].contains("X-Backstop-Bounce"), "{}", m[0]);
    assert_eq!(
        b.count_reaching(&["event=\"batv\"", "batv=\"valid\""], 1),
        1,
        "{}",
        b.log()
    );
    assert_eq!(
        b.count_reaching(
            &[
                "event=\"bounce_verdict\"",
                "verdict=\"genuine\"",
                "batv=valid,msgid=known,relay=ours"
            ],
            1
        ),
        1,
        "{}",
        b.log()
    );

    // forged: untagged, a tag that expired, a tag we never made
    let r = bounce_rcpt(addr(mx), "alice@example.test");
    assert_eq!(
        r,
        "550 5.7.1 <alice@example.test>: bounce not for mail sent from here (no BATV tag)"
    );
    let expired = tag_for("alice@example.test", unix_now() - 9 * 86_400);
    let r = bounce_rcpt(addr(mx), &expired);
    assert!(r.starts_with("550 5.7.1 <prvs=1"), "{r}");
    assert!(r.ends_with("(BATV tag expired)"), "{r}");
    let r = bounce_rcpt(addr(mx), "prvs=1000abcdef=alice@example.test");
    assert!(r.ends_with("(BATV tag invalid)"), "{r}");
    // a fresh tag still works, and ordinary mail to the plain address is not affected
    let fresh = tag_for("alice@example.test", unix_now());
    assert!(bounce_rcpt(addr(mx), &fresh).starts_with("250"));
    let (code, t) = swaks(
        addr(mx),
        &["--from", "friend@remote.test", "--to", "alice@example.test"],
    );
    assert_eq!(code, 0, "{t}");

    // the operator's view of the same decisions
    let (code, out, _) = b.cli(&["verify", "--from", "<>", "alice@example.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MAIL FROM:<> RCPT TO:<alice@example.test> -> 550 5.7.1"),
        "{out}"
    );
    assert!(out.contains("batv: missing"), "{out}");
    let (code, out, _) = b.cli(&["verify", "--from", "<>", &fresh]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("tag stripped; the recipient is <alice@example.test>"),
        "{out}"
    );
    let (code, out, _) = b.cli(&["verify", "alice@example.test"]);
    assert_eq!(code, 0, "{out}");

    // every decision counted (verify only explains: it counts nothing)
    assert_eq!(
        counts(&b),
        [
            ("batv=valid", 2),
            ("batv=missing", 1),
            ("batv=expired", 1),
            ("batv=invalid", 1),
            ("verdict=genuine", 1),
            ("msgid=known", 1),
            ("relay=ours", 1),
            ("action=accept", 1),
        ]
    );
    let (_, table, _) = b.cli(&["bounce", "stats"]);
    assert!(
        table.contains("  batv     valid 2  missing 1  expired 1  invalid 1"),
        "{table}"
    );
}

/// Today's non-zero bounce counts, in the order `bounce stats` lists them.
fn counts(b: &Backstop) -> Vec<(&'static str, u64)> {
    let (code, out, err) = b.cli(&["bounce", "stats", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    backstop::backscatter::stats::LABELS
        .iter()
        .map(|l| (*l, v["counts"][l].as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Sends FORGED_BOUNCE with the null sender to `rcpts`; the reply to the end of DATA (or the
/// first refusal).
fn send_bounce(at: SocketAddr, rcpts: &[&str]) -> String {
    let (mut c, _) = Client::connect(at);
    c.cmd("EHLO mx.spam-victim.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    for r in rcpts {
        let reply = c.cmd(&format!("RCPT TO:<{r}>"));
        if !reply.starts_with("250") {
            return reply;
        }
    }
    let data = c.cmd("DATA");
    if !data.starts_with("354") {
        return data;
    }
    let body = FORGED_BOUNCE.replace("RCPT", rcpts[0]);
    c.send(format!("{body}.\r\n").as_bytes());
    c.reply()
}

#[test]
fn untagged_bounces_in_the_warm_up_are_judged_by_their_content() {
    let dir = world_dir();
    let (mx, submit) = (free_port(), free_port());
    let config = gateway_config(
        dir.path(),
        mx,
        submit,
        free_port(),
        "[batv]\nwarmup = \"7d\"\n[bounces]\nper_recipient = 3\n",
    );
    let b = Backstop::start(dir.path(), &config);

    // example.test enforces, but is warming up: taken, judged, quarantined
    let r = send_bounce(addr(mx), &["alice@example.test"]);
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert!(maildir_messages(dir.path()).is_empty());
    let (code, out, _) = b.cli(&["quarantine", "list", "--json"]);
    assert_eq!(code, 0);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "{out}");
    assert_eq!(entries[0]["from"], "<>");
    assert_eq!(entries[0]["to"][0], "alice@example.test");
    assert_eq!(
        entries[0]["reasons"],
        "batv=missing,msgid=unknown,relay=foreign"
    );
    let kept = std::fs::read_to_string(entries[0]["path"].as_str().unwrap()).unwrap();
    assert!(kept.contains("<never-sent@example.test>"), "{kept}");
    let (_, table, _) = b.cli(&["quarantine", "list"]);
    assert!(
        table.contains("why: batv=missing,msgid=unknown,relay=foreign"),
        "{table}"
    );

    // tagged.test only signs and tags backscatter: delivered with the verdict in a header
    let r = send_bounce(addr(mx), &["carol@tagged.test"]);
    assert!(r.starts_with("250"), "{r}");
    let m = maildir_messages(dir.path());
    assert_eq!(m.len(), 1);
    assert!(
        m[0].lines().any(|l| l.trim_end()
            == "X-Backstop-Bounce: backscatter; reasons=batv=missing,msgid=unknown,relay=foreign"),
        "{}",
        m[0]
    );
    assert_eq!(
        b.count_reaching(&["event=\"bounce_verdict\"", "verdict=\"backscatter\""], 2),
        2
    );

    // a bounce has one recipient
    let r = send_bounce(addr(mx), &["alice@example.test", "carol@tagged.test"]);
    assert_eq!(
        r,
        "550 5.7.1 Error: a bounce has one recipient; this one has several"
    );
    // three bounces an hour for carol (one above, one here, one in the refused pair): then 450
    let r = send_bounce(addr(mx), &["carol@tagged.test"]);
    assert!(r.starts_with("250"), "{r}");
    let r = bounce_rcpt(addr(mx), "carol@tagged.test");
    assert_eq!(
        r,
        "450 4.7.1 <carol@tagged.test>: too many bounces for this recipient, try again later"
    );
    // log lines arrive a moment after the reply
    assert_eq!(b.count_reaching(&["event=\"bounce_rate_exceeded\""], 1), 1);
    assert_eq!(
        counts(&b),
        [
            ("batv=missing", 6),
            ("verdict=backscatter", 3),
            ("msgid=unknown", 3),
            ("relay=foreign", 3),
            ("action=tag", 2),
            ("action=quarantine", 1),
            ("refused=rcpts>1", 1),
            ("refused=rate", 1),
        ]
    );
}
