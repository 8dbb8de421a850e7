//! Real peers on loopback for end-to-end tests: the `backstop` binary, a Postfix instance
//! (tests/support/postfix-peer.sh), Postfix's smtp-sink and smtp-source, swaks, and a small
//! line-based SMTP client. Every process is started here and stopped by PID when dropped.

#![allow(dead_code)]

pub mod dns;
#[allow(dead_code)] // only the DANE tests use it
pub mod signed_zone;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A TCP port that was free a moment ago, and never handed out before in this test process:
/// the kernel may give a port it just gave back to the next `bind(0)`, so that two tests
/// running side by side (a Postfix peer that binds seconds later) would get the same one.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A temporary directory that Postfix's and smtp-sink's unprivileged users can use.
pub fn world_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Polls `f` every 50 ms for up to `secs` seconds.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn wait_listening(port: u16) {
    assert!(
        wait_until(20, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "nothing listens on {port}"
    );
}

fn terminate(child: &mut Child) -> Option<ExitStatus> {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok();
    None
}

/// A running `backstop serve`.
pub struct Backstop {
    child: Option<Child>,
    /// The SMTP listener.
    pub addr: SocketAddr,
    /// Where its config file is.
    pub config: PathBuf,
    log: Arc<Mutex<String>>,
    dns: Option<dns::Dns>,
}

/// `config` with a loopback resolver: its own, or a new empty dnsmasq's (keep it alive as long
/// as the gateway runs).
pub fn with_resolver(config: &str) -> (String, Option<dns::Dns>) {
    if config.contains("resolver") {
        return (config.to_string(), None);
    }
    let dns = dns::Dns::start(&[]);
    let line = format!("resolver = \"{}\"\n", dns.addr);
    let config = match config.find("[delivery]\n") {
        Some(at) => {
            let at = at + "[delivery]\n".len();
            format!("{}{line}{}", &config[..at], &config[at..])
        }
        None => format!("{config}\n[delivery]\n{line}"),
    };
    (config, Some(dns))
}

impl Backstop {
    /// Writes `config` to `dir/backstop.toml` and starts the gateway on it (`addr` in the
    /// config should use port 0; the bound port is read from the log).
    ///
    /// Tests must not ask any DNS server but their own: when `config` names no
    /// `[delivery] resolver`, an empty dnsmasq on loopback is started for this gateway and
    /// configured (so SPF/DKIM lookups for report eligibility stay on 127.0.0.1 and get
    /// NXDOMAIN).
    pub fn start(dir: &Path, config: &str) -> Backstop {
        let (config, dns) = with_resolver(config);
        let path = dir.join("backstop.toml");
        std::fs::write(&path, config).unwrap();
        let p = path.to_str().unwrap().to_string();
        let mut b = Backstop::start_with(dir, &["serve", "--config", &p], path);
        b.dns = dns;
        b
    }

    /// Starts `backstop ARGS...` in `cwd` and waits for its "listening on" line.
    pub fn start_with(cwd: &Path, args: &[&str], config: PathBuf) -> Backstop {
        Backstop::start_wrapped(cwd, &[], args, &[], config)
    }

    /// Starts `WRAPPER... backstop ARGS...` (e.g. `setpriv --reuid=...` to run it as another
    /// user) in `cwd` with `env` added, and waits for its "listening on" line.
    pub fn start_wrapped(
        cwd: &Path,
        wrapper: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
        config: PathBuf,
    ) -> Backstop {
        let bin = env!("CARGO_BIN_EXE_backstop");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info")
            .env_remove("BACKSTOP_CONFIG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backstop");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on ").nth(1) {
                    let _ = tx.send(a.split_whitespace().next().unwrap_or("").to_string());
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("backstop did not start:\n{}", log.lock().unwrap());
            }
        };
        Backstop {
            child: Some(child),
            addr,
            config,
            log,
            dns: None,
        }
    }

    /// The web listener's address (`[web] addr`), read from its start-up line.
    pub fn web(&self) -> SocketAddr {
        let log = self.log();
        let a = log
            .split("web: dashboard at http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no web listener in the log:\n{log}"));
        a.parse().unwrap()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Log lines containing all of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// The number of log lines matching `needles` once it has reached `n` (or after 5 s): log
    /// lines arrive through a pipe a moment after the SMTP reply.
    pub fn count_reaching(&self, needles: &[&str], n: usize) -> usize {
        wait_until(5, || self.count(needles) >= n);
        std::thread::sleep(Duration::from_millis(100));
        self.count(needles)
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends a signal (`HUP`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([&format!("-{name}"), &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then its exit status (None if it had to be killed).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut c| terminate(&mut c))
    }

    /// SIGKILL (a crash: no cleanup at all), and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs another `backstop` command with this instance's config; (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        run_backstop(
            args.iter()
                .copied()
                .chain(["--config", self.config.to_str().unwrap()]),
        )
    }
}

impl Drop for Backstop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the backstop binary to completion; (exit code, stdout, stderr).
pub fn run_backstop<'a>(args: impl IntoIterator<Item = &'a str>) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .env_remove("BACKSTOP_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Postfix's smtp-sink, dumping every message it receives into a directory.
pub struct Sink {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    /// Starts a sink on a free port.
    pub fn start() -> Sink {
        Sink::start_on(free_port())
    }

    /// Starts a sink on `port` (for a next hop configured before the sink runs).
    pub fn start_on(port: u16) -> Sink {
        Sink::start_with(port, &[])
    }

    /// Starts a sink on `port` with more smtp-sink options (`-w 3`: answer DATA after 3 s).
    pub fn start_with(port: u16, options: &[&str]) -> Sink {
        let dir = world_dir();
        let template = format!("{}/m.", dir.path().display());
        let child = Command::new("/usr/sbin/smtp-sink")
            .args(["-u", "nobody", "-d", &template])
            .args(options)
            .args([&format!("127.0.0.1:{port}"), "256"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink (is postfix installed?)");
        wait_listening(port);
        Sink { child, port, dir }
    }

    /// The dumped transactions (smtp-sink's format: X-Mail-Args, X-Rcpt-Args, then the message).
    pub fn messages(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("m."))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        v.sort();
        v
    }

    /// Waits until at least `n` messages arrived (or 20 s passed) and their files stopped
    /// changing (smtp-sink writes a dump while the transaction runs), and returns them all.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        wait_until(20, || self.messages().len() >= n);
        let mut last = self.messages();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.messages();
            if now == last {
                return now;
            }
            last = now;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/postfix-peer.sh")
}

/// A real Postfix instance, as the internal server: knows a list of users, rejects others at
/// RCPT with 550 5.1.1, relays what it accepts to a sink.
pub struct Postfix {
    dir: tempfile::TempDir,
    /// Its SMTP port.
    pub port: u16,
    running: bool,
}

impl Postfix {
    /// Starts an internal server for `domain` with `users`, relaying to `sink_port`.
    pub fn internal(domain: &str, users: &[&str], sink_port: u16) -> Postfix {
        Postfix::internal_with(domain, users, sink_port, "")
    }

    /// Like [`Postfix::internal`], with extra main.cf lines.
    pub fn internal_with(domain: &str, users: &[&str], sink_port: u16, main_cf: &str) -> Postfix {
        let dir = world_dir();
        let users_file = dir.path().join("users");
        std::fs::write(
            &users_file,
            users.iter().map(|u| format!("{u}\n")).collect::<String>(),
        )
        .unwrap();
        let role = [
            "internal",
            domain,
            users_file.to_str().unwrap(),
            &sink_port.to_string(),
        ];
        Postfix::start_role(dir, &role, main_cf)
    }

    /// A Postfix gateway for `domain` that relays through its queue to `next_port`, with
    /// extra main.cf lines (later lines win: `smtpd_recipient_restrictions = ...` replaces
    /// its own).
    pub fn gateway_with(domain: &str, next_port: u16, main_cf: &str) -> Postfix {
        let role = ["gateway", domain, &next_port.to_string()];
        Postfix::start_role(world_dir(), &role, main_cf)
    }

    fn start_role(dir: tempfile::TempDir, role: &[&str], main_cf: &str) -> Postfix {
        let port = free_port();
        let mut pf = Postfix {
            dir,
            port,
            running: false,
        };
        let status = Command::new("bash")
            .arg(peer_script())
            .args(["start", pf.conf().to_str().unwrap(), &port.to_string()])
            .args(role)
            .env("PEER_MAIN_CF", main_cf)
            .status()
            .unwrap();
        assert!(status.success(), "postfix did not start");
        pf.running = true;
        pf
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("pf")
    }

    /// Changes the users it knows (its relay_recipient_maps) and restarts it, as an
    /// administrator would after removing an account (a reload would leave the smtpd
    /// processes of kept-alive connections on the old table).
    pub fn set_users(&self, users: &[&str]) {
        let valid: String = users.iter().map(|u| format!("{u} OK\n")).collect();
        std::fs::write(self.conf().join("valid"), valid).unwrap();
        for verb in ["stop", "start"] {
            let ok = Command::new("postfix")
                .args(["-c", self.conf().to_str().unwrap(), verb])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            assert!(ok, "postfix {verb}");
        }
        wait_listening(self.port);
    }

    /// Its log.
    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.conf().join("maillog")).unwrap_or_default()
    }

    /// Lines of its log where it rejected RCPT TO:<addr>.
    pub fn rejects_of(&self, addr: &str) -> usize {
        let needle = format!("to=<{addr}>");
        self.maillog()
            .lines()
            .filter(|l| l.contains("reject: RCPT") && l.contains(&needle))
            .count()
    }

    /// The most RCPTs it rejected on any one client connection (open or closed), found from
    /// its log: each smtpd process serves one connection at a time, from `connect from` on.
    pub fn most_rejects_on_one_connection(&self) -> usize {
        let mut now: std::collections::HashMap<String, usize> = Default::default();
        let mut most = 0;
        for line in self.maillog().lines() {
            let Some(pid) = line
                .split_once("smtpd[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .map(|(pid, _)| pid.to_string())
            else {
                continue;
            };
            if line.contains(": connect from ") {
                now.insert(pid, 0);
            } else if line.contains("reject: RCPT") {
                let n = now.entry(pid).or_default();
                *n += 1;
                most = most.max(*n);
            }
        }
        most
    }

    /// Stops it (it can be started again with [`Postfix::restart`]).
    pub fn stop(&mut self) {
        if self.running {
            let _ = Command::new("bash")
                .arg(peer_script())
                .arg("stop")
                .arg(self.conf())
                .status();
            self.running = false;
        }
    }

    /// True when its message queue is empty (nothing deferred, no bounce waiting).
    pub fn queue_is_empty(&self) -> bool {
        let out = Command::new("postqueue")
            .args(["-c", self.conf().to_str().unwrap(), "-j"])
            .output()
            .unwrap();
        out.stdout.is_empty()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal blocking SMTP client that returns replies as text, for exact assertions.
pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    /// Connects and returns the client and the greeting.
    pub fn connect(addr: SocketAddr) -> (Client, String) {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let g = c.reply();
        (c, g)
    }

    /// Sends bytes as they are.
    pub fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// Sends a command line (CRLF added) and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// Reads one (possibly multi-line) reply; lines joined with '\n', CRLF removed.
    pub fn reply(&mut self) -> String {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                out.push("<closed>".to_string());
                break;
            }
            let line = line.trim_end_matches(['\r', '\n']).to_string();
            let more = line.as_bytes().get(3) == Some(&b'-');
            out.push(line);
            if !more {
                break;
            }
        }
        out.join("\n")
    }

    /// True when the server sends nothing for `d`.
    pub fn silent_for(&mut self, d: Duration) -> bool {
        self.w.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        let silent = matches!(self.r.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
        self.w
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        silent
    }

    /// True when the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0))
    }
}

/// One HTTP/1.1 request to `addr` (`Connection: close`): (status, body).
#[allow(dead_code)]
pub fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = raw.get(end + 4..).unwrap_or(&[]);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = match head.contains("transfer-encoding: chunked") {
        true => dechunk(body),
        false => body.to_vec(),
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]).trim().to_string();
        let n = usize::from_str_radix(&size, 16).unwrap_or(0);
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Runs swaks with these arguments against `addr`; (exit code, transcript).
/// Runs `cmd` with `input` on its standard input; its output (standard output and error
/// captured).
#[allow(dead_code)]
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

pub fn swaks(addr: SocketAddr, args: &[&str]) -> (i32, String) {
    let out = Command::new("swaks")
        .args([
            "--server",
            &addr.to_string(),
            "--helo",
            "client.test",
            "--timeout",
            "30",
        ])
        .args(args)
        .output()
        .expect("swaks (is it installed?)");
    let mut t = String::from_utf8_lossy(&out.stdout).into_owned();
    t.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), t)
}

/// A `[[domain]]` table for `name` whose recipients are the list file `list`, delivered into
/// Maildir `m`, with `extra` lines (batv, backscatter ...) in it.
#[allow(dead_code)]
pub fn list_domain(name: &str, list: &Path, extra: &str) -> String {
    format!(
        "[[domain]]\nname = \"{name}\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n{extra}",
        list.display()
    )
}

/// A config for `domain` with the given sources and next hop, listening on a free port.
pub fn config(
    state_dir: &Path,
    domain: &str,
    recipients: &[String],
    next_hop: &str,
    extra: &str,
) -> String {
    let rcpts: Vec<String> = recipients.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "hostname = \"mx.example.test\"\nstate_dir = {:?}\n{extra}\n[[listen]]\naddr = \"127.0.0.1:0\"\n\n[[domain]]\nname = {domain:?}\nrecipients = [{}]\nnext_hop = {next_hop:?}\n",
        state_dir.display().to_string(),
        rcpts.join(", ")
    )
}

/// A config whose domain `example.test` has one list source with `users` (written to
/// `dir/users.txt`) and the given next hop; state in `dir/state`.
pub fn list_config(dir: &Path, users: &[&str], next_hop: &str, extra: &str) -> String {
    let list = dir.join("users.txt");
    std::fs::write(
        &list,
        users.iter().map(|u| format!("{u}\n")).collect::<String>(),
    )
    .unwrap();
    config(
        &dir.join("state"),
        "example.test",
        &[format!("list:{}", list.display())],
        next_hop,
        extra,
    )
}

/// A private `redis-server` on a free loopback port, stopped (by its PID) when dropped.
#[allow(dead_code)]
pub struct RedisServer {
    child: Child,
    /// Its port.
    pub port: u16,
    /// `redis://127.0.0.1:PORT/`
    pub url: String,
    dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RedisServer {
    /// Starts one (Debian's `redis-server`; the test command installs it) and waits until it
    /// answers.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port(), tempfile::tempdir().unwrap())
    }

    fn start_on(port: u16, dir: tempfile::TempDir) -> RedisServer {
        RedisServer::start_with(port, dir, &[])
    }

    fn start_with(port: u16, dir: tempfile::TempDir, extra: &[&str]) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian redis-server; scripts/test installs it)");
        wait_listening(port);
        RedisServer {
            child,
            port,
            url: format!("redis://127.0.0.1:{port}/"),
            dir,
        }
    }

    /// Starts one that speaks only TLS, on a free port (`rediss://127.0.0.1:PORT/`), with
    /// `files`; it asks clients for a certificate signed by `files.ca` when `auth_clients`.
    pub fn start_tls(files: &RedisTlsFiles, auth_clients: bool) -> RedisServer {
        RedisServer::start_tls_with(files, auth_clients, &[])
    }

    /// [`RedisServer::start_tls`] with more `redis-server` options.
    fn start_tls_with(files: &RedisTlsFiles, auth_clients: bool, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let p = port.to_string();
        let auth = if auth_clients { "yes" } else { "no" };
        let mut args = files.options(&p);
        args.extend(["--tls-auth-clients".to_string(), auth.to_string()]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // `--port 0` after start_with's `--port PORT`: the later one counts (no plaintext)
        let mut server = RedisServer::start_with(port, tempfile::tempdir().unwrap(), &args);
        server.url = format!("rediss://127.0.0.1:{port}/");
        server
    }

    /// Stops it (as a crash would: SIGKILL), keeping the port for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (empty: it keeps nothing on disk).
    pub fn restart(self) -> RedisServer {
        let mut old = self;
        old.stop();
        let dir = std::mem::replace(&mut old.dir, tempfile::tempdir().unwrap());
        RedisServer::start_on(old.port, dir)
    }
}

/// The PEM files of a TLS-only `redis-server`.
#[allow(dead_code)]
pub struct RedisTlsFiles {
    /// Its certificate (for 127.0.0.1).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA it verifies clients (and, replicating or in a cluster, its peers) with.
    pub ca: PathBuf,
}

impl RedisTlsFiles {
    /// The `redis-server` options for TLS only, on `port`.
    fn options(&self, port: &str) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        [
            ("--port", "0".to_string()),
            ("--tls-port", port.to_string()),
            ("--tls-cert-file", path(&self.cert)),
            ("--tls-key-file", path(&self.key)),
            ("--tls-ca-cert-file", path(&self.ca)),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of three masters on free loopback ports (`redis-cli --cluster create`),
/// stopped when dropped.
#[allow(dead_code)]
pub struct RedisCluster {
    /// Its nodes.
    pub nodes: Vec<RedisServer>,
}

#[allow(dead_code)]
impl RedisCluster {
    /// Starts the nodes, joins them, and waits until the cluster is ok.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let conf = dir.path().join("nodes.conf");
                let conf = conf.to_str().unwrap().to_string();
                RedisServer::start_with(
                    free_port(),
                    dir,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
                )
            })
            .collect();
        RedisCluster::join(nodes, None)
    }

    /// Starts one whose nodes speak only TLS, to clients and to each other, with `files`.
    pub fn start_tls(files: &RedisTlsFiles) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                // in the node's --dir
                let cluster = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ];
                let tls = ["--tls-cluster", "yes", "--cluster-port", &bus];
                RedisServer::start_tls_with(files, false, &[&cluster[..], &tls[..]].concat())
            })
            .collect();
        RedisCluster::join(nodes, Some(files))
    }

    /// Joins `nodes` (asking them over TLS with `tls`) and waits until the cluster is ok.
    fn join(nodes: Vec<RedisServer>, tls: Option<&RedisTlsFiles>) -> RedisCluster {
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(cli_tls(tls))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(20, || {
            nodes.iter().all(|n| {
                redis_cli_with(n.port, tls, &["cluster", "info"]).contains("cluster_state:ok")
            })
        });
        assert!(ok, "the cluster did not come up");
        RedisCluster { nodes }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }
}

/// A Redis master with one replica, watched by one Redis Sentinel (master name `mymaster`),
/// all on free loopback ports; stopped when dropped.
#[allow(dead_code)]
pub struct RedisSentinel {
    /// The master (first) and the replica.
    pub servers: Vec<RedisServer>,
    /// The sentinel.
    pub sentinel: RedisServer,
    /// `redis-cli` options to reach them (TLS).
    cli: Vec<String>,
}

#[allow(dead_code)]
impl RedisSentinel {
    /// Starts them and waits until the replica is in sync and the sentinel sees both.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let mp = master.port.to_string();
        let replica = RedisServer::start_with(
            free_port(),
            tempfile::tempdir().unwrap(),
            &["--replicaof", "127.0.0.1", &mp],
        );
        let port = free_port();
        RedisSentinel::watch(master, replica, format!("port {port}\n"), port, None)
    }

    /// Starts them speaking only TLS, to clients and to each other, with `files`.
    pub fn start_tls(files: &RedisTlsFiles) -> RedisSentinel {
        let master = RedisServer::start_tls(files, false);
        let mp = master.port.to_string();
        let replicate = ["--replicaof", "127.0.0.1", &mp, "--tls-replication", "yes"];
        let replica = RedisServer::start_tls_with(files, false, &replicate);
        let port = free_port();
        let conf = format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        );
        RedisSentinel::watch(master, replica, conf, port, Some(files))
    }

    /// Starts a sentinel on `port` (its configuration begins with `listen`) watching `master`,
    /// and waits until the replica is in sync and the sentinel sees both.
    fn watch(
        master: RedisServer,
        replica: RedisServer,
        listen: String,
        port: u16,
        tls: Option<&RedisTlsFiles>,
    ) -> RedisSentinel {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds mymaster 500\nsentinel failover-timeout mymaster 5000\n",
                dir.path().display(),
                master.port
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        wait_listening(port);
        let scheme = if tls.is_some() { "rediss" } else { "redis" };
        let sentinel = RedisServer {
            child,
            port,
            url: format!("{scheme}://127.0.0.1:{port}/"),
            dir,
        };
        let in_sync = wait_until(20, || {
            redis_cli_with(replica.port, tls, &["info", "replication"])
                .contains("master_link_status:up")
                && redis_cli_with(port, tls, &["sentinel", "replicas", "mymaster"])
                    .contains(&format!("{}", replica.port))
        });
        assert!(in_sync, "the replica or the sentinel did not come up");
        RedisSentinel {
            servers: vec![master, replica],
            sentinel,
            cli: cli_tls(tls),
        }
    }

    /// The port of the master the sentinel names now.
    pub fn master_port(&self) -> u16 {
        let out = Command::new("redis-cli")
            .args(&self.cli)
            .args(["-h", "127.0.0.1", "-p", &self.sentinel.port.to_string()])
            .args(["sentinel", "get-master-addr-by-name", "mymaster"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// `redis-cli` options for a TLS-only server whose certificate `tls.ca` signed.
fn cli_tls(tls: Option<&RedisTlsFiles>) -> Vec<String> {
    match tls {
        Some(f) => vec![
            "--tls".into(),
            "--cacert".into(),
            f.ca.display().to_string(),
        ],
        None => Vec::new(),
    }
}

/// `redis-cli -p PORT ARGS...`: what it printed.
#[allow(dead_code)]
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    redis_cli_with(port, None, args)
}

/// [`redis_cli`], over TLS with `tls`.
fn redis_cli_with(port: u16, tls: Option<&RedisTlsFiles>, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(cli_tls(tls))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A bounce as a backscatter victim's server writes it: a DSN for mail that was never sent
/// from here (its quoted Message-ID `<never-sent@example.test>`, its path through a foreign
/// relay); `RCPT` stands for the recipient (the forged sender).
pub const FORGED_BOUNCE: &str = "From: MAILER-DAEMON@spam-victim.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.spam-victim.test\r\n\r\n\
Final-Recipient: rfc822; nobody@spam-victim.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\n\
Received: from botnet.test by mx.spam-victim.test; Mon, 23 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <never-sent@example.test>\r\nFrom: RCPT\r\nSubject: cheap pills\r\n\r\n--b--\r\n";

fn slapd_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/slapd.sh")
}

/// The directory of the LDAP tests (tests/support/ldap-example.ldif): alice, bob (with an
/// alias and AD-style proxyAddresses), carol (disabled), the group sales, all under
/// [`Slapd::BASE`]; dave outside it.
pub fn ldap_example_ldif() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/ldap-example.ldif")
}

/// A private OpenLDAP slapd (tests/support/slapd.sh) on free loopback ports, plain with
/// StartTLS and LDAPS, loaded with [`ldap_example_ldif`]; stopped by its PID when dropped.
#[allow(dead_code)]
pub struct Slapd {
    dir: tempfile::TempDir,
    /// The ldap:// port (StartTLS too).
    pub port: u16,
    /// The ldaps:// port.
    pub tls_port: u16,
    running: bool,
}

#[allow(dead_code)]
impl Slapd {
    /// Where the example's users and groups are.
    pub const BASE: &str = "ou=people,dc=example,dc=test";
    /// The manager, who may write everything.
    pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=test";
    /// Its password.
    pub const ADMIN_PW: &str = "secret";

    /// Starts one with the example directory.
    pub fn start() -> Slapd {
        let mut slapd = Slapd {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            tls_port: free_port(),
            running: false,
        };
        slapd.run_start();
        slapd.add(&ldap_example_ldif());
        slapd
    }

    fn run_start(&mut self) {
        let out = Command::new("bash")
            .arg(slapd_script())
            .arg("start")
            .arg(self.conf())
            .args([self.port.to_string(), self.tls_port.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slapd did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.running = true;
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("ldap")
    }

    /// `ldap://127.0.0.1:PORT` (StartTLS works there too).
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:TLS_PORT`.
    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// The CA (PEM) that signed its certificate (for 127.0.0.1 and localhost).
    pub fn ca_file(&self) -> PathBuf {
        self.conf().join("tls/ca.pem")
    }

    /// Its log (`-d stats`: a line per operation, `SRCH base=... filter="(...)"` for each search;
    /// filters appear as slapd re-encodes them: `\2A` for an escaped `*`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.conf().join("slapd.log")).unwrap_or_default()
    }

    /// The filters of the searches it served so far, in order.
    pub fn filters(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" SRCH base="))
            .filter_map(|l| {
                l.split_once(" filter=\"")?
                    .1
                    .strip_suffix('"')
                    .map(String::from)
            })
            .collect()
    }

    /// True once its log contains `needle` (waits up to 5 s: slapd logs after it answers).
    pub fn log_reaching(&self, needle: &str) -> bool {
        wait_until(5, || self.log().contains(needle))
    }

    /// `ldapadd` as the manager, from an LDIF file.
    pub fn add(&self, ldif: &Path) {
        let out = Command::new("ldapadd")
            .args([
                "-x",
                "-H",
                &self.url(),
                "-D",
                Slapd::ADMIN_DN,
                "-w",
                Slapd::ADMIN_PW,
            ])
            .arg("-f")
            .arg(ldif)
            .output()
            .expect("ldapadd (Debian ldap-utils)");
        assert!(
            out.status.success(),
            "ldapadd {}: {}",
            ldif.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ldapsearch -x -LLL` under [`Slapd::BASE`] at `url` (one of [`Slapd::url`],
    /// [`Slapd::ldaps_url`]) with more `options` (`-ZZ` for StartTLS), trusting
    /// [`Slapd::ca_file`]: (exit code, LDIF of the entries found, all their attributes).
    pub fn search(&self, url: &str, filter: &str, options: &[&str]) -> (i32, String) {
        self.search_attrs(url, filter, options, &[])
    }

    /// [`Slapd::search`] returning only the attributes `attrs`.
    pub fn search_attrs(
        &self,
        url: &str,
        filter: &str,
        options: &[&str],
        attrs: &[&str],
    ) -> (i32, String) {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-o",
                "nettimeout=10",
                "-H",
                url,
                "-b",
                Slapd::BASE,
            ])
            .args(options)
            .arg(filter)
            .args(attrs)
            .env("LDAPTLS_CACERT", self.ca_file())
            .env("LDAPTLS_REQCERT", "demand")
            .output()
            .expect("ldapsearch (Debian ldap-utils)");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Stops it (by its PID); [`Slapd::restart`] starts it again.
    pub fn stop(&mut self) {
        if self.running {
            let _ = Command::new("bash")
                .arg(slapd_script())
                .arg("stop")
                .arg(self.conf())
                .status();
            self.running = false;
        }
    }

    /// Stops it if it runs, and starts it again on the same ports with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.run_start();
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}
