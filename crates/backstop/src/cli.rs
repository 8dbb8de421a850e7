//! Command line: `serve`, `reload`, `check-config`, `verify`, `queue`, `status`, `sender`,
//! `quarantine`, `bounce`, `generate`. Every command that needs a configuration finds it the
//! same way ([`ConfigSource::resolve`]: `--config`, `BACKSTOP_CONFIG`,
//! `/etc/backstop/backstop.toml`, the built-in example). Errors become exit codes here and only
//! here: 0 success; 1 `verify` says the recipient would be refused, or `check-config --connect`
//! found a server that does not answer; 2 an error (bad configuration, cannot listen, a reload
//! refused, no gateway to reload, ...).

use crate::config::ago;
use crate::config::{Config, ConfigSource};
use crate::control;
use crate::queue::{Status, Summary};
use clap::{Parser, Subcommand, ValueEnum};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// backstop: an edge mail gateway that ends the bounce (backscatter) attack.
#[derive(Debug, Parser)]
#[command(
    name = "backstop",
    version,
    about,
    long_about = "backstop: an edge mail gateway that ends the bounce (backscatter) attack. It judges every \
recipient during the SMTP dialogue (local lists, a cached call-out to the internal server), refuses \
bounces for mail that never left here (BATV, the sent log, quoted headers), sends at most one safe \
report per message and never to a forged sender, and watches outgoing mail.",
    after_long_help = AFTER_HELP
)]
pub struct Cli {
    /// Log format (on standard error).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Configuration file [default: $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml if it
    /// exists, else the example built into backstop, with paths from the current directory].
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The end of `--help` and of the man page: files, signals, environment, exit status.
const AFTER_HELP: &str = "\
Configuration: --config FILE, else $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml when it \
exists, else the example built into backstop (paths relative to the current directory). Every \
command takes --config.

Signals (serve): SIGHUP reloads the configuration (as `backstop reload` does): it is read and \
checked completely first, and an invalid one is refused with the reason logged while the running \
one stays; sessions in flight finish under the configuration they started with. SIGTERM and \
SIGINT stop gracefully: no new connections, sessions and deliveries in flight may finish within \
limits.shutdown_timeout.

Logs: on standard error, one line per event (--log-format json: one JSON object per line); \
RUST_LOG sets the level (default info). A message is traced by its queue id (id=), its sender \
(from=<...>) or its Message-ID (message-id=<...>).

Exit status: 0 success; 1 `verify` says the recipient would be refused, or `check-config \
--connect` found a server that does not answer; 2 an error (bad configuration, cannot listen, \
a reload refused, no gateway running, ...).

Files: state_dir holds the store (backstop.redb), the queue (queue/), the quarantine and the \
control socket (control.sock) that `verify`, `queue`, `status` and `reload` use to ask the \
running gateway.";

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway in the foreground (logs on standard error). SIGHUP reloads the
    /// configuration; SIGTERM or SIGINT stops it gracefully.
    Serve,
    /// Make the running gateway read its configuration file again. An invalid file is
    /// refused (exit 2, the error printed) and the running configuration stays.
    Reload,
    /// Validate a configuration and print it resolved, defaults included: certificates and
    /// keys, list files and the state directory are checked as `serve` would.
    CheckConfig {
        /// Configuration file (the same as --config).
        file: Option<PathBuf>,
        /// Also connect to every next hop and call-out server and say which answer.
        #[arg(long)]
        connect: bool,
    },
    /// Audit a mail server (read-only: no message is sent): does it accept unknown
    /// recipients and so make backscatter, accept bounces for them, tell which addresses exist,
    /// take bare LF or CR as line ends? Exit 0: no backscatter risk found; 1: one was; 2: the
    /// server could not be audited.
    Audit(AuditArgs),
    /// Show what RCPT TO would answer for an address, and why.
    Verify {
        /// The address (user@domain).
        address: String,
        /// The envelope sender: `<>` asks what a bounce to the address gets (BATV).
        #[arg(long)]
        from: Option<String>,
    },
    /// Show and manage the queue: through the running gateway, or directly on the spool when
    /// none runs with this state_dir.
    Queue {
        #[command(subcommand)]
        action: QueueCmd,
        /// Print the answer as JSON (for scripts).
        #[arg(long, global = true)]
        json: bool,
    },
    /// One screen for the operator: queue sizes, held senders, blocked clients, the DNSBL
    /// state of our IPs, reports sent and suppressed today, bounces today.
    Status {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Senders held by the sender watch (`[senders]`).
    Sender {
        #[command(subcommand)]
        action: SenderCmd,
    },
    /// Bounces kept in quarantine (`backscatter = "quarantine"`), under state_dir/quarantine.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCmd,
        /// Print one JSON object per message (for scripts).
        #[arg(long, global = true)]
        json: bool,
    },
    /// The call-out cache: what is known of ADDRESS (or of @DOMAIN: whether it is a
    /// catch-all, and each of its addresses), through the running gateway or on the store.
    Cache {
        #[command(subcommand)]
        action: CacheCmd,
        /// Print the answer as JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Read bounces written by other servers.
    Bounce {
        #[command(subcommand)]
        action: BounceCmd,
    },
    /// DKIM keys ([[dkim]]): the DNS records to publish.
    Dkim {
        #[command(subcommand)]
        action: DkimCmd,
    },
    /// TLS reports (RFC 8460): our outbound TLS sessions counted for the domains that ask
    /// for daily reports.
    TlsReport {
        #[command(subcommand)]
        action: TlsReportCmd,
    },
    /// Write man pages or shell completions, generated from this command line (for
    /// packagers).
    Generate {
        #[command(subcommand)]
        what: GenerateCmd,
    },
}

#[derive(Debug, Subcommand)]
enum TlsReportCmd {
    /// Today's counts by domain and policy, and the reports still to go.
    Show {
        /// Print them as JSON (RFC 8460's field names).
        #[arg(long)]
        json: bool,
    },
    /// End the reporting period now and send its reports (to the domains that publish an
    /// _smtp._tls record) without waiting for the day's end.
    Send,
}

#[derive(Debug, Subcommand)]
enum CacheCmd {
    /// The cached answer, when it was asked, when it is checked again and forgotten.
    Show {
        /// user@domain, or @domain: its catch-all answer and every address of it cached.
        what: String,
    },
    /// Forget it: the next RCPT asks the internal server or the directory again (@domain: every address of
    /// it, and whether it is a catch-all).
    Forget {
        /// user@domain, or @domain.
        what: String,
    },
}

#[derive(Debug, Subcommand)]
enum GenerateCmd {
    /// Man pages: backstop.1 and one backstop-COMMAND.1 per command, written into DIR.
    Man {
        /// Where to write them (created if missing).
        dir: PathBuf,
    },
    /// The completion script for SHELL, on standard output.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum DkimCmd {
    /// The TXT record of each key of DOMAIN (every configured key without DOMAIN), in zone
    /// file form, and whether it signs. A key without `key =` that does not exist yet is
    /// generated first, so its record can be published before the gateway starts.
    Show {
        /// A signing domain of [[dkim]].
        domain: Option<String>,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
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
    if !matches!(cli.cmd, Cmd::Serve) {
        quiet_on_closed_pipe();
    }
    // the queue, the store, quarantine and Maildir: private whatever the umask (man pages
    // and completions are for everyone)
    if !matches!(cli.cmd, Cmd::Generate { .. }) {
        crate::private::restrict_umask();
    }
    init_logging(cli.log_format);
    let source = ConfigSource::resolve(
        cli.config,
        std::env::var_os("BACKSTOP_CONFIG"),
        std::path::Path::new(crate::config::DEFAULT_PATH).exists(),
    );
    match run(cli.cmd, source) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("backstop: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A command whose output is cut short (`backstop queue list | head`) ends quietly, as Unix
/// tools do, instead of panicking on the write that follows. Not for `serve`, whose writes to
/// closed sockets must stay errors it handles.
fn quiet_on_closed_pipe() {
    // SAFETY: restores the default disposition of one signal before any thread is started;
    // no handler runs Rust code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // hickory's DNSSEC warnings print whole DNS responses; our own lines say what matters
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,hickory_net=error,hickory_proto=error")
        });
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

/// Reads and validates the configuration; an error names the file.
fn load(source: &ConfigSource) -> anyhow::Result<Config> {
    source
        .load()
        .map_err(|e| anyhow::anyhow!("configuration {source}: {e}"))
}

/// A warning when the configuration file holds secrets that every user can read.
fn warn_secrets(source: &ConfigSource, cfg: &Config) {
    if let ConfigSource::File(f) = source
        && let Some(w) = crate::private::config_warning(f, &cfg.secrets())
    {
        tracing::warn!("{w}");
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cmd: Cmd, source: ConfigSource) -> anyhow::Result<ExitCode> {
    let source = match &cmd {
        Cmd::CheckConfig { file: Some(f), .. } => match &source {
            ConfigSource::File(c) if c != f => anyhow::bail!(
                "check-config: two files given ({} and --config {}); name one",
                f.display(),
                c.display()
            ),
            _ => ConfigSource::File(f.clone()),
        },
        _ => source,
    };
    match cmd {
        Cmd::Serve => {
            let cfg = load(&source)?;
            warn_secrets(&source, &cfg);
            runtime()?.block_on(crate::app::serve(source, cfg, |_| {}))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload => {
            let cfg = load(&source).map_err(|e| {
                anyhow::anyhow!("{e:#}\n(not reloaded: a running gateway keeps its configuration)")
            })?;
            runtime()?.block_on(reload(cfg))
        }
        Cmd::CheckConfig { connect, .. } => {
            let cfg = load(&source)?;
            warn_secrets(&source, &cfg);
            runtime()?.block_on(check_config(cfg, connect))
        }
        Cmd::Audit(args) => runtime()?.block_on(audit(args)),
        Cmd::Verify { address, from } => {
            let cfg = load(&source)?;
            runtime()?.block_on(verify(cfg, &address, from.as_deref()))
        }
        Cmd::Status { json } => runtime()?.block_on(status(load(&source)?, json)),
        Cmd::Sender {
            action: SenderCmd::Release { address },
        } => runtime()?.block_on(sender_release(load(&source)?, &address)),
        Cmd::Quarantine {
            action: QuarantineCmd::List,
            json,
        } => quarantine_list(&load(&source)?, json),
        Cmd::Queue { action, json } => runtime()?.block_on(queue(load(&source)?, &action, json)),
        Cmd::Bounce {
            action: BounceCmd::Parse { files },
        } => {
            crate::bounces::run(&files)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bounce {
            action: BounceCmd::Stats { json },
        } => runtime()?.block_on(bounce_stats(load(&source)?, json)),
        Cmd::Generate { what } => generate(what),
        Cmd::Dkim {
            action: DkimCmd::Show { domain, json },
        } => dkim_show(&load(&source)?, domain.as_deref(), json),
        Cmd::Cache { action, json } => runtime()?.block_on(cache(load(&source)?, action, json)),
        Cmd::TlsReport { action } => runtime()?.block_on(tls_report(load(&source)?, action)),
    }
}

/// The TLS report counts as the gateway last wrote them (empty when there are none yet).
fn tls_ledger(cfg: &Config, now: u64) -> crate::tlsrpt::Ledger {
    let path = cfg.state_dir.join("tls-reports.json");
    crate::tlsrpt::Ledger::open(&path, now).unwrap_or_else(|e| {
        eprintln!("backstop: {e}");
        crate::tlsrpt::Ledger::in_memory(now)
    })
}

/// `backstop tls-report show|send`: through the running gateway (`show` reads the file
/// when none runs).
async fn tls_report(cfg: Config, action: TlsReportCmd) -> anyhow::Result<ExitCode> {
    let sock = control::socket_path(&cfg.state_dir);
    let json = match action {
        TlsReportCmd::Send => {
            let Some(answer) = control::query(&sock, "tls-report send").await? else {
                anyhow::bail!(
                    "no gateway is running with state_dir {}",
                    cfg.state_dir.display()
                );
            };
            if let Some(e) = answer.get("error") {
                anyhow::bail!("{}", e.as_str().unwrap_or("error"));
            }
            println!(
                "reporting period ended; its reports go to the domains that publish an \
                 _smtp._tls record (see the log: tls_report_sent)"
            );
            return Ok(ExitCode::SUCCESS);
        }
        TlsReportCmd::Show { json } => json,
    };
    let answer = match control::query(&sock, "tls-report show").await? {
        Some(a) => a,
        None => control::tls_report_show(&tls_ledger(&cfg, unix_now())),
    };
    match json {
        true => println!("{answer:#}"),
        false => print!("{}", crate::tlsrpt::render(&answer)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `backstop cache show|forget`: asks the running gateway, or the store when none runs.
async fn cache(cfg: Config, action: CacheCmd, json: bool) -> anyhow::Result<ExitCode> {
    let (verb, what) = match &action {
        CacheCmd::Show { what } => ("show", what.as_str()),
        CacheCmd::Forget { what } => ("forget", what.as_str()),
    };
    let sock = control::socket_path(&cfg.state_dir);
    let answer = match control::query(&sock, &format!("cache {verb} {what}")).await? {
        Some(a) => a,
        None => {
            let parts = crate::app::build(cfg).await?;
            control::cache_request(&parts.verifier, verb, what, unix_now()).await
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
    match (verb, what.starts_with('@')) {
        ("forget", _) if answer["forgot"] != true => println!("{what}: nothing cached"),
        ("forget", false) => println!("{what}: forgotten"),
        ("forget", true) => println!(
            "{what}: forgotten ({} cached answers: the domain's catch-all answer and its addresses)",
            answer["forgotten"]
        ),
        (_, false) => println!("{}", cache_line(what, &answer["entry"], now)),
        (_, true) => print_domain(what, &answer, now),
    }
    Ok(ExitCode::SUCCESS)
}

/// `backstop cache show @DOMAIN`: whether it is a catch-all, then each address cached.
fn print_domain(what: &str, answer: &serde_json::Value, now: u64) {
    println!("{}", cache_line(what, &answer["entry"], now));
    let empty = Vec::new();
    let addresses = answer["addresses"].as_array().unwrap_or(&empty);
    for a in addresses {
        let address = a["address"].as_str().unwrap_or("?");
        println!("{}", cache_line(address, &a["entry"], now));
    }
    match answer["more"] == true {
        true => println!("{} addresses shown; more are cached", addresses.len()),
        false => println!("{} addresses cached", addresses.len()),
    }
}

/// `alice@example.test: valid, asked 3h ago ("250 2.1.5 Ok"); checked again in 6d 21h,
/// forgotten in 30d 21h`.
fn cache_line(what: &str, e: &serde_json::Value, now: u64) -> String {
    if e.is_null() {
        return format!(
            "{what}: nothing cached (the next RCPT asks the internal server or the directory)"
        );
    }
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    let in_ = |t: u64| match t > now {
        true => format!("in {}", ago(t - now)),
        false => "at the next RCPT".to_string(),
    };
    format!(
        "{what}: {}, asked {} ago ({:?}); checked again {}, forgotten {}",
        e["verdict"].as_str().unwrap_or("?"),
        ago(now.saturating_sub(n("checked_at"))),
        e["detail"].as_str().unwrap_or(""),
        in_(n("refresh_at")),
        in_(n("expire_at"))
    )
}

/// Man pages and completions from the same definition as the parser.
fn generate(what: GenerateCmd) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    match what {
        GenerateCmd::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        GenerateCmd::Completions { shell } => {
            let mut cmd = cmd;
            clap_complete::generate(shell, &mut cmd, "backstop", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running gateway to reload; its answer (what changed, or why the new
/// configuration was refused) is printed.
async fn reload(cfg: Config) -> anyhow::Result<ExitCode> {
    let sock = control::socket_path(&cfg.state_dir);
    let Some(answer) = control::query(&sock, "reload").await? else {
        anyhow::bail!(
            "no gateway is running with state_dir {} (no control socket at {})",
            cfg.state_dir.display(),
            sock.display()
        );
    };
    if let Some(e) = answer.get("error") {
        anyhow::bail!(
            "reload refused, the running configuration stays: {}",
            e.as_str().unwrap_or("error")
        );
    }
    let changes: Vec<String> =
        serde_json::from_value(answer["changes"].clone()).unwrap_or_default();
    println!(
        "reloaded {}: {} change(s)",
        answer["config"].as_str().unwrap_or("?"),
        changes.len()
    );
    for c in &changes {
        println!("  {c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `backstop audit`'s arguments.
#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// HOST[:PORT] (port 25 when not given).
    target: String,
    /// The domain the server receives mail for.
    #[arg(long)]
    domain: String,
    /// The envelope sender of the test transactions (default postmaster@DOMAIN).
    #[arg(long)]
    from: Option<String>,
    /// The EHLO name.
    #[arg(long, default_value = "localhost")]
    helo: String,
    /// Unknown recipients asked in one session (the harvest check), 1 to 30.
    #[arg(long, default_value_t = 12)]
    harvest: usize,
    /// Longest wait for one reply, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// The name the server's certificate should carry (default: HOST, when it is a name).
    #[arg(long, value_name = "NAME")]
    tls_name: Option<String>,
    /// An address that exists: compares how long RCPT takes for it and for unknown ones (a
    /// timing oracle).
    #[arg(long, value_name = "ADDRESS")]
    known: Option<String>,
    /// Send one test message to a random unknown address of DOMAIN, with ADDRESS (yours) as
    /// its return path: the one check that sends a message.
    #[arg(long, value_name = "ADDRESS")]
    bounce_to: Option<String>,
    /// With --bounce-to: take the bounce on an SMTP listener at ADDR:PORT (where mail for
    /// ADDRESS's domain is routed), and report when it came and what it carried.
    #[arg(long, value_name = "ADDR:PORT", requires = "bounce_to")]
    listen: Option<std::net::SocketAddr>,
    /// With --listen: how long to wait for the bounce, in seconds.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    wait: u64,
    /// Needed for a server that is not on this machine (loopback): say that it is yours.
    #[arg(long)]
    i_own_this_server: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `backstop audit`: the server resolved (and refused unless on loopback or owned), audited,
/// the report printed; its exit code.
async fn audit(a: AuditArgs) -> anyhow::Result<ExitCode> {
    if !(1..=30).contains(&a.harvest) || !(1..=120).contains(&a.timeout) {
        anyhow::bail!("--harvest must be 1 to 30 and --timeout 1 to 120 (seconds)");
    }
    if !(1..=3600).contains(&a.wait) {
        anyhow::bail!("--wait must be 1 to 3600 (seconds)");
    }
    let with_port = match a.target.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() && !a.target.ends_with(']') => a.target.clone(),
        _ => format!("{}:25", a.target),
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.target))?
        .collect();
    let Some(addr) = addrs.first().copied() else {
        anyhow::bail!("{}: no address", a.target);
    };
    if !a.i_own_this_server && !addrs.iter().all(|s| s.ip().is_loopback()) {
        anyhow::bail!(
            "{} is not on this machine: audit only your own servers, and say so with \
             --i-own-this-server",
            a.target
        );
    }
    let host = with_port.rsplit_once(':').map_or("", |(h, _)| h);
    let tls_name = a
        .tls_name
        .or_else(|| (host.parse::<std::net::IpAddr>().is_err()).then(|| host.to_string()))
        .filter(|n| !n.is_empty() && !n.starts_with('['));
    let bounce = a.bounce_to.map(|to| crate::audit::bounce::BounceTest {
        to,
        listen: a.listen,
        wait: std::time::Duration::from_secs(a.wait),
    });
    let opts = crate::audit::Options {
        addr,
        from: a.from.unwrap_or_else(|| format!("postmaster@{}", a.domain)),
        domain: a.domain,
        helo: a.helo,
        harvest: a.harvest,
        timeout: std::time::Duration::from_secs(a.timeout),
        tls_name,
        known: a.known,
        bounce,
        now: std::time::SystemTime::now(),
    };
    let report = crate::audit::run(&opts, &mut rand::random::<u64>).await;
    match a.json {
        true => println!("{}", serde_json::to_string_pretty(&report)?),
        false => print!("{}", report.text()),
    }
    Ok(ExitCode::from(report.exit_code()))
}

/// Checks what `serve` would check before it starts, prints the resolved configuration, and
/// with `connect` tries every next hop and call-out server.
async fn check_config(cfg: Config, connect: bool) -> anyhow::Result<ExitCode> {
    crate::app::preflight(&cfg)?;
    print!("{}", cfg.to_toml());
    if !connect {
        return Ok(ExitCode::SUCCESS);
    }
    let mut all = true;
    let directories = crate::policy::directory::of_config(&cfg)?;
    let directories = crate::policy::directory::checks(&directories);
    for (role, target, result) in crate::health::check_all(&cfg, directories).await {
        match result {
            Ok(greeting) => println!("# {role} {target}: answers ({greeting})"),
            Err(e) => {
                all = false;
                println!("# {role} {target}: NOT answering: {e}");
            }
        }
    }
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `backstop dkim show [DOMAIN]`: each key's record (keys to be generated are generated).
fn dkim_show(cfg: &Config, domain: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    crate::app::preflight_state_dir(cfg)?;
    let signer = crate::dkim::Signer::load(cfg, true)?;
    let wanted = domain.map(|d| d.trim_end_matches('.').to_ascii_lowercase());
    let keys: Vec<&crate::dkim::Key> = signer
        .keys()
        .iter()
        .filter(|k| wanted.as_deref().is_none_or(|d| k.cfg.domain == d))
        .collect();
    if keys.is_empty() {
        match &wanted {
            Some(d) => eprintln!("backstop: no [[dkim]] key for {d}"),
            None => eprintln!("backstop: no [[dkim]] key is configured"),
        }
        return Ok(ExitCode::from(1));
    }
    for k in keys {
        if json {
            let line = serde_json::json!({
                "domain": k.cfg.domain, "selector": k.cfg.selector,
                "algorithm": k.cfg.algorithm.key_type(), "signs": k.cfg.sign,
                "key": k.path, "name": k.record_name(), "record": k.record(),
            });
            println!("{line}");
            continue;
        }
        let role = match k.cfg.sign {
            true => "signs",
            false => "does not sign (sign = false: published for rotation)",
        };
        println!(
            "; {} selector {} ({}) {role}; key {}",
            k.cfg.domain,
            k.cfg.selector,
            k.cfg.algorithm,
            k.path.display()
        );
        println!("{}", crate::dkim::zone_line(k));
    }
    Ok(ExitCode::SUCCESS)
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
            let ladder = crate::decide::Ladder::standalone(
                parts.cfg.clone(),
                parts.store.clone(),
                parts.verifier.clone(),
                guard,
                parts.clock.clone(),
            );
            let a = control::explain(&ladder, from.as_ref(), &mailbox).await;
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
            let tls = tls_ledger(&parts.cfg, now);
            crate::status::gather(
                &parts.cfg,
                parts.store.as_ref(),
                (&spool, &tls),
                (&parts.verifier, None),
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
