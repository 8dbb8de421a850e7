//! Crash safety of the durable queue (`relay = "queue"`) with the real binary: SIGKILL at
//! random moments while mail streams in loses nothing that got a `250`, and a full disk answers
//! `452 4.3.1`, keeps what was queued before, and recovers once there is space again.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{Backstop, Sink, free_port, run_backstop, wait_until};

/// The kill loop's hostname: its greeting tells that gateway apart from anything else (the
/// other test's gateway included) on a port reused after a kill.
const HOST: &str = "mx.crash.test";
/// The disk-full test's hostname.
const FULL_HOST: &str = "mx.full.test";
const RCPT: &str = "alice@example.test";

/// A queue-mode config named `host` for example.test (list `users.txt` beside the config) with
/// state in `state_dir` and the next hop `127.0.0.1:port`; retries every 1–2 s.
fn queue_config(host: &str, state_dir: &Path, port: u16) -> String {
    format!(
        r#"hostname = "{host}"
state_dir = {state:?}

[limits]
shutdown_timeout = "5s"

[[listen]]
addr = "127.0.0.1:0"

[[domain]]
name = "example.test"
recipients = ["list:users.txt"]
next_hop = "smtp:127.0.0.1:{port}"
relay = "queue"

[delivery]
retry_min = "1s"
retry_max = "2s"
"#,
        state = state_dir.display().to_string()
    )
}

/// SplitMix64: small, seeded, good enough to pick sleeps and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `CRASH_SEED` if set (to repeat a run's timing), else the clock.
fn seed() -> u64 {
    std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// The body of the message `token` (`lines` lines, some starting with a dot, then an end
/// marker), one string per line.
fn body_lines(token: &str, lines: u64) -> Vec<String> {
    (0..lines)
        .map(|i| {
            if i % 40 == 7 {
                format!(".{token} dot line {i}")
            } else {
                format!("{token} line {i:04} abcdefghijklmnopqrstuvwxyz0123456789")
            }
        })
        .chain(std::iter::once(format!("end-of-{token}")))
        .collect()
}

/// The message `token` as sent after DATA: dot-stuffed, CRLF, ending in `.`.
fn wire_message(token: &str, lines: u64) -> Vec<u8> {
    let mut m = format!(
        "From: <sender@client.test>\r\nTo: <{RCPT}>\r\nSubject: {token}\r\nMessage-ID: <{token}@client.test>\r\n\r\n"
    );
    for l in body_lines(token, lines) {
        if l.starts_with('.') {
            m.push('.');
        }
        m.push_str(&l);
        m.push_str("\r\n");
    }
    m.push_str(".\r\n");
    m.into_bytes()
}

/// What a complete copy of the message `token` ends with in an smtp-sink dump (LF, unstuffed).
fn dumped_body(token: &str, lines: u64) -> String {
    let mut s = format!("Message-ID: <{token}@client.test>\n\n");
    for l in body_lines(token, lines) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// The Subject of an smtp-sink dump.
fn dump_token(dump: &str) -> Option<&str> {
    dump.lines().find_map(|l| l.strip_prefix("Subject: "))
}

/// Longest wait for a greeting.
const GREETING_WAIT: Duration = Duration::from_secs(3);

/// A blocking SMTP client where every failure is a value (backstop dies under it).
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
    /// What was sent last (for [`Conn::slowest`]).
    last: &'static str,
    /// The longest wait for a reply: how long, after what, and when it began.
    slowest: Option<(Duration, &'static str, SystemTime)>,
}

/// How one transaction ended.
enum Sent {
    /// The reply after the final dot.
    Reply(String),
    /// A reply other than 250/354 before the message was sent.
    Refused(String),
    /// The whole message was written, but the connection ended before a reply came.
    NoReply,
    /// The connection failed before the whole message was written.
    Broken,
}

impl Conn {
    /// Connects; the connection and its greeting.
    fn open(addr: SocketAddr) -> io::Result<(Conn, String)> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        // A connection that completes its handshake while the gateway is being killed can be
        // left established on our side only: nothing will ever be sent on it, so give up on
        // the greeting early.
        s.set_read_timeout(Some(GREETING_WAIT))?;
        s.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut c = Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
            last: "connect",
            slowest: None,
        };
        let g = c.reply()?;
        c.w.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok((c, g))
    }

    /// One (possibly multi-line) reply, lines joined with '\n'.
    fn reply(&mut self) -> io::Result<String> {
        let (began, at) = (Instant::now(), SystemTime::now());
        let r = self.read_reply();
        let waited = began.elapsed();
        if self.slowest.is_none_or(|(d, _, _)| waited > d) {
            self.slowest = Some((waited, self.last, at));
        }
        r
    }

    fn read_reply(&mut self) -> io::Result<String> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            out.push(line);
            if !more {
                return Ok(out.join("\n"));
            }
        }
    }

    fn cmd(&mut self, line: &'static str) -> io::Result<String> {
        self.last = line;
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        self.reply()
    }

    /// MAIL, RCPT, DATA, the message.
    fn transaction(&mut self, wire: &[u8]) -> Sent {
        for (cmd, want) in [
            ("MAIL FROM:<sender@client.test>", "250"),
            ("RCPT TO:<alice@example.test>", "250"),
            ("DATA", "354"),
        ] {
            match self.cmd(cmd) {
                Ok(r) if r.starts_with(want) => {}
                Ok(r) => return Sent::Refused(r),
                Err(_) => return Sent::Broken,
            }
        }
        self.last = "the message";
        if self.w.write_all(wire).is_err() {
            return Sent::Broken;
        }
        match self.reply() {
            Ok(r) => Sent::Reply(r),
            Err(_) => Sent::NoReply,
        }
    }
}

/// The queue id in `250 2.0.0 Ok: queued as ID`.
fn queued_id(reply: &str) -> String {
    reply
        .split("queued as ")
        .nth(1)
        .unwrap_or("?")
        .trim()
        .to_string()
}

/// Lines in the kill-loop messages' bodies: 1..=300 (up to about 20 kB), fixed per number.
fn lines_of(n: u64) -> u64 {
    1 + Rng(n ^ 0x00C0_FFEE).below(300)
}

fn crash_token(n: u64) -> String {
    format!("crash-{n}")
}

/// What one sender saw.
#[derive(Default)]
struct Tally {
    /// Message number -> queue id, for every `250` after the final dot.
    accepted: BTreeMap<u64, String>,
    /// Sent completely, but no reply came (backstop died): may or may not be queued.
    no_reply: BTreeSet<u64>,
    /// Replies other than 250 (first line, up to the enhanced code) and how often.
    refused: BTreeMap<String, usize>,
    /// Transactions cut before the message was sent completely.
    broken: usize,
    /// Transactions started.
    attempted: usize,
    /// Connections with a greeting.
    connections: usize,
    /// Connections where no greeting came within [`GREETING_WAIT`].
    no_greeting: usize,
    /// The longest wait for a reply: how long, after what, and when it began.
    slowest: Option<(Duration, &'static str, SystemTime)>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.accepted.extend(o.accepted);
        self.no_reply.extend(o.no_reply);
        for (k, v) in o.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.broken += o.broken;
        self.attempted += o.attempted;
        self.connections += o.connections;
        self.no_greeting += o.no_greeting;
        if let Some(w) = o.slowest {
            self.note_wait(w);
        }
    }

    fn note_wait(&mut self, w: (Duration, &'static str, SystemTime)) {
        if self.slowest.is_none_or(|(d, _, _)| w.0 > d) {
            self.slowest = Some(w);
        }
    }
}

/// EHLO and up to `messages` transactions on `c`; false when the connection is not usable
/// any more.
fn session(
    c: &mut Conn,
    messages: u64,
    next: &AtomicU64,
    stop: &AtomicBool,
    t: &mut Tally,
) -> bool {
    if !matches!(c.cmd("EHLO client.test"), Ok(r) if r.starts_with("250")) {
        return false;
    }
    for _ in 0..messages {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = next.fetch_add(1, Ordering::SeqCst);
        t.attempted += 1;
        match c.transaction(&wire_message(&crash_token(n), lines_of(n))) {
            Sent::Reply(r) if r.starts_with("250 ") => {
                t.accepted.insert(n, queued_id(&r));
            }
            Sent::Reply(r) | Sent::Refused(r) => {
                let key: String = r.lines().next().unwrap_or("").chars().take(9).collect();
                *t.refused.entry(key).or_default() += 1;
                return false;
            }
            Sent::NoReply => {
                t.no_reply.insert(n);
                return false;
            }
            Sent::Broken => {
                t.broken += 1;
                return false;
            }
        }
    }
    true
}

/// Sends messages (1–4 per connection) to whatever `addr` holds until `stop`, reconnecting
/// after every failure.
fn sender(
    addr: Arc<Mutex<SocketAddr>>,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> Tally {
    let mut rng = Rng(seed);
    let mut t = Tally::default();
    while !stop.load(Ordering::SeqCst) {
        let a = *addr.lock().unwrap();
        let (began, at) = (Instant::now(), SystemTime::now());
        let opened = Conn::open(a);
        t.note_wait((began.elapsed(), "connect and greeting", at));
        let mut c = match opened {
            Ok((c, g)) if g.starts_with("220 ") && g.contains(HOST) => c,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                t.no_greeting += 1;
                continue;
            }
            _ => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        t.connections += 1;
        let messages = 1 + rng.below(4);
        if session(&mut c, messages, &next, &stop, &mut t) {
            let _ = c.cmd("QUIT");
        }
        if let Some(w) = c.slowest {
            t.note_wait(w);
        }
    }
    t
}

/// `backstop serve` that this test starts, SIGKILLs (by its PID) and starts again; the log of
/// every run is kept, each line prefixed with the run's number.
struct Gateway {
    dir: PathBuf,
    config: PathBuf,
    current: Option<Backstop>,
    past: String,
    runs: usize,
}

impl Gateway {
    fn new(dir: &Path, config: PathBuf) -> Gateway {
        Gateway {
            dir: dir.to_path_buf(),
            config,
            current: None,
            past: String::new(),
            runs: 0,
        }
    }

    /// Starts it and waits for its "listening on" line; the bound address.
    fn start(&mut self) -> SocketAddr {
        assert!(self.current.is_none(), "already running");
        self.runs += 1;
        let config = self.config.to_str().unwrap().to_string();
        let b = Backstop::start_with(
            &self.dir,
            &["serve", "--config", &config],
            self.config.clone(),
        );
        let addr = b.addr;
        self.current = Some(b);
        addr
    }

    /// A run's log, each line prefixed with the run's number.
    fn prefixed(&self, b: &Backstop) -> String {
        b.log()
            .lines()
            .map(|l| format!("[run {}] {l}\n", self.runs))
            .collect()
    }

    /// Keeps the log of the run that just ended.
    fn ended(&mut self, b: &Backstop) {
        let log = self.prefixed(b);
        self.past.push_str(&log);
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) {
        if let Some(mut b) = self.current.take() {
            b.kill9();
            self.ended(&b);
        }
    }

    /// SIGTERM and wait (20 s, then SIGKILL); its exit status, None if it had to be killed.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut b = self.current.take()?;
        let status = b.stop();
        self.ended(&b);
        status
    }

    /// Every run's log so far.
    fn log(&self) -> String {
        let current = self.current.as_ref().map(|b| self.prefixed(b));
        self.past.clone() + &current.unwrap_or_default()
    }

    /// `backstop queue list --json` on this config: the messages listed.
    fn queue(&self) -> Vec<serde_json::Value> {
        queue_list(&self.config)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn queue_list(config: &Path) -> Vec<serde_json::Value> {
    let (code, out, err) = run_backstop([
        "queue",
        "list",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "backstop queue list: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["messages"].as_array().cloned().unwrap_or_default()
}

/// Recipient states over a queue listing, e.g. {"queued": 3}.
fn state_counts(list: &[serde_json::Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in list {
        for r in m["rcpts"].as_array().into_iter().flatten() {
            let s = r["status"]["state"].as_str().unwrap_or("?").to_string();
            *out.entry(s).or_default() += 1;
        }
    }
    out
}

/// The sink's dumps sorted out: complete copies per token, and dumps that are not a complete,
/// intact copy of a message we sent.
#[derive(Default)]
struct AtSink {
    copies: BTreeMap<String, usize>,
    damaged: Vec<String>,
}

fn at_sink(dumps: &[String], expected: impl Fn(&str) -> Option<String>) -> AtSink {
    let mut s = AtSink::default();
    for d in dumps {
        match dump_token(d).and_then(|t| expected(t).map(|body| (t, body))) {
            Some((t, body)) if d.contains(&body) => {
                *s.copies.entry(t.to_string()).or_default() += 1
            }
            _ => s.damaged.push(d.clone()),
        }
    }
    s
}

/// Log lines mentioning `needle`.
fn grep(log: &str, needle: &str) -> String {
    log.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

const KILLS: usize = 25;
const SENDERS: u64 = 2;

/// Two senders stream messages while backstop is SIGKILLed 25 times at random moments and
/// started again on the same state_dir. Every message that got `250` after its final dot must
/// reach the next hop intact; duplicates (killed between delivery and recording it) are allowed,
/// and so are deliveries of messages whose `250` never reached the client — but never of one
/// that got a different reply. Afterwards the queue is empty.
///
/// `CRASH_SEED=N` repeats a run's kill timing; `CRASH_LOG=FILE` keeps every run's log.
#[test]
fn kill_9_loop_loses_nothing_that_got_250() {
    let seed = seed();
    eprintln!("kill loop: seed {seed} (CRASH_SEED={seed} repeats the kill timing)");
    let sink = Sink::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.txt"), format!("{RCPT}\n")).unwrap();
    let config = dir.path().join("backstop.toml");
    let (text, _dns) =
        support::with_resolver(&queue_config(HOST, &dir.path().join("var"), sink.port));
    std::fs::write(&config, text).unwrap();
    let mut gw = Gateway::new(dir.path(), config);
    let addr = Arc::new(Mutex::new(gw.start()));
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..SENDERS)
        .map(|i| {
            let (addr, next, stop) = (addr.clone(), next.clone(), stop.clone());
            std::thread::spawn(move || sender(addr, next, stop, seed.wrapping_add(i + 1)))
        })
        .collect();

    let started = Instant::now();
    let mut rng = Rng(seed);
    let (mut slowest_start, mut slowest_kill) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(50 + rng.below(351)));
        let t0 = Instant::now();
        gw.kill9();
        slowest_kill = slowest_kill.max(t0.elapsed());
        if rng.below(2) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(100)));
        }
        let t0 = Instant::now();
        *addr.lock().unwrap() = gw.start();
        slowest_start = slowest_start.max(t0.elapsed());
    }
    // some mail for the last run too, then stop sending and keep it running
    std::thread::sleep(Duration::from_millis(300));
    let kills_done = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut t = Tally::default();
    for s in senders {
        t.merge(s.join().expect("sender thread"));
    }
    let sending = started.elapsed();

    let expected = |token: &str| {
        let n: u64 = token.strip_prefix("crash-")?.parse().ok()?;
        Some(dumped_body(token, lines_of(n)))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    // wait until every accepted message is at the sink and the queue is empty (or 60 s)
    let queue = loop {
        let view = at_sink(&sink.messages(), expected);
        let all_there = t
            .accepted
            .keys()
            .all(|&n| view.copies.contains_key(&crash_token(n)));
        if all_there || Instant::now() > deadline {
            let queue = gw.queue();
            if queue.is_empty() || Instant::now() > deadline {
                break queue;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // let anything still in flight land before counting duplicates
    let sink_view = at_sink(&sink.wait_for(0), expected);

    let accepted: BTreeSet<String> = t.accepted.keys().map(|&n| crash_token(n)).collect();
    let at_sink_tokens: BTreeSet<String> = sink_view.copies.keys().cloned().collect();
    let delivered = accepted.intersection(&at_sink_tokens).count();
    let lost: Vec<u64> = t
        .accepted
        .keys()
        .copied()
        .filter(|&n| !at_sink_tokens.contains(&crash_token(n)))
        .collect();
    let duplicated: BTreeMap<&String, &usize> =
        sink_view.copies.iter().filter(|(_, c)| **c > 1).collect();
    let without_250: Vec<&String> = at_sink_tokens.difference(&accepted).collect();
    let refused_but_delivered: Vec<&&String> = without_250
        .iter()
        .filter(|tok| {
            let n: u64 = tok.strip_prefix("crash-").unwrap().parse().unwrap();
            !t.no_reply.contains(&n)
        })
        .collect();
    let log = gw.log();
    if let Ok(f) = std::env::var("CRASH_LOG") {
        std::fs::write(f, &log).unwrap();
    }
    let torn = log.matches("ends in an incomplete write").count();

    eprintln!(
        "kill loop: {KILLS} kills, {} runs (slowest kill {} ms, slowest start {} ms, all done after {:.1} s), {:.1} s of sending, {} connections ({} without a greeting), {} transactions",
        gw.runs,
        slowest_kill.as_millis(),
        slowest_start.as_millis(),
        kills_done.as_secs_f64(),
        sending.as_secs_f64(),
        t.connections,
        t.no_greeting,
        t.attempted
    );
    eprintln!(
        "kill loop: accepted {} delivered {} duplicated {} (extra copies {}) lost {}",
        accepted.len(),
        delivered,
        duplicated.len(),
        duplicated.values().map(|c| **c - 1).sum::<usize>(),
        lost.len()
    );
    eprintln!(
        "kill loop: delivered without 250 {} (of {} sent without a reply); cut before the end {}; other replies {:?}; torn spool tails at start {}; damaged dumps {}",
        without_250.len(),
        t.no_reply.len(),
        t.broken,
        t.refused,
        torn,
        sink_view.damaged.len()
    );
    if let Some((d, what, at)) = t.slowest {
        let at = at.duration_since(UNIX_EPOCH).unwrap();
        eprintln!(
            "kill loop: longest wait for a reply {} ms, after {what}, from unix time {}.{:03}",
            d.as_millis(),
            at.as_secs(),
            at.subsec_millis()
        );
    }
    eprintln!(
        "kill loop: queue at the end: {} message(s) {:?}",
        queue.len(),
        state_counts(&queue)
    );
    if !duplicated.is_empty() {
        let first: Vec<_> = duplicated.iter().take(20).collect();
        eprintln!("kill loop: duplicated (first 20): {first:?}");
    }

    for &n in lost.iter().take(10) {
        let id = &t.accepted[&n];
        eprintln!(
            "LOST {} (queued as {id}); log lines with its id:\n{}",
            crash_token(n),
            grep(&log, id)
        );
    }
    assert!(
        lost.is_empty(),
        "{} message(s) got 250 but never reached the next hop: {:?}",
        lost.len(),
        lost.iter()
            .take(50)
            .map(|&n| crash_token(n))
            .collect::<Vec<_>>()
    );
    assert!(
        refused_but_delivered.is_empty(),
        "delivered although the client got a non-250 reply or the message was cut: {refused_but_delivered:?}"
    );
    assert!(
        sink_view.damaged.is_empty(),
        "{} dump(s) at the sink are not an intact copy of a message sent; the first:\n{}",
        sink_view.damaged.len(),
        sink_view.damaged[0]
    );
    assert!(
        queue.is_empty(),
        "queue not empty after everything was delivered: {:?}\n{queue:#?}",
        state_counts(&queue)
    );
    assert!(
        !accepted.is_empty(),
        "no message was accepted at all:\n{log}"
    );
    let status = gw.stop();
    eprintln!("kill loop: last run stopped: {status:?}");
}

/// A tmpfs mounted for the test; unmounted when dropped (lazily if it is still busy).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs on {} (this test needs root / CAP_SYS_ADMIN): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Writes `path` until the file system is full; the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![b'x'; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => panic!("filler: write returned 0"),
            Ok(k) => written += k as u64,
            Err(e) if e.kind() == io::ErrorKind::StorageFull => return written,
            Err(e) => panic!("filler: {e}"),
        }
    }
}

/// Lines in the disk-full test's messages: about 15 kB, more than one page, so that no
/// message fits in the last, partly used page of the spool segment.
const FULL_LINES: u64 = 250;

/// One message on a new connection; the reply after the final dot.
fn send_one(addr: SocketAddr, token: &str) -> String {
    let (mut c, g) = Conn::open(addr).expect("connect");
    assert!(g.starts_with("220 ") && g.contains(FULL_HOST), "{g}");
    let r = c.cmd("EHLO client.test").unwrap();
    assert!(r.starts_with("250"), "{r}");
    let reply = match c.transaction(&wire_message(token, FULL_LINES)) {
        Sent::Reply(r) => r,
        Sent::Refused(r) => panic!("{token}: refused before the message: {r}"),
        Sent::NoReply | Sent::Broken => panic!("{token}: connection lost"),
    };
    let _ = c.cmd("QUIT");
    reply
}

/// state_dir on a 4 MiB tmpfs. Two messages are queued (the next hop is down), then the disk is
/// filled: messages get `452 4.3.1` at the end of DATA (also a second one in the same session),
/// the gateway stays up and still lists the two. With space again, messages get `250`. A restart
/// pointing at a sink delivers exactly the messages that got `250`, intact, and none that got
/// `452`; the spool replays without damage.
#[test]
fn disk_full_gives_452_loses_nothing_and_recovers() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path();
    std::fs::write(dir.join("users.txt"), format!("{RCPT}\n")).unwrap();
    // declared before the gateway, so dropped (unmounted) after it has stopped
    let fs = Tmpfs::mount(&dir.join("fs"), "4m");
    let state = fs.0.join("state");
    let down = free_port(); // nothing listens there
    let mut b = Backstop::start(dir, &queue_config(FULL_HOST, &state, down));

    // queued before the disk fills
    let mut ok_ids = BTreeMap::new();
    for token in ["before-1", "before-2"] {
        let r = send_one(b.addr, token);
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{token}: {r}");
        ok_ids.insert(token.to_string(), queued_id(&r));
    }

    let filler = fs.0.join("filler");
    let filled = fill(&filler);
    eprintln!("disk full: filler {filled} bytes");

    // two in one session (the session goes on after a 452), one in a new session
    let (mut c, g) = Conn::open(b.addr).unwrap();
    assert!(g.starts_with("220 ") && g.contains(FULL_HOST), "{g}");
    assert!(c.cmd("EHLO client.test").unwrap().starts_with("250"));
    let mut full_replies = Vec::new();
    for token in ["full-1", "full-2"] {
        match c.transaction(&wire_message(token, FULL_LINES)) {
            Sent::Reply(r) => full_replies.push((token, r)),
            Sent::Refused(r) => panic!("{token}: refused before the message: {r}"),
            Sent::NoReply | Sent::Broken => {
                panic!("{token}: connection lost on a full disk:\n{}", b.log())
            }
        }
    }
    let _ = c.cmd("QUIT");
    full_replies.push(("full-3", send_one(b.addr, "full-3")));
    for (token, r) in &full_replies {
        assert!(
            r.starts_with("452 4.3.1 "),
            "{token}: expected 452 4.3.1 on a full disk, got {r:?}\nlog:\n{}",
            b.log()
        );
    }
    eprintln!("disk full: {}", full_replies[0].1);

    // still up, and still has the two messages from before
    let (mut c, g) = Conn::open(b.addr).expect("backstop still accepts connections");
    assert!(g.starts_with("220 ") && g.contains(FULL_HOST), "{g}");
    assert!(c.cmd("NOOP").unwrap().starts_with("250"));
    let _ = c.cmd("QUIT");
    let listed: BTreeSet<String> = queue_list(&b.config)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let before: BTreeSet<String> = ok_ids.values().cloned().collect();
    assert_eq!(listed, before, "queue while the disk is full");

    // space again
    std::fs::remove_file(&filler).unwrap();
    for token in ["after-1", "after-2"] {
        let r = send_one(b.addr, token);
        assert!(
            r.starts_with("250 2.0.0 Ok: queued as "),
            "{token} after space came back: {r}\nlog:\n{}",
            b.log()
        );
        ok_ids.insert(token.to_string(), queued_id(&r));
    }
    let listed = queue_list(&b.config);
    assert_eq!(listed.len(), 4, "{listed:#?}");
    let first_log = b.log();
    eprintln!(
        "disk full: first run logged {} line(s) about insufficient storage:\n{}",
        first_log.matches("insufficient storage").count(),
        grep(&first_log, "insufficient storage")
    );
    assert!(
        b.stop().is_some_and(|s| s.success()),
        "did not stop cleanly:\n{first_log}"
    );

    // restart with the next hop up: the spool replays and everything that got 250 goes out
    let sink = Sink::start();
    let mut b = Backstop::start(dir, &queue_config(FULL_HOST, &state, sink.port));
    let tokens: BTreeSet<String> = ok_ids.keys().cloned().collect();
    let expected = |token: &str| Some(dumped_body(token, FULL_LINES));
    wait_until(30, || {
        let s = at_sink(&sink.messages(), expected);
        tokens.iter().all(|t| s.copies.contains_key(t))
    });
    assert!(
        wait_until(20, || queue_list(&b.config).is_empty()),
        "queue not emptied: {:#?}",
        queue_list(&b.config)
    );
    let s = at_sink(&sink.wait_for(0), expected);
    let second_log = b.log();
    let delivered: BTreeSet<String> = s.copies.keys().cloned().collect();
    let duplicated: Vec<_> = s.copies.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "disk full: accepted {} delivered {} duplicated {} lost {} (452: {})",
        tokens.len(),
        tokens.intersection(&delivered).count(),
        duplicated.len(),
        tokens.difference(&delivered).count(),
        full_replies.len()
    );
    assert!(
        s.damaged.is_empty(),
        "dumps at the sink that are not an intact message: {:#?}",
        s.damaged
    );
    assert_eq!(
        delivered, tokens,
        "at the sink vs. got 250 (those that got 452 must not arrive)\nfirst run:\n{first_log}\nsecond run:\n{second_log}"
    );
    assert!(duplicated.is_empty(), "delivered twice: {duplicated:?}");
    let damage: Vec<&str> = second_log
        .lines()
        .filter(|l| l.contains("spool") && (l.contains("WARN") || l.contains("ERROR")))
        .collect();
    assert!(
        damage.is_empty(),
        "the spool written on a full disk replays with damage:\n{}",
        damage.join("\n")
    );
    assert!(b.stop().is_some_and(|s| s.success()));
    drop(b);
    drop(fs);
}
