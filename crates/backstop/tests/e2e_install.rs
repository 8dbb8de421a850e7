//! Installing and running backstop as a service, through the real binary: `check-config`
//! refuses what `serve` would refuse (and `--connect` tries the internal servers), the
//! configuration is found the same way by every command, serve runs as an unprivileged user
//! (a low port with the capability the systemd unit gives, a clear error without it), systemd
//! is told when it is ready, reloading and stopping, and the Debian package holds the binary,
//! a unit that passes `systemd-analyze verify`, the default configuration and the man pages.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{Backstop, Sink, list_config, run_backstop, swaks};

/// nobody:nogroup on Debian.
const NOBODY: &str = "65534";

fn check_config(args: &[&str]) -> (i32, String, String) {
    run_backstop(std::iter::once("check-config").chain(args.iter().copied()))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let good = list_config(dir.path(), &["alice@example.test"], &maildir, "");

    // a certificate that does not parse
    let cert = write(
        dir.path(),
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    );
    let with_tls = good.replace(
        "addr = \"127.0.0.1:0\"",
        &format!(
            "addr = \"127.0.0.1:0\"\ntls_cert = {0:?}\ntls_key = {0:?}",
            cert.display().to_string()
        ),
    );
    let f = write(dir.path(), "tls.toml", &with_tls);
    let (code, _, err) = check_config(&[f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("listen[0]") && err.contains("cert.pem"),
        "{err}"
    );

    // a list file with a line that is no address
    std::fs::write(
        dir.path().join("users.txt"),
        "alice@example.test\nnot-an-address\n",
    )
    .unwrap();
    let f = write(dir.path(), "list.toml", &good);
    let (code, _, err) = check_config(&[f.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("users.txt:2") && err.contains("not-an-address"),
        "{err}"
    );

    // a Postfix recipient map works as it is
    std::fs::write(
        dir.path().join("users.txt"),
        "alice@example.test OK\n@whole.test   OK\n",
    )
    .unwrap();
    let (code, out, err) = check_config(&[f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hostname = \"mx.example.test\""), "{out}");

    // a state directory the user cannot write
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.path().join("users.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let f = write(
        dir.path(),
        "state.toml",
        &good.replace(
            &format!(
                "state_dir = {:?}",
                dir.path().join("state").display().to_string()
            ),
            &format!("state_dir = {:?}", locked.display().to_string()),
        ),
    );
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(env!("CARGO_BIN_EXE_backstop"))
        .args(["check-config", f.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot write") && err.contains("locked"),
        "{err}"
    );
}

#[test]
fn every_command_finds_the_configuration_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let f = write(
        dir.path(),
        "b.toml",
        &list_config(dir.path(), &["alice@example.test"], &maildir, ""),
    );
    let f = f.to_str().unwrap();
    // --config before or after the command, or BACKSTOP_CONFIG
    for args in [
        vec!["--config", f, "check-config"],
        vec!["check-config", "--config", f],
        vec!["check-config", f],
    ] {
        let (code, out, err) = run_backstop(args.iter().copied());
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("name = \"example.test\""), "{out}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["verify", "alice@example.test"])
        .env("BACKSTOP_CONFIG", f)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("-> 250 2.1.5 Ok") && said.contains("listed"),
        "{said}"
    );
    let (code, _, err) = run_backstop(["check-config", f, "--config", "/elsewhere.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("two files given"), "{err}");
    let (code, _, err) = run_backstop(["--config", "/nonexistent/backstop.toml", "status"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/backstop.toml"), "{err}");
}

#[test]
fn check_config_connect_says_which_internal_servers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    let down = support::free_port();
    let text = support::config(
        &dir.path().join("state"),
        "example.test",
        &[format!("callout:127.0.0.1:{down}")],
        &format!("smtp:127.0.0.1:{}", sink.port),
        "",
    );
    let f = write(dir.path(), "b.toml", &text);
    let (code, out, err) = check_config(&["--connect", f.to_str().unwrap()]);
    assert_eq!(code, 1, "one does not answer: {out}{err}");
    assert!(
        out.contains(&format!(
            "# next-hop 127.0.0.1:{}: answers (EHLO accepted",
            sink.port
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "# callout 127.0.0.1:{down}: NOT answering: connect to 127.0.0.1:{down}"
        )),
        "{out}"
    );
}

/// A port below 1024 that nothing listens on.
fn free_low_port() -> u16 {
    (600..1024)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024")
}

#[test]
fn serve_runs_as_an_unprivileged_user_with_a_state_dir_it_owns() {
    let dir = support::world_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    Command::new("chown")
        .args([&format!("{NOBODY}:{NOBODY}"), state.to_str().unwrap()])
        .status()
        .unwrap();
    let maildir = format!("maildir:{}", state.join("mail").display());
    let low = free_low_port();
    let text = list_config(dir.path(), &["alice@example.test"], &maildir, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{low}"));
    let f = write(dir.path(), "b.toml", &text);
    for p in [&f, &dir.path().join("users.txt")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];

    // without the capability: a clear error that names the fix
    let out = Command::new(as_nobody[0])
        .args(&as_nobody[1..])
        .arg(env!("CARGO_BIN_EXE_backstop"))
        .args(["--config", f.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{low}: Permission denied"
        )) && err.contains("CAP_NET_BIND_SERVICE")
            && err.contains("systemd unit"),
        "{err}"
    );

    // with it, as the systemd unit gives it (AmbientCapabilities=CAP_NET_BIND_SERVICE)
    let with_cap: Vec<&str> = as_nobody
        .iter()
        .copied()
        .chain([
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ])
        .collect();
    let b = Backstop::start_wrapped(
        dir.path(),
        &with_cap,
        &["--config", f.to_str().unwrap(), "serve"],
        &[],
        f.clone(),
    );
    assert_eq!(b.addr.port(), low);
    let (code, t) = swaks(b.addr, &["--to", "alice@example.test"]);
    assert_eq!(code, 0, "{t}");
    let owner = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().uid()
    };
    let nobody: u32 = NOBODY.parse().unwrap();
    for p in ["backstop.redb", "queue", "mail/new", "control.sock"] {
        assert_eq!(owner(&state.join(p)), nobody, "{p}");
    }
    // the commands reach it through its control socket as root
    let (code, out, _) = b.cli(&["status"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn systemd_is_told_when_it_is_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let maildir = format!("maildir:{}", dir.path().join("mail").display());
    let text = list_config(dir.path(), &["alice@example.test"], &maildir, "");
    let (text, _dns) = support::with_resolver(&text);
    let f = write(dir.path(), "b.toml", &text);
    let mut b = Backstop::start_wrapped(
        dir.path(),
        &[],
        &["--config", f.to_str().unwrap(), "serve"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
        f.clone(),
    );
    let next = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1\n"));
    // ready means ready: a client is served at once
    let (code, t) = swaks(b.addr, &["--to", "alice@example.test"]);
    assert_eq!(code, 0, "{t}");
    b.signal("HUP");
    assert_eq!(next(), "RELOADING=1");
    assert!(next().starts_with("READY=1\n"));
    b.sigterm();
    assert!(next().starts_with("STOPPING=1\n"));
    assert_eq!(b.stop().and_then(|s| s.code()), Some(0));
}

#[test]
fn the_debian_package_holds_the_binary_a_verified_unit_the_config_and_man_pages() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(root.join("scripts/package-deb"))
        .args(["--binary", env!("CARGO_BIN_EXE_backstop"), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");

    let listing = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    for want in [
        "./usr/bin/backstop",
        "./lib/systemd/system/backstop.service",
        "./etc/backstop/backstop.toml",
        "./etc/backstop/recipients.txt",
        "./usr/share/man/man1/backstop.1.gz",
        "./usr/share/man/man1/backstop-serve.1.gz",
        "./usr/share/man/man1/backstop-reload.1.gz",
        "./usr/share/bash-completion/completions/backstop",
        "./usr/share/zsh/vendor-completions/_backstop",
        "./usr/share/doc/backstop/README.md",
    ] {
        assert!(listing.contains(want), "{want} not in\n{listing}");
    }
    let info = Command::new("dpkg-deb")
        .args(["-I", &deb])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(
        info.contains("Package: backstop") && info.contains("Depends: libc6"),
        "{info}"
    );
    let field = |name: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f", &deb, name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "backstop");
    let control = dir.path().join("control");
    assert!(
        Command::new("dpkg-deb")
            .args(["-e", &deb])
            .arg(&control)
            .status()
            .unwrap()
            .success()
    );
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/backstop/backstop.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system") && postinst.contains("-m 700"),
        "{postinst}"
    );

    // unpacked: the unit passes systemd-analyze (its man pages found in the package)
    let x = dir.path().join("x");
    assert!(
        Command::new("dpkg-deb")
            .args(["-x", &deb])
            .arg(&x)
            .status()
            .unwrap()
            .success()
    );
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/backstop.service")).unwrap();
    for want in [
        "User=backstop",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/backstop",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Type=notify",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    // the binary at the path the unit names: here, the one unpacked
    let bin = x.join("usr/bin/backstop");
    let here = dir.path().join("backstop.service");
    std::fs::write(
        &here,
        unit.replace("/usr/bin/backstop", bin.to_str().unwrap()),
    )
    .unwrap();
    let man = x.join("usr/share/man");
    let verify = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&here)
        .env("MANPATH", &man)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&here)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = report
        .split("Overall exposure level for backstop.service: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(exposure <= 2.0, "exposure {exposure}:\n{report}");

    // the man page reads as one
    let page = Command::new("man")
        .args(["-l"])
        .arg(man.join("man1/backstop.1.gz"))
        .env("MANWIDTH", "100")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout).into_owned();
    assert!(page.contains("SIGHUP reloads the configuration"), "{page}");
    assert!(page.contains("/etc/backstop/backstop.toml"), "{page}");

    // the shipped configuration is valid (its paths moved here)
    let shipped = std::fs::read_to_string(x.join("etc/backstop/backstop.toml")).unwrap();
    let state = dir.path().join("state");
    let text = shipped
        .replace("/var/lib/backstop", state.to_str().unwrap())
        .replace(
            "/etc/backstop/",
            &format!("{}/", x.join("etc/backstop").display()),
        );
    let f = write(dir.path(), "shipped.toml", &text);
    let (code, _, err) = check_config(&[f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
}

/// The README's table of defaults is what `check-config` prints for a file that leaves every
/// key out: the documentation cannot drift from the code.
#[test]
fn the_readme_defaults_are_the_defaults() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let block = readme
        .split("<!-- defaults -->")
        .nth(1)
        .and_then(|r| r.split("<!-- end of defaults -->").next())
        .and_then(|r| r.split("```toml").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("a defaults block in README.md");
    let documented: toml::Table = toml::from_str(block).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "minimal.toml",
        "hostname = \"mx.example.test\"\nstate_dir = \"state\"\n[[listen]]\naddr = \"127.0.0.1:0\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"callout:127.0.0.1:10025\"]\n\
         next_hop = \"smtp:127.0.0.1:10025\"\n",
    );
    let (code, out, err) = check_config(&[f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let resolved: toml::Table = toml::from_str(&out).unwrap();
    // what the README leaves as comments: no value, or one that depends on the file
    let not_shown = ["outbound", "relay_hosts"];
    let mut problems = Vec::new();
    for (section, table) in &resolved {
        let Some(table) = table.as_table() else {
            continue;
        };
        if not_shown.contains(&section.as_str()) {
            continue;
        }
        for (key, value) in table {
            if not_shown.contains(&key.as_str()) {
                continue;
            }
            match documented.get(section).and_then(|t| t.get(key)) {
                Some(v) if same(v, value) => {}
                Some(v) => problems.push(format!("[{section}] {key}: README {v}, code {value}")),
                None => problems.push(format!("[{section}] {key} = {value} not in README")),
            }
        }
    }
    for (section, table) in &documented {
        for key in table.as_table().into_iter().flat_map(|t| t.keys()) {
            if resolved.get(section).and_then(|t| t.get(key)).is_none() {
                problems.push(format!("[{section}] {key} in README is not a key"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Equal, durations by what they mean (`7d` is `1w`).
fn same(a: &toml::Value, b: &toml::Value) -> bool {
    match (a.as_str(), b.as_str()) {
        (Some(x), Some(y)) => {
            x == y
                || matches!(
                    (backstop::config::parse_duration(x), backstop::config::parse_duration(y)),
                    (Some(p), Some(q)) if p == q
                )
        }
        _ => a == b,
    }
}

/// `backstop ... | head -1`: a command whose reader goes away ends as Unix tools do (by
/// SIGPIPE, nothing on stderr), not with a panic.
#[test]
fn a_command_whose_output_is_cut_short_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["generate", "completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // the reader goes away before the command has started writing
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(13), "{:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
