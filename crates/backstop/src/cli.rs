//! Command line: `serve`, `check-config`, `verify`, `queue`, `status`, `sender`, `quarantine`,
//! `bounce`. Errors become exit codes here and only here:
//! 0 success; 1 `verify` says the recipient would be refused; 2 an error (bad configuration,
//! cannot listen, ...).

use crate::config::Config;
use crate::config::ago;
use crate::control;
use crate::queue::{Status, Summary};
use clap::{Parser, Subcommand, ValueEnum};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// backstop: an edge mail gateway that ends the bounce (backscatter) attack.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, about)]
pub struct Cli {
    /// Log format (on standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway (without --config: the example configuration shipped with backstop).
    Serve {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print it resolved, defaults included.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Show what RCPT TO would answer for an address, and why.
    Verify {
        /// The address (user@domain).
        address: String,
        /// The envelope sender: `<>` asks what a bounce to the address gets (BATV).
        #[arg(long)]
        from: Option<String>,
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Show and manage the queue: through the running gateway, or directly on the spool when
    /// none runs with this state_dir.
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
        /// Configuration file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print the answer as JSON (for scripts).
        #[arg(long, global = true)]
        json: bool,
    },
    /// One screen for the operator: queue sizes, held senders, blocked clients, the DNSBL
    /// state of our IPs, reports sent and suppressed today, bounces today.
    Status {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Senders held by the sender watch (`[senders]`).
    Sender {
        #[command(subcommand)]
        action: SenderCmd,
        /// Configuration file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Bounces kept in quarantine (`backscatter = "quarantine"`), under state_dir/quarantine.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCmd,
        /// Configuration file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print one JSON object per message (for scripts).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Read bounces written by other servers.
    Bounce {
        #[command(subcommand)]
        action: BounceCmd,
    },
}

#[derive(Debug, Subcommand)]
enum BounceCmd {
    /// Print one JSON object per failed recipient (who, status, reply code, reason, hard or
    /// soft, diagnostic, and the original message as far as quoted) for every message in FILEs:
    /// message files, Maildirs, mboxes, directories of messages; `-` reads standard input.
    Parse {
        /// Files, directories or `-`.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Today's (UTC) counts of the decisions about incoming bounces: BATV results, verdicts
    /// and their evidence, actions, refusals.
    Stats {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum SenderCmd {
    /// Lift a hold: the sender's new mail is taken again and the messages held with it are
    /// released.
    Release {
        /// The sender (user@domain).
        address: String,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineCmd {
    /// Every quarantined message, oldest first: id, age, envelope, why, file.
    List,
}

#[derive(Debug, Subcommand)]
enum QueueCmd {
    /// Every queued message: id, age, size, sender, recipients with status and next attempt.
    List {
        /// Only messages with failed recipients (kept for review, with why no report was
        /// sent).
        #[arg(long)]
        failed: bool,
    },
    /// One message.
    Show {
        /// Queue id.
        id: String,
    },
    /// Try now: one message, or every message with --all.
    Retry {
        /// Queue id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
    },
    /// Keep a message from being delivered until released.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Let a held message be delivered again.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message from the queue (no report is sent).
    Delete {
        /// Queue id.
        id: String,
    },
}

impl QueueCmd {
    fn words(&self) -> Vec<&str> {
        match self {
            QueueCmd::List { failed: false } => vec!["list"],
            QueueCmd::List { failed: true } => vec!["list", "--failed"],
            QueueCmd::Show { id } => vec!["show", id],
            QueueCmd::Retry { id: Some(id), .. } => vec!["retry", id],
            QueueCmd::Retry { id: None, .. } => vec!["retry", "--all"],
            QueueCmd::Hold { id } => vec!["hold", id],
            QueueCmd::Release { id } => vec!["release", id],
            QueueCmd::Delete { id } => vec!["delete", id],
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backstop: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::example()?,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve { config } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(crate::app::serve(cfg, |_| {}))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            print!("{}", cfg.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify {
            address,
            from,
            config,
        } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(verify(cfg, &address, from.as_deref()))
        }
        Cmd::Status { config, json } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(status(cfg, json))
        }
        Cmd::Sender {
            action: SenderCmd::Release { address },
            config,
        } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(sender_release(cfg, &address))
        }
        Cmd::Quarantine {
            action: QuarantineCmd::List,
            config,
            json,
        } => {
            let cfg = load(config.as_ref())?;
            quarantine_list(&cfg, json)
        }
        Cmd::Queue {
            action,
            config,
            json,
        } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(queue(cfg, &action, json))
        }
        Cmd::Bounce {
            action: BounceCmd::Parse { files },
        } => {
            crate::bounces::run(&files)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bounce {
            action: BounceCmd::Stats { config, json },
        } => {
            let cfg = load(config.as_ref())?;
            runtime()?.block_on(bounce_stats(cfg, json))
        }
    }
}

async fn queue(cfg: Config, action: &QueueCmd, json: bool) -> anyhow::Result<ExitCode> {
    let words = action.words();
    let sock = control::socket_path(&cfg.state_dir);
    let answer = match control::query(&sock, &format!("queue {}", words.join(" "))).await? {
        Some(a) => a,
        None => {
            let spool = open_spool(&cfg)?;
            control::queue_request(&spool, unix_now(), &words).await
        }
    };
    if let Some(e) = answer.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    if json {
        println!("{answer:#}");
        return Ok(ExitCode::SUCCESS);
    }
    let now = unix_now();
    if let Some(list) = answer.get("messages") {
        let list: Vec<Summary> = serde_json::from_value(list.clone())?;
        print!("{}", format_list(&list, now));
    } else if let Some(m) = answer.get("message") {
        let m: Summary = serde_json::from_value(m.clone())?;
        print!("{}", format_list(std::slice::from_ref(&m), now));
    } else if let Some(n) = answer.get("retried") {
        println!("{n} message(s) due now");
    } else {
        println!("{}: done", words.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The spool, opened here because no gateway runs with this state_dir.
fn open_spool(cfg: &Config) -> anyhow::Result<std::sync::Arc<crate::queue::Spool>> {
    let dir = crate::app::spool_dir(cfg);
    crate::queue::Spool::open(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

fn unix_now() -> u64 {
    use crate::clock::Clock;
    crate::clock::SystemClock.unix()
}

async fn verify(cfg: Config, address: &str, from: Option<&str>) -> anyhow::Result<ExitCode> {
    let mailbox = control::parse_address(address)
        .map_err(|e| anyhow::anyhow!("{address:?} is not an address: {e}"))?;
    let from = from
        .map(control::parse_sender)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let sock = control::socket_path(&cfg.state_dir);
    let queried = control::query_verify(&sock, &mailbox.to_string(), from.as_ref()).await?;
    let (answer, how) = match queried {
        Some(a) => (
            a,
            format!("answered by the running gateway ({})", sock.display()),
        ),
        None => {
            let parts = crate::app::build(cfg).await?;
            let guard = crate::app::guard(&parts).await?;
            let now = parts.clock.unix();
            let a = control::explain(&parts.verifier, &guard, from.as_ref(), &mailbox, now).await;
            (
                a,
                "evaluated here; no gateway is running with this state_dir".into(),
            )
        }
    };
    if let Some(f) = &from {
        print!("MAIL FROM:{f} ");
    }
    println!("RCPT TO:<{mailbox}> -> {}", answer.reply);
    println!("  reason: {}", answer.reason);
    for s in &answer.steps {
        println!("  {s}");
    }
    println!("  ({how})");
    Ok(if answer.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn status(cfg: Config, json: bool) -> anyhow::Result<ExitCode> {
    let sock = control::socket_path(&cfg.state_dir);
    let answer = match control::query(&sock, "status").await? {
        Some(a) => a,
        None => {
            let spool = open_spool(&cfg)?;
            let parts = crate::app::build(cfg).await?;
            let now = unix_now();
            crate::status::gather(
                &parts.cfg,
                parts.store.as_ref(),
                &spool,
                &parts.verifier,
                now,
            )
            .await?
        }
    };
    if let Some(e) = answer.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    match json {
        true => println!("{answer:#}"),
        false => print!("{}", crate::status::render(&answer)),
    }
    Ok(ExitCode::SUCCESS)
}

async fn sender_release(cfg: Config, address: &str) -> anyhow::Result<ExitCode> {
    let sock = control::socket_path(&cfg.state_dir);
    let answer = match control::query(&sock, &format!("sender-release {address}")).await? {
        Some(a) => a,
        None => {
            let spool = open_spool(&cfg)?;
            let parts = crate::app::build(cfg).await?;
            let alerts = std::sync::Arc::new(crate::alert::Alerts::new(
                parts.cfg.clone(),
                parts.store.clone(),
            ));
            let watch =
                crate::senders::Watch::new(parts.cfg.clone(), parts.store.clone(), spool, alerts);
            control::sender_release(&watch, address, unix_now()).await
        }
    };
    if let Some(e) = answer.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    println!(
        "{}: released; {} held message(s) released",
        answer["sender"].as_str().unwrap_or(address),
        answer["released"]
    );
    Ok(ExitCode::SUCCESS)
}

async fn bounce_stats(cfg: Config, json: bool) -> anyhow::Result<ExitCode> {
    let sock = control::socket_path(&cfg.state_dir);
    let answer = match control::query(&sock, "bounce-stats").await? {
        Some(a) => a,
        None => {
            let parts = crate::app::build(cfg).await?;
            let now = parts.clock.unix();
            control::stats_answer(
                crate::backscatter::stats::today(parts.store.as_ref(), now).await,
                now,
            )
        }
    };
    if let Some(e) = answer.get("error") {
        anyhow::bail!("{}", e.as_str().unwrap_or("error"));
    }
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "bounces on {} (UTC):",
        answer["day"].as_str().unwrap_or("?")
    );
    let mut group = "";
    let mut line = String::new();
    for label in crate::backscatter::stats::LABELS {
        let (g, what) = label.split_once('=').unwrap_or((label, ""));
        if g != group && !line.is_empty() {
            println!("{}", line.trim_end());
            line.clear();
        }
        if line.is_empty() {
            line = format!("  {g:<8}");
        }
        group = g;
        let n = answer["counts"][label].as_u64().unwrap_or(0);
        let _ = write!(line, " {what} {n} ");
    }
    println!("{}", line.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn quarantine_list(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let dir = crate::backscatter::quarantine::dir(&cfg.state_dir);
    let list = crate::backscatter::quarantine::list(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    if json {
        for e in &list {
            println!("{}", serde_json::to_string(e)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("quarantine is empty");
        return Ok(ExitCode::SUCCESS);
    }
    let now = unix_now();
    println!("{:<16} {:>8}  SENDER -> RECIPIENTS", "ID", "AGE");
    for e in &list {
        let age = ago(now.saturating_sub(e.arrived));
        println!("{:<16} {age:>8}  {} -> {}", e.id, e.from, e.to.join(", "));
        println!("    why: {}", e.reasons);
        println!("    file: {}", e.path.display());
    }
    println!("-- {} message(s)", list.len());
    Ok(ExitCode::SUCCESS)
}

/// The queue as a table for people: one block per message, one line per recipient.
fn format_list(list: &[Summary], now: u64) -> String {
    let mut out = String::new();
    if list.is_empty() {
        return "queue is empty\n".into();
    }
    let _ = writeln!(out, "{:<16} {:>8} {:>9}  SENDER", "ID", "AGE", "SIZE");
    for m in list {
        let held = match (&m.held_why, m.held) {
            (Some(why), _) => format!("  (held: {why})"),
            (None, true) => "  (held)".to_string(),
            (None, false) => String::new(),
        };
        let age = ago(now.saturating_sub(m.arrived));
        let _ = writeln!(out, "{:<16} {age:>8} {:>9}  {}{held}", m.id, m.size, m.from);
        let may = if m.trust.trusted { "may" } else { "may not" };
        let _ = writeln!(out, "    (sender {may} get reports: {})", m.trust.why);
        for r in &m.rcpts {
            let status = match &r.status {
                Status::Queued {
                    attempts,
                    next_attempt,
                    last,
                } => {
                    let when = if *next_attempt <= now {
                        "due now".to_string()
                    } else {
                        format!("next attempt in {}", ago(next_attempt - now))
                    };
                    match last {
                        Some(l) => format!("deferred, {attempts} attempt(s), {when}: {l}"),
                        None => format!("queued, {when}"),
                    }
                }
                Status::Delivered { reply, .. } => format!("delivered: {reply}"),
                Status::Failed { reason, .. } => format!("failed: {reason}"),
            };
            let _ = writeln!(out, "    {}  {status}", r.addr);
            if let Some(report) = &r.report {
                let _ = writeln!(out, "        report: {report}");
            }
        }
    }
    let bytes: u64 = list.iter().map(|m| m.size).sum();
    let _ = writeln!(out, "-- {} message(s), {bytes} bytes", list.len());
    out
}
