//! backstop's milter driven by an outside client: `miltertest` (OpenDKIM's milter test tool,
//! built on Sendmail's libmilter definitions) plays the MTA through a scripted Lua session.

mod support;

use backstop_proto::address::Mailbox;
use backstop_proto::batv::{self, Key};
use std::process::Command;
use support::*;

const SECRET: &str = "miltertest-secret";

/// A Lua string literal holding `s`.
fn lua(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Lua call `message(CLIENT_IP, FROM, RCPT, HEADERS, BODY)` for `text` (headers, blank
/// line, body), which returns the connection after end of message.
fn message(ip: &str, from: &str, rcpt: &str, text: &str) -> String {
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let headers: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            let (n, v) = l.split_once(": ").unwrap();
            format!("{{{}, {}}}", lua(n), lua(v))
        })
        .collect();
    format!(
        "message({}, {}, {}, {{{}}}, {})",
        lua(ip),
        lua(from),
        lua(rcpt),
        headers.join(", "),
        lua(body)
    )
}

const PRELUDE: &str = r#"
local function check(ok, what)
  if not ok then
    mt.echo("FAILED: " .. what)
    error(what)
  end
end
function message(ip, from, rcpt, headers, body)
  local conn = mt.connect(SOCKET)
  check(conn ~= nil, "mt.connect failed")
  check(mt.conninfo(conn, "mx.remote.test", ip) == nil, "conninfo")
  check(mt.helo(conn, "mx.remote.test") == nil, "helo")
  mt.macro(conn, SMFIC_MAIL, "i", "4QTEST")
  check(mt.mailfrom(conn, from) == nil, "mailfrom")
  check(mt.rcptto(conn, rcpt) == nil, "rcptto")
  for _, h in ipairs(headers) do
    check(mt.header(conn, h[1], h[2]) == nil, "header " .. h[1])
  end
  check(mt.eoh(conn) == nil, "eoh")
  check(mt.bodystring(conn, body) == nil, "body")
  check(mt.eom(conn) == nil, "eom")
  return conn
end
-- continue (so no reply of its own), and the message as it was
function untouched(conn, rcpt, what)
  check(mt.getreply(conn) == SMFIR_CONTINUE, what .. ": not continue")
  for _, op in ipairs({MT_HDRADD, MT_HDRCHANGE, MT_BODYCHANGE, MT_QUARANTINE}) do
    check(not mt.eom_check(conn, op), what .. ": modified")
  end
  check(not mt.eom_check(conn, MT_RCPTDELETE, rcpt), what .. ": recipient changed")
  mt.disconnect(conn)
end
"#;

#[test]
fn miltertest_drives_the_milter_through_scripted_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("users");
    std::fs::write(
        &list,
        "alice@example.test\ncarol@tagged.test\ndave@held.test\n",
    )
    .unwrap();
    let port = free_port();
    let domain = |name: &str, action: &str| {
        list_domain(
            name,
            &list,
            &format!("batv = \"sign\"\nbackscatter = \"{action}\"\n"),
        )
    };
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n\
         [batv]\nkeys = [\"1:{SECRET}\"]\nwarmup = \"0s\"\n\
         [[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[listen]]\naddr = \"127.0.0.1:{port}\"\nprotocol = \"milter\"\n\
         relay_from = [\"10.0.0.0/8\"]\n{}{}{}",
        dir.path().join("state").display().to_string(),
        domain("example.test", "reject"),
        domain("tagged.test", "tag"),
        domain("held.test", "quarantine"),
    );
    let b = Backstop::start(dir.path(), &text);
    let line = format!("listening on 127.0.0.1:{port} (milter, relay_from)");
    assert_eq!(b.count_reaching(&[&line], 1), 1, "{}", b.log());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let key = Key::new(1, SECRET.as_bytes()).unwrap();
    let alice = Mailbox::parse("alice@example.test", false).unwrap();
    let tagged = batv::sign(&alice, &key, now, 7).unwrap().to_string();
    let ordinary = "From: a@client.test\r\nSubject: hi\r\n\r\nhello\r\n";
    let forged = |rcpt: &str| FORGED_BOUNCE.replace("RCPT", rcpt);
    // mail alice sends out, from the users' network, then the real bounce it draws
    let sent = "From: alice@example.test\r\nMessage-ID: <sent-1@example.test>\r\n\
                Subject: report\r\n\r\nfigures\r\n";
    let real_bounce = forged("alice@example.test")
        .replace("never-sent@example.test", "sent-1@example.test")
        .replace(
            "Received: from botnet.test",
            "Received: from gw.example.test",
        );

    let script = format!(
        "SOCKET = \"inet:{port}@127.0.0.1\"\n{PRELUDE}\n\
         -- ordinary mail from outside: continue, nothing changed\n\
         untouched({}, \"<alice@example.test>\", \"ordinary\")\n\
         -- a forged bounce: refused for example.test in backstop's words\n\
         local c = {}\n\
         check(mt.getreply(c) == SMFIR_REPLYCODE, \"reject: no reply code\")\n\
         check(mt.eom_check(c, MT_SMTPREPLY, \"550\", \"5.7.1\", \
               \"Error: bounce not for mail sent from here\"), \"reject: reply\")\n\
         mt.disconnect(c)\n\
         -- quarantined for held.test, tagged for tagged.test\n\
         c = {}\n\
         check(mt.eom_check(c, MT_QUARANTINE), \"quarantine\")\n\
         mt.disconnect(c)\n\
         c = {}\n\
         check(mt.eom_check(c, MT_HDRADD, \"X-Backstop-Bounce\"), \"tag\")\n\
         mt.disconnect(c)\n\
         -- a bounce to a forged BATV tag: refused\n\
         c = {}\n\
         check(mt.eom_check(c, MT_SMTPREPLY, \"550\", \"5.7.1\", \"<prvs=1000abcdef=alice@example.test>: \
               bounce not for mail sent from here (BATV tag invalid)\"), \"bad tag\")\n\
         mt.disconnect(c)\n\
         -- alice's mail leaves (recorded in the sent log)\n\
         untouched({}, \"<bob@remote.test>\", \"outgoing\")\n\
         -- its real bounce, to her tagged address: the tag replaced by the address itself\n\
         c = {}\n\
         check(mt.getreply(c) == SMFIR_CONTINUE, \"real bounce: not continue\")\n\
         check(mt.eom_check(c, MT_RCPTDELETE, {}), \"real bounce: tagged recipient kept\")\n\
         check(mt.eom_check(c, MT_RCPTADD, \"<alice@example.test>\"), \"real bounce: not untagged\")\n\
         mt.disconnect(c)\n\
         mt.echo(\"all checks passed\")\n",
        message(
            "192.0.2.1",
            "<a@client.test>",
            "<alice@example.test>",
            ordinary
        ),
        message(
            "192.0.2.2",
            "<>",
            "<alice@example.test>",
            &forged("alice@example.test")
        ),
        message(
            "192.0.2.2",
            "<>",
            "<dave@held.test>",
            &forged("dave@held.test")
        ),
        message(
            "192.0.2.2",
            "<>",
            "<carol@tagged.test>",
            &forged("carol@tagged.test")
        ),
        message(
            "192.0.2.2",
            "<>",
            "<prvs=1000abcdef=alice@example.test>",
            &forged("alice@example.test")
        ),
        message(
            "10.1.2.3",
            "<alice@example.test>",
            "<bob@remote.test>",
            sent
        ),
        message("192.0.2.3", "<>", &format!("<{tagged}>"), &real_bounce),
        lua(&format!("<{tagged}>")),
    );
    let path = dir.path().join("session.lua");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new("miltertest")
        .arg("-s")
        .arg(&path)
        .output()
        .expect("miltertest (Debian package miltertest) is installed by scripts/test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "miltertest: {}\n{stdout}\n{}\n--- backstop:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    assert_eq!(
        b.count_reaching(&["event=\"bounce_verdict\"", "verdict=\"backscatter\""], 3),
        3,
        "{}",
        b.log()
    );
    assert_eq!(
        b.count_reaching(&["event=\"bounce_verdict\"", "verdict=\"genuine\""], 1),
        1,
        "{}",
        b.log()
    );
}
