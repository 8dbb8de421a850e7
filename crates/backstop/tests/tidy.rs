//! Checks of the code's shape that the compiler does not make: who may import whom
//! (ARCHITECTURE.md), that proto stays free of effects, and that every module says what it is for.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to (`policy/callout.rs` -> `policy`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn modules_import_only_what_the_architecture_allows() {
    // the watch-and-defend modules (harvest, outbound, senders, alert, reputation) stay off
    // the mail path and the bounce guard; each is also kept off some of its neighbours
    let watch = |more: &[&'static str]| -> Vec<&'static str> {
        let mut banned = vec![
            "auth",
            "decide",
            "policy",
            "upstream",
            "relay",
            "inbound",
            "notify",
            "backscatter",
            "control",
            "app",
            "cli",
        ];
        banned.extend_from_slice(more);
        banned
    };
    // every module of the crate but `me`, as lib.rs declares them
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .collect();
    let others =
        |me: &str| -> Vec<&str> { declared.iter().copied().filter(|m| *m != me).collect() };
    // module -> modules of this crate it must not use
    let forbidden: Vec<(&str, Vec<&str>)> = vec![
        (
            "config",
            vec![
                "store",
                "policy",
                "upstream",
                "relay",
                "inbound",
                "telemetry",
                "control",
                "app",
                "cli",
            ],
        ),
        (
            "clock",
            vec![
                "config", "store", "policy", "upstream", "relay", "inbound", "control", "app",
                "cli",
            ],
        ),
        (
            "store",
            vec![
                "policy", "upstream", "relay", "inbound", "control", "app", "cli",
            ],
        ),
        (
            "upstream",
            vec!["policy", "relay", "inbound", "control", "app", "cli"],
        ),
        (
            "policy",
            vec!["decide", "relay", "inbound", "control", "app", "cli"],
        ),
        // the one RCPT decision: under every front end, over the checks it orders
        (
            "decide",
            vec![
                "inbound", "control", "delivery", "relay", "app", "cli", "web",
            ],
        ),
        ("relay", vec!["policy", "inbound", "control", "app", "cli"]),
        ("inbound", vec!["control", "delivery", "app", "cli"]),
        (
            "telemetry",
            vec![
                "relay", "inbound", "upstream", "store", "control", "app", "cli",
            ],
        ),
        ("control", vec!["inbound", "delivery", "app", "cli"]),
        (
            "queue",
            vec![
                "policy", "upstream", "relay", "inbound", "delivery", "store", "control", "app",
                "cli",
            ],
        ),
        ("delivery", vec!["inbound", "control", "app", "cli"]),
        (
            "notify",
            vec![
                "policy", "upstream", "relay", "inbound", "delivery", "control", "app", "cli",
            ],
        ),
        (
            "auth",
            vec![
                "store", "policy", "upstream", "relay", "inbound", "delivery", "notify", "queue",
                "control", "app", "cli",
            ],
        ),
        (
            "bounces",
            vec![
                "config", "store", "policy", "upstream", "relay", "inbound", "delivery", "queue",
                "notify", "control", "app", "cli",
            ],
        ),
        (
            "backscatter",
            vec![
                "auth", "decide", "policy", "upstream", "relay", "inbound", "delivery", "queue",
                "notify", "control", "app", "cli",
            ],
        ),
        ("harvest", watch(&["delivery", "queue"])),
        ("outbound", watch(&["delivery", "queue", "harvest"])),
        ("senders", watch(&["delivery", "harvest", "outbound"])),
        (
            "alert",
            watch(&["delivery", "queue", "harvest", "outbound", "senders"]),
        ),
        (
            "reputation",
            watch(&["queue", "harvest", "outbound", "senders"]),
        ),
        (
            "status",
            vec![
                "inbound", "delivery", "upstream", "relay", "control", "app", "cli",
            ],
        ),
        (
            "health",
            vec![
                "store",
                "policy",
                "relay",
                "inbound",
                "delivery",
                "notify",
                "backscatter",
                "control",
                "status",
                "app",
                "cli",
            ],
        ),
        // file modes: a leaf (none of the crate's other modules), used by the front ends
        ("private", others("private")),
        // the audit talks to a server through proto and upstream's TLS client: nothing else
        // of the gateway
        (
            "audit",
            others("audit")
                .into_iter()
                .filter(|m| *m != "upstream")
                .collect(),
        ),
        // DKIM signing: keys from the configuration, a message's bytes, its log line;
        // nothing of the mail path (the front ends and the notifier call it)
        (
            "dkim",
            others("dkim")
                .into_iter()
                .filter(|m| !["config", "content", "telemetry"].contains(m))
                .collect(),
        ),
        // TLS report counts: a leaf (the mail-auth report structures, a file), fed by
        // delivery, read by notify, status, control and cli
        ("tlsrpt", others("tlsrpt")),
        // one HTTPS request (MTA-STS policies, TLS reports): a leaf
        ("https", others("https")),
        // a message's bytes: a leaf under the queue, the senders and the writers
        (
            "content",
            vec![
                "config",
                "clock",
                "telemetry",
                "store",
                "queue",
                "policy",
                "upstream",
                "relay",
                "inbound",
                "delivery",
                "notify",
                "backscatter",
                "auth",
                "health",
                "control",
                "app",
                "cli",
            ],
        ),
        ("app", vec!["cli"]),
        (
            "web",
            vec!["inbound", "delivery", "upstream", "relay", "app", "cli"],
        ),
    ];
    // nothing but the composition root starts the web listener
    for file in rust_files(&src()) {
        let module = module_of(&file);
        if module == "app" || module == "web" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("crate::web"),
            "{} uses crate::web",
            file.display()
        );
    }
    // the lower layers never reach up into the bounce guard
    for low in [
        "config", "clock", "store", "queue", "policy", "upstream", "relay", "auth",
    ] {
        for file in rust_files(&src())
            .into_iter()
            .filter(|f| module_of(f) == low)
        {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                !text.contains("crate::backscatter"),
                "{} uses crate::backscatter",
                file.display()
            );
        }
    }
    let mut bad = Vec::new();
    for file in rust_files(&src()) {
        let module = module_of(&file);
        let Some((_, banned)) = forbidden.iter().find(|(m, _)| *m == module) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for b in banned {
            if text.contains(&format!("crate::{b}::")) || text.contains(&format!("crate::{b};")) {
                bad.push(format!("{} uses crate::{b}", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn proto_has_only_pure_dependencies_and_reads_no_clock() {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let manifest = std::fs::read_to_string(proto.join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split('[')
        .next()
        .unwrap();
    // pure parsing and hashing crates only (no I/O, no runtime, no clock)
    let allowed = ["mail-parser", "aho-corasick", "memchr", "hmac", "sha1"];
    for line in deps.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name = line.split(['=', ' ']).next().unwrap_or("");
        assert!(
            allowed.contains(&name),
            "backstop-proto may depend only on {allowed:?}: {line}"
        );
    }
    for file in rust_files(&proto.join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for banned in [
            "Instant::now",
            "SystemTime::now",
            "std::net",
            "std::fs",
            "thread_rng",
        ] {
            let allowed = banned == "std::net" && text.contains("parse::<std::net::");
            assert!(
                allowed || !text.contains(banned),
                "{} uses {banned}",
                file.display()
            );
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/src");
    for file in rust_files(&src()).into_iter().chain(rust_files(&proto)) {
        let text = std::fs::read_to_string(&file).unwrap();
        let is_test_module = file.ends_with("tests.rs");
        assert!(
            is_test_module || text.starts_with("//!"),
            "{} has no //! header",
            file.display()
        );
    }
}
