//! A DNSSEC-signed root zone on loopback for end-to-end tests: the zone's records written to a
//! file, a key-signing and a zone-signing key made by `ldns-keygen` (ECDSA P-256), the zone
//! signed by `ldns-signzone`, and served by NSD (Debian packages ldnsutils and nsd) on a free
//! port of 127.0.0.1 and nothing else. The key-signing key's DNSKEY record is the trust
//! anchor a resolver validates with. NSD is stopped by PID when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NSD serving one signed zone.
pub struct SignedZone {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    /// The file with the zone's key-signing DNSKEY record.
    pub trust_anchor: PathBuf,
    child: Child,
}

fn run(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} (apt-get install ldnsutils nsd): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl SignedZone {
    /// Signs a root zone holding `records` (zone-file lines, names absolute) in `dir` and
    /// serves it: with its own key as the root's, a validating resolver needs nothing above it.
    pub fn start(dir: &Path, records: &[String]) -> SignedZone {
        let zone = format!(
            "$ORIGIN .\n$TTL 300\n. IN SOA ns.root.test. hostmaster.root.test. 1 3600 600 86400 300\n\
             . IN NS ns.root.test.\nns.root.test. IN A 127.0.0.1\n{}\n",
            records.join("\n")
        );
        std::fs::write(dir.join("zone"), zone).unwrap();
        let origin = ".";
        let ksk = run(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", origin]);
        let zsk = run(dir, "ldns-keygen", &["-a", "ECDSAP256SHA256", origin]);
        run(dir, "ldns-signzone", &["-n", "-o", ".", "zone", &ksk, &zsk]);
        let trust_anchor = dir.join(format!("{ksk}.key"));
        for _ in 0..20 {
            let port = super::free_port();
            let conf = dir.join("nsd.conf");
            let d = dir.display();
            std::fs::write(
                &conf,
                format!(
                    "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n\
                     chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n\
                     xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n\
                     logfile: \"{d}/nsd.log\"\n  verbosity: 1\nremote-control:\n  control-enable: no\n\
                     zone:\n  name: \".\"\n  zonefile: zone.signed\n"
                ),
            )
            .unwrap();
            let mut child = Command::new("/usr/sbin/nsd")
                .args(["-d", "-c"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("/usr/sbin/nsd (apt-get install nsd)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(addr).is_ok() {
                    return SignedZone {
                        addr,
                        trust_anchor,
                        child,
                    };
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("nsd did not start; see {}/nsd.log", dir.display());
    }
}

impl Drop for SignedZone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
