//! Throughput of the bounce parser, in messages/s, over a directory of messages (by default the
//! sisimai corpus's `maildir/bsd`: LF line ends, the set sisimai's own tests read).
//!
//! Every `*.eml` file of the directory is read into memory once (not timed); then all of them
//! are parsed, in name order, round after round, and only the parsing is timed. One untimed
//! warm-up round comes first. The same files are also parsed by mail-parser alone, configured
//! as `bounce::parse` configures it: the floor under the parser. The two sides take rounds in
//! turn, so that whatever else the machine does slows both alike, and the last line gives
//! their ratio. `bench/bounce-vs-sisimai.sh` runs this and sisimai on the same files; see
//! `bench/README.md`.
//!
//! Environment:
//! - `BOUNCE_DIR`: the directory (default `tests/data/sisimai/maildir/bsd` of this crate);
//! - `ROUNDS`: exactly this many timed rounds a side (default: at least 3 a side, until both
//!   sides together have run for twice `MIN_SECS` seconds);
//! - `MIN_SECS`: see `ROUNDS` (default 2).
//!
//! Arguments (`cargo bench` passes `--bench`, a filter, …) are ignored.
//!
//! Output: a human line and a machine-readable line a side,
//! `backstop files=F rounds=K messages=N seconds=S rate=R` and `mail-parser files=...`
//! (N = F × K parsed messages, S the seconds spent in that side's rounds, R = N / S messages
//! per second), then `backstop / mail-parser alone = P%`.

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

/// What one side of the run measured.
#[derive(Default)]
struct Side {
    rounds: u32,
    /// Time spent in this side's rounds only.
    busy: Duration,
    per_round: Vec<Duration>,
}

impl Side {
    fn round(&mut self, messages: &[Vec<u8>], one: &impl Fn(&[u8]) -> usize) {
        let t = Instant::now();
        let mut found = 0;
        for raw in messages {
            found += one(black_box(raw));
        }
        black_box(found);
        let took = t.elapsed();
        self.per_round.push(took);
        self.busy += took;
        self.rounds += 1;
    }

    fn median(&mut self) -> f64 {
        self.per_round.sort();
        self.per_round[self.per_round.len() / 2].as_secs_f64()
    }
}

/// Runs both sides over every message, one round of each in turn (so that whatever else the
/// machine does slows both alike), `fixed` rounds each, or at least 3 each until both together
/// have run for twice `min_time`.
fn measure(
    messages: &[Vec<u8>],
    fixed: Option<u32>,
    min_time: Duration,
    a: impl Fn(&[u8]) -> usize,
    b: impl Fn(&[u8]) -> usize,
) -> (Side, Side) {
    let (mut sa, mut sb) = (Side::default(), Side::default());
    loop {
        sa.round(messages, &a);
        sb.round(messages, &b);
        let done = match fixed {
            Some(n) => sa.rounds >= n,
            None => sa.rounds >= 3 && sa.busy + sb.busy >= 2 * min_time,
        };
        if done {
            return (sa, sb);
        }
    }
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

    // The floor under any parser built on mail-parser: MIME parsing alone, configured as
    // `bounce::parse` configures it (`bounce::mime_parser`), timed in the same run.
    let mime = mime_parser();
    let (mut ours, mut floor) = measure(
        &messages,
        fixed_rounds,
        min_time,
        |raw| {
            let bounce = parse(raw);
            let found = bounce.failures.len();
            black_box(bounce);
            found
        },
        |raw| mime.parse(raw).map_or(0, |m| black_box(m).parts.len()),
    );
    let n = messages.len();
    let rate = |s: &Side| (n as u64 * u64::from(s.rounds)) as f64 / s.busy.as_secs_f64();
    let (ours_rate, floor_rate) = (rate(&ours), rate(&floor));
    let median = ours.median();
    println!(
        "backstop bounce::parse: {n} files ({:.1} MiB) from {}; {bounces} read as bounces, \
         {failures} failed recipients; {} rounds in {:.3} s: {ours_rate:.0} messages/s \
         ({:.1} µs a message; median round {:.1} ms, {:.0} messages/s; {:.1} MiB/s)",
        bytes as f64 / 1048576.0,
        dir.display(),
        ours.rounds,
        ours.busy.as_secs_f64(),
        1e6 / ours_rate,
        median * 1e3,
        n as f64 / median,
        bytes as f64 * f64::from(ours.rounds) / ours.busy.as_secs_f64() / 1048576.0,
    );
    println!(
        "backstop files={n} rounds={} messages={} seconds={:.6} rate={ours_rate:.1}",
        ours.rounds,
        n as u64 * u64::from(ours.rounds),
        ours.busy.as_secs_f64()
    );
    let floor_median = floor.median();
    println!(
        "mail-parser alone (MIME parsing, the floor under bounce::parse; rounds taken in turn \
         with backstop's): {floor_rate:.0} messages/s ({:.1} µs a message; median round {:.1} ms)",
        1e6 / floor_rate,
        floor_median * 1e3
    );
    println!(
        "mail-parser files={n} rounds={} messages={} seconds={:.6} rate={floor_rate:.1}",
        floor.rounds,
        n as u64 * u64::from(floor.rounds),
        floor.busy.as_secs_f64()
    );
    println!(
        "backstop / mail-parser alone = {:.0}% (median rounds: {:.0}%)",
        100.0 * ours_rate / floor_rate,
        100.0 * floor_median / median
    );
}
