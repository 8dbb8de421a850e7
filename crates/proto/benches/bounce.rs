//! Throughput of the bounce parser, in messages/s, over a directory of messages (by default the
//! sisimai corpus's `maildir/bsd`: LF line ends, the set sisimai's own tests read).
//!
//! Every `*.eml` file of the directory is read into memory once (not timed); then all of them
//! are parsed, in name order, round after round, and only the parsing is timed. One untimed
//! warm-up round comes first. `bench/bounce-vs-sisimai.sh` runs this and sisimai on the same
//! files and prints the ratio; see `bench/README.md`.
//!
//! Environment:
//! - `BOUNCE_DIR`: the directory (default `tests/data/sisimai/maildir/bsd` of this crate);
//! - `ROUNDS`: exactly this many timed rounds (default: rounds until at least `MIN_SECS` seconds
//!   have passed, and at least 3);
//! - `MIN_SECS`: see `ROUNDS` (default 2).
//!
//! Arguments (`cargo bench` passes `--bench`, a filter, …) are ignored.
//!
//! Output, last line machine-readable:
//! `backstop files=F rounds=K messages=N seconds=S rate=R` (N = F × K parsed messages,
//! R = N / S messages per second).

use backstop_proto::bounce::{Kind, mime_parser, parse};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const DEFAULT_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/sisimai/maildir/bsd"
);

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("bounce bench: ignoring {name}={value:?} (not a number)");
            None
        }
    }
}

/// The `*.eml` files of `dir`, sorted by name, with their contents.
fn load(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml") && p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs `one` over every message, round after round (exactly `fixed` rounds, or until
/// `min_time` has passed and at least 3); returns the rounds, the seconds and the median round.
fn measure(
    messages: &[Vec<u8>],
    fixed: Option<u32>,
    min_time: Duration,
    one: impl Fn(&[u8]) -> usize,
) -> (u32, f64, f64) {
    let mut rounds = 0u32;
    let mut per_round = Vec::new();
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let mut found = 0;
        for raw in messages {
            found += one(black_box(raw));
        }
        black_box(found);
        per_round.push(t.elapsed());
        rounds += 1;
        let done = match fixed {
            Some(n) => rounds >= n,
            None => rounds >= 3 && start.elapsed() >= min_time,
        };
        if done {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    per_round.sort();
    (
        rounds,
        seconds,
        per_round[per_round.len() / 2].as_secs_f64(),
    )
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter): nothing here takes arguments.
    let dir = std::env::var_os("BOUNCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let fixed_rounds: Option<u32> = env_number("ROUNDS").filter(|&n| n > 0);
    let min_secs: f64 = env_number("MIN_SECS").unwrap_or(2.0);
    let min_time = Duration::from_secs_f64(min_secs.max(0.0));

    let files = load(&dir);
    assert!(!files.is_empty(), "no *.eml file in {}", dir.display());
    let bytes: usize = files.iter().map(|(_, d)| d.len()).sum();
    let messages: Vec<Vec<u8>> = files.into_iter().map(|(_, d)| d).collect();

    // Untimed warm-up round; it also gives what the parser found, for the report.
    let mut bounces = 0;
    let mut failures = 0;
    for raw in &messages {
        let b = parse(raw);
        if b.kind == Kind::Bounce {
            bounces += 1;
        }
        failures += b.failures.len();
    }

    let (rounds, seconds, median) = measure(&messages, fixed_rounds, min_time, |raw| {
        let bounce = parse(raw);
        let found = bounce.failures.len();
        black_box(bounce);
        found
    });
    let n = messages.len();
    let total = n as u64 * u64::from(rounds);
    let rate = total as f64 / seconds;
    println!(
        "backstop bounce::parse: {n} files ({:.1} MiB) from {}; {bounces} read as bounces, \
         {failures} failed recipients; {rounds} rounds in {seconds:.3} s: {rate:.0} messages/s \
         ({:.1} µs a message; median round {:.1} ms, {:.0} messages/s; {:.1} MiB/s)",
        bytes as f64 / 1048576.0,
        dir.display(),
        1e6 / rate,
        median * 1e3,
        n as f64 / median,
        bytes as f64 * f64::from(rounds) / seconds / 1048576.0,
    );
    println!(
        "backstop files={n} rounds={rounds} messages={total} seconds={seconds:.6} rate={rate:.1}"
    );

    // The floor under any parser built on mail-parser: MIME parsing alone, configured as
    // `bounce::parse` configures it (`bounce::mime_parser`).
    let mime = mime_parser();
    let (rounds, seconds, _) = measure(&messages, fixed_rounds, min_time, |raw| {
        mime.parse(raw).map_or(0, |m| black_box(m).parts.len())
    });
    let total = n as u64 * u64::from(rounds);
    let rate = total as f64 / seconds;
    println!(
        "mail-parser alone (MIME parsing, the floor under bounce::parse): {rate:.0} messages/s \
         ({:.1} µs a message)",
        1e6 / rate
    );
    println!(
        "mail-parser files={n} rounds={rounds} messages={total} seconds={seconds:.6} rate={rate:.1}"
    );
}
