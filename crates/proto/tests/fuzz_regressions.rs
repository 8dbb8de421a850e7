//! Inputs the fuzz targets once stopped at, replayed through the same code on every test run
//! (a debug build: debug assertions on, as the fuzzers run). See
//! `tests/data/fuzz-regressions/README.md`.

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz-regressions")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no inputs in {}", dir.display());
    out
}

#[test]
fn bounce_inputs_parse_without_panicking_and_hold_together() {
    for (name, data) in inputs("bounce") {
        let b = backstop_proto::bounce::parse(&data);
        for f in &b.failures {
            assert!(!f.recipient.is_empty(), "{name}");
            if let Some(s) = &f.status {
                assert_eq!(s.split('.').count(), 3, "{name}: {s}");
            }
        }
    }
}
