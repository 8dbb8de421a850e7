//! A private DNS server on loopback for end-to-end tests: dnsmasq (Debian package
//! `dnsmasq-base`, /usr/sbin/dnsmasq) serving only the records a test gives it, on a free
//! UDP+TCP port of 127.0.0.1. It has no upstream servers and is authoritative for `.test`:
//! unknown names under `.test` get NXDOMAIN, names elsewhere get REFUSED. Stopped by PID
//! when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where dnsmasq is installed by `apt-get install dnsmasq-base`.
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A running dnsmasq; killed when dropped.
pub struct Dns {
    /// Where it answers, over UDP and TCP.
    pub addr: SocketAddr,
    child: Child,
}

impl Dns {
    /// Starts dnsmasq with `args` (its records and any other options), for example
    /// `--mx-host=example.test,mx.example.test,10`, `--host-record=mx.example.test,127.0.0.1,::1`,
    /// `--txt-record=...`, `--dns-rr=NAME,TYPE,HEX` and `--mx-host=nullmx.test,.,0` (null MX).
    /// Returns once it answers queries. Panics if it cannot be started.
    pub fn start(args: &[String]) -> Dns {
        for _ in 0..20 {
            let port = free_udp_port();
            let mut child = Command::new(DNSMASQ)
                .args(["--keep-in-foreground", "--conf-file=/dev/null"])
                .args(["--no-resolv", "--no-hosts", "--local=/test/"])
                .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                .args(["--pid-file=", "--log-facility=-"])
                .arg(format!("--port={port}"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{DNSMASQ} (apt-get install dnsmasq-base): {e}"));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if answers(&mut child, addr) {
                return Dns { addr, child };
            }
            // Exited (the port was taken meanwhile, or a bad argument) or never answered.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start; check the arguments with `{DNSMASQ} --test {args:?}`");
    }
}

impl Dns {
    /// Makes it read its hosts files (`--addn-hosts=FILE`) again (SIGHUP to our own child).
    #[allow(dead_code)] // this file is also compiled into unit tests that do not reload
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port of 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// Whether the dnsmasq just started answers on `addr` within 5 s; false as soon as it exits.
/// dnsmasq binds UDP and TCP before it answers, so an answer means both are ready.
fn answers(child: &mut Child, addr: SocketAddr) -> bool {
    // A query for `. A`: any reply (REFUSED) will do.
    let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let _ = socket.send_to(&query, addr);
        if socket.recv_from(&mut [0; 512]).is_ok() {
            return true;
        }
    }
    false
}
