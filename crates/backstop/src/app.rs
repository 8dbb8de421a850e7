//! The composition root: the only place that wires modules together and spawns long-lived
//! tasks (listeners, list reloads, cache purge, control socket, web), and that runs a reload
//! (SIGHUP, `backstop reload`) and the graceful stop (SIGTERM, SIGINT).
//!
//! A reload reads and validates the whole configuration and builds everything made from it (a
//! [`Generation`]: verifier, BATV keys, listeners' certificates and new addresses, ...) before
//! anything changes; any error leaves the running one as it was. Then new sessions and new
//! delivery passes take the new generation, while sessions in flight finish with the one they
//! started with. What outlives a configuration ([`Kept`]: the store, the spool, connection and
//! harvest counts, call-out budgets, the dashboard's history) is handed from one generation to
//! the next.

use crate::alert::Alerts;
use crate::auth::SenderAuth;
use crate::backscatter::{Guard, Tags};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigSource, RedisTarget, Source, StoreBackend};
use crate::control::{Control, ReloadRequest, Served};
use crate::decide::Ladder;
use crate::delivery::mx::MxResolver;
use crate::delivery::{Engine, Setup};
use crate::harvest::Harvest;
use crate::health::Backends;
use crate::ids::IdGen;
use crate::inbound::{Context, Listeners};
use crate::notify::Notifier;
use crate::policy::Verifier;
use crate::policy::callout::{Callout, Random};
use crate::policy::probe::SmtpProber;
use crate::queue::Spool;
use crate::relay::{MAX_RELAY_CONNECTIONS, RELAY_TIMEOUT};
use crate::reputation::Reputation;
use crate::senders::Watch;
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::failover::{Failover, Hook};
use crate::store::redis::{RedisStore, Target};
use crate::telemetry::metrics::Metrics;
use crate::tlsrpt::Ledger;
use crate::upstream::Pools;
use anyhow::Context as _;
use arc_swap::{ArcSwap, ArcSwapOption};
use backstop_proto::address::{Mailbox, ReversePath};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the web listener may take to finish its requests at shutdown.
const WEB_GRACE: Duration = Duration::from_secs(5);
/// How often list files are checked for changes.
const LIST_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often expired cache entries are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);
/// How often undecided reports and old finished messages are looked at.
const REPORT_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the spool's disk space is reclaimed.
const COMPACT_EVERY: Duration = Duration::from_secs(5);
/// How often counts kept in memory are added to the store.
const FLUSH_COUNTS_EVERY: Duration = Duration::from_secs(2);

/// The wired-up parts that `serve` and the other commands share.
pub struct Parts {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The recipient verifier.
    pub verifier: Arc<Verifier>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where alerts about the shared store go, once serving.
    pub store_alerts: StoreAlerts,
}

/// The spool's directory in `state_dir`.
pub fn spool_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("queue")
}

/// Where alerts about the shared store go once they can (set when serving, replaced by a
/// reload).
pub type StoreAlerts = Arc<ArcSwapOption<Alerts>>;

/// Opens the configured store: the embedded one, or Redis with this node's embedded store
/// behind it for outages ([`Failover`]). Redis must answer at start-up.
pub async fn open_store(
    cfg: &Config,
    alerts: StoreAlerts,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Arc<dyn Store>> {
    let target = match &cfg.store.backend {
        StoreBackend::Embedded => {
            return Ok(Arc::new(EmbeddedStore::open(
                &cfg.state_dir.join("backstop.redb"),
            )?));
        }
        StoreBackend::Redis(RedisTarget::Single(u)) => Target::Single(u.clone()),
        StoreBackend::Redis(RedisTarget::Cluster(nodes)) => Target::Cluster(nodes.clone()),
        StoreBackend::Redis(RedisTarget::Sentinel { sentinels, master }) => Target::Sentinel {
            sentinels: sentinels.clone(),
            master: master.clone(),
        },
    };
    // rediss://: the one crypto provider, also for commands that do not `serve`
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let s = &cfg.store;
    let client = s.tls_cert.as_deref().zip(s.tls_key.as_deref());
    let tls = crate::store::redis::Tls::read(s.tls_ca.as_deref(), client).context("[store] TLS")?;
    let shared = RedisStore::connect_with_tls(&target, &tls, &s.namespace)
        .await
        .context("[store] redis")?;
    let local = EmbeddedStore::open(&cfg.state_dir.join("local.redb"))?;
    let hook: Hook = Arc::new(move |down, detail| {
        let kind = if down {
            "store_degraded"
        } else {
            "store_recovered"
        };
        match alerts.load_full() {
            Some(a) => a.raise(kind, "store", detail, clock.unix()),
            None => crate::telemetry::Event::Alert {
                kind,
                subject: "store",
                detail,
            }
            .emit(),
        }
    });
    Ok(Arc::new(Failover::new(
        Arc::new(shared),
        Arc::new(local),
        hook,
    )))
}

/// The recipient verifier for `cfg`; with `previous`, its call-out state (probes in flight,
/// budgets, backend health) carries over.
fn verifier(
    cfg: &Config,
    (store, clock): (&Arc<dyn Store>, &Arc<dyn Clock>),
    previous: Option<&Verifier>,
    backends: Option<Arc<Backends>>,
) -> anyhow::Result<Arc<Verifier>> {
    let sender = match cfg.callout.probe_sender.as_str() {
        "" => ReversePath::Null,
        s => ReversePath::Mailbox(Mailbox::parse(s, false).context("callout.probe_sender")?),
    };
    let prober = Arc::new(SmtpProber::new(
        sender,
        &cfg.hostname,
        cfg.callout.timeout,
        cfg.callout.max_connections,
    ));
    let callout = match previous {
        Some(v) => v.callout().reconfigured(cfg.callout.clone(), prober),
        None => {
            let random: Random = Arc::new(rand::random::<u64>);
            Callout::new(
                cfg.callout.clone(),
                store.clone(),
                clock.clone(),
                (prober, random),
                backends,
            )
        }
    };
    Ok(Arc::new(Verifier::new(cfg, callout, clock.clone())?))
}

/// Opens the store and builds the verifier.
pub async fn build(cfg: Config) -> anyhow::Result<Parts> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("state_dir {}: cannot create", cfg.state_dir.display()))?;
    let store_alerts = StoreAlerts::default();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_store(&cfg, store_alerts.clone(), clock.clone()).await?;
    let verifier = verifier(&cfg, (&store, &clock), None, None)?;
    Ok(Parts {
        cfg: Arc::new(cfg),
        store,
        verifier,
        clock,
        store_alerts,
    })
}

/// The BATV keys (generated into the store on first use) and the bounce guard.
pub async fn guard(parts: &Parts) -> anyhow::Result<Arc<Guard>> {
    let now = parts.clock.unix();
    let store = parts.store.as_ref();
    let tags = Tags::load(&parts.cfg, store, now, rand::random::<[u8; 16]>)
        .await
        .context("BATV keys")?;
    let guard = Guard::new(parts.cfg.clone(), parts.store.clone(), Arc::new(tags), now)
        .await
        .context("BATV enforcement")?;
    Ok(Arc::new(guard))
}

/// What `serve` checks before it starts and `check-config` checks too: the state directory is
/// private and can be written, no key file can be written by others, every listener's
/// certificate and key load, every list file parses, every DKIM key file holds its key.
pub fn preflight(cfg: &Config) -> anyhow::Result<()> {
    preflight_state_dir(cfg)?;
    let mut keys: Vec<(String, &std::path::Path)> = cfg
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((format!("listen[{i}].tls_key"), l.tls_key.as_deref()?)))
        .collect();
    keys.extend(
        cfg.store
            .tls_key
            .as_deref()
            .map(|k| ("store.tls_key".into(), k)),
    );
    let dkim: Vec<(String, std::path::PathBuf)> = cfg
        .dkim
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let path = k.key.clone();
            let path = path.unwrap_or_else(|| crate::dkim::generated_path(&cfg.state_dir, k));
            (format!("dkim[{i}].key"), path)
        })
        .collect();
    keys.extend(dkim.iter().map(|(k, p)| (k.clone(), p.as_path())));
    for (key, path) in keys {
        crate::private::check_key_file(&key, path).map_err(|e| anyhow::anyhow!(e))?;
    }
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let (Some(c), Some(k)) = (&l.tls_cert, &l.tls_key) {
            crate::inbound::tls::acceptor(c, k).map_err(|e| anyhow::anyhow!("listen[{i}]: {e}"))?;
        }
    }
    for (i, d) in cfg.domains.iter().enumerate() {
        for s in &d.sources {
            if let Source::List(p) = s {
                crate::policy::lists::ListFile::load(p)
                    .map_err(|e| anyhow::anyhow!("domain[{i}].recipients: {e}"))?;
            }
        }
    }
    // keys read and checked; one still to be generated is made at the first start
    crate::dkim::Signer::load(cfg, false).context("dkim")?;
    Ok(())
}

/// The state directory made private, created if missing, and tried for writing.
pub fn preflight_state_dir(cfg: &Config) -> anyhow::Result<()> {
    let dir = &cfg.state_dir;
    for change in crate::private::check_state_dir(dir).map_err(|e| anyhow::anyhow!(e))? {
        tracing::warn!("made private (it holds queued mail and the BATV key): {change}");
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("state_dir {}: cannot create", dir.display()))?;
    let probe = dir.join(format!(".backstop-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"ok")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("state_dir {}: cannot write", dir.display()))?;
    Ok(())
}

/// What outlives a reload.
struct Kept {
    source: ConfigSource,
    store: Arc<dyn Store>,
    store_alerts: StoreAlerts,
    spool: Arc<Spool>,
    clock: Arc<dyn Clock>,
    ids: Arc<IdGen>,
    backends: Arc<Backends>,
    /// Outbound TLS sessions counted for TLS reports (state_dir/tls-reports.json).
    tls_results: Arc<Ledger>,
    /// Wakes the TLS report task at once (`backstop tls-report send`).
    tls_reports_now: Arc<tokio::sync::Notify>,
}

/// Everything built from one configuration.
struct Generation {
    cfg: Arc<Config>,
    ctx: Arc<Context>,
    served: Arc<Served>,
    alerts: Arc<Alerts>,
    reputation: Arc<Reputation>,
    /// SPF and DKIM through this configuration's resolver (for the notifier).
    auth: Arc<SenderAuth>,
    /// The DKIM keys (for the notifier; the listeners have them in `ctx`).
    dkim: Arc<crate::dkim::Signer>,
}

/// Builds a generation for `cfg` (and the delivery setup that goes with it). With `previous`,
/// what must carry over (connection counts, stopped bounces, call-out state) does.
async fn generation(
    kept: &Kept,
    cfg: Arc<Config>,
    previous: Option<&Generation>,
) -> anyhow::Result<(Generation, Setup)> {
    let (store, clock, now) = (&kept.store, &kept.clock, kept.clock.unix());
    let previous_verifier = previous.map(|p| p.served.verifier.as_ref());
    let backends = Some(kept.backends.clone());
    let verifier = verifier(&cfg, (store, clock), previous_verifier, backends)?;
    let tags = Tags::load(&cfg, store.as_ref(), now, rand::random::<[u8; 16]>)
        .await
        .context("BATV keys")?;
    let tags = Arc::new(tags);
    let guard = match previous {
        Some(p) => {
            p.served
                .guard
                .reconfigured(cfg.clone(), tags.clone(), now)
                .await
        }
        None => Guard::new(cfg.clone(), store.clone(), tags.clone(), now).await,
    };
    let guard = Arc::new(guard.context("BATV enforcement")?);
    let dns = &cfg.dns;
    let resolver =
        MxResolver::new(dns.resolver, dns.timeout, dns.attempts).context("dns.resolver")?;
    let auth = SenderAuth::new(dns.resolver, dns.timeout, dns.attempts).context("dns.resolver")?;
    let dkim = Arc::new(crate::dkim::Signer::load(&cfg, true).context("dkim")?);
    let alerts = Arc::new(Alerts::new(cfg.clone(), store.clone()));
    let watch = Arc::new(Watch::new(
        cfg.clone(),
        store.clone(),
        kept.spool.clone(),
        alerts.clone(),
    ));
    let reputation = Arc::new(Reputation::new(
        cfg.clone(),
        store.clone(),
        resolver.clone(),
        alerts.clone(),
    ));
    let harvest = match previous {
        Some(p) => p.ctx.harvest.reconfigured(cfg.clone()),
        None => Harvest::new(cfg.clone(), store.clone()),
    };
    let harvest = Arc::new(harvest);
    let outbound = Arc::new(crate::outbound::Limiter::new(cfg.clone(), store.clone()));
    let ladder = Arc::new(Ladder::new(
        cfg.clone(),
        verifier.clone(),
        guard.clone(),
        harvest.clone(),
        outbound.clone(),
        (clock.clone(), Some(watch.clone())),
    ));
    let ctx = Arc::new(Context {
        cfg: cfg.clone(),
        verifier: verifier.clone(),
        relays: Pools::new(&cfg.hostname, RELAY_TIMEOUT, MAX_RELAY_CONNECTIONS),
        clock: clock.clone(),
        ids: kept.ids.clone(),
        spool: kept.spool.clone(),
        guard: guard.clone(),
        harvest,
        watch: watch.clone(),
        outbound,
        backends: kept.backends.clone(),
        ladder: ladder.clone(),
        dkim: dkim.clone(),
    });
    let served = Arc::new(Served {
        cfg: cfg.clone(),
        store: store.clone(),
        verifier,
        guard,
        ladder,
        watch: watch.clone(),
        spool: kept.spool.clone(),
        clock: clock.clone(),
        backends: kept.backends.clone(),
        tls_results: kept.tls_results.clone(),
        tls_reports_now: kept.tls_reports_now.clone(),
    });
    let tls_results = kept.tls_results.clone();
    let setup = Setup::new(
        cfg.clone(),
        (resolver, tls_results),
        (tags, watch, reputation.clone()),
    )
    .correcting(served.verifier.callout().clone());
    let generation = Generation {
        cfg,
        ctx,
        served,
        alerts,
        reputation,
        auth: Arc::new(auth),
        dkim,
    };
    Ok((generation, setup))
}

/// Raises `backend_down` and `backend_up` alerts through the current alerts.
fn backend_alerts(alerts: StoreAlerts, clock: Arc<dyn Clock>) -> crate::health::Hook {
    Arc::new(move |down, role, target, detail| {
        let (kind, detail) = match down {
            true => (
                "backend_down",
                format!("{} {target} does not answer: {detail}", role.as_str()),
            ),
            false => (
                "backend_up",
                format!("{} {target} answers again", role.as_str()),
            ),
        };
        match alerts.load_full() {
            Some(a) => a.raise(kind, target, &detail, clock.unix()),
            None => crate::telemetry::Event::Alert {
                kind,
                subject: target,
                detail: &detail,
            }
            .emit(),
        }
    })
}

/// The web listener that runs now.
struct WebServer {
    /// As configured (port 0: any).
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The running gateway: what a reload replaces, and what it keeps.
struct Gateway {
    kept: Kept,
    generation: Generation,
    listeners: Listeners,
    /// What the control socket and the web answer from.
    current: Arc<ArcSwap<Served>>,
    engine: Arc<Engine>,
    notifier: Arc<Notifier>,
    web: Option<WebServer>,
    /// The dashboard's state (history and metrics): kept when its listener moves.
    web_state: Arc<crate::web::Web>,
    dnsbl: tokio::task::JoinHandle<()>,
    delivery: tokio::task::JoinHandle<()>,
    /// Turns true at SIGTERM: sessions and delivery stop taking new work.
    shutdown: watch::Sender<bool>,
    /// Every session holds a sender: this yields `None` once the last one has ended.
    alive: mpsc::Receiver<()>,
}

/// Runs the gateway until SIGTERM or SIGINT, then stops gracefully; SIGHUP (or `backstop
/// reload`) reloads `source`. `ready` gets the bound listener addresses once clients can
/// connect.
pub async fn serve(
    source: ConfigSource,
    cfg: Config,
    ready: impl FnOnce(&[crate::config::ListenAddr]),
) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    preflight(&cfg)?;
    let (mut gw, prepared) = Gateway::start(source, cfg).await?;
    let (reload_tx, mut reload_rx) = mpsc::channel::<ReloadRequest>(4);
    let background = gw.spawn_background(reload_tx)?;
    // caught before the first client is served: a SIGTERM from then on stops gracefully
    let signals = Signals::new()?;
    gw.listeners.apply(prepared);
    ready(&gw.listeners.addrs());
    systemd_notify("READY=1\nSTATUS=accepting mail");
    gw.run_until_stopped(signals, &mut reload_rx).await?;
    gw.stop(background).await;
    Ok(())
}

/// The signals `serve` answers, caught from the moment this is made.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The spool, with an error that names its directory once.
fn open_spool(cfg: &Config) -> anyhow::Result<Arc<Spool>> {
    Spool::open(&spool_dir(cfg)).map_err(|e| match e {
        crate::queue::SpoolError::Io(io) | crate::queue::SpoolError::Full(io) => {
            anyhow::anyhow!("spool {}: {io}", spool_dir(cfg).display())
        }
        locked => anyhow::anyhow!("{locked}"),
    })
}

/// The TLS report counts kept in `state_dir/tls-reports.json`; a file that is not one is
/// set aside (`.bad`) with a warning, and counting starts afresh.
fn open_tls_ledger(cfg: &Config, now: u64) -> anyhow::Result<Arc<Ledger>> {
    let path = cfg.state_dir.join("tls-reports.json");
    match Ledger::open(&path, now) {
        Ok(l) => Ok(Arc::new(l)),
        Err(e @ crate::tlsrpt::LedgerError::Corrupt(..)) => {
            let aside = path.with_extension("json.bad");
            tracing::warn!(error = %e, aside = %aside.display(), "TLS report counts set aside; counting afresh");
            std::fs::rename(&path, &aside).with_context(|| format!("{}", path.display()))?;
            Ok(Arc::new(Ledger::open(&path, now)?))
        }
        Err(e) => Err(e.into()),
    }
}

/// Tells systemd (`Type=notify`) how the service is doing, when it runs under systemd
/// (`NOTIFY_SOCKET` set); otherwise nothing.
fn systemd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "systemd not told {state:?}"),
    };
    let bytes = path.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        // an abstract socket
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "systemd not told {state:?}");
    }
}

/// Binds the web listener.
async fn bind_web(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("web.addr {addr}: cannot listen"))
}

/// Serves the web on `listener` until its stop is sent.
fn start_web(
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    state: &Arc<crate::web::Web>,
) -> anyhow::Result<WebServer> {
    let a = listener.local_addr()?;
    tracing::info!(addr = %a, "web: dashboard at http://{a}/, metrics at http://{a}/metrics");
    let (stop, stopped) = watch::channel(false);
    let task = crate::web::serve(listener, state.clone(), stopped);
    Ok(WebServer { addr, stop, task })
}

/// The start-up lines: the version, where the configuration came from, the domains with their
/// sources and next hops, and the store (the listeners log as they start).
fn log_startup(source: &ConfigSource, cfg: &Config) {
    let version = env!("CARGO_PKG_VERSION");
    tracing::info!(
        version, config = %source, hostname = cfg.hostname, state_dir = %cfg.state_dir.display(),
        "backstop {version} starting with configuration {source}"
    );
    for d in &cfg.domains {
        let sources: Vec<String> = d.sources.iter().map(ToString::to_string).collect();
        let relay = match d.relay {
            crate::config::RelayMode::InSession => "in-session",
            crate::config::RelayMode::Queue => "queue",
        };
        tracing::info!(
            domain = %d.name, recipients = sources.join(","), next_hop = %d.next_hop, relay,
            "domain {}: recipients from {}, mail to {} ({relay})",
            d.name, sources.join(", "), d.next_hop
        );
    }
    let store = match &cfg.store.backend {
        StoreBackend::Embedded => format!(
            "embedded ({})",
            cfg.state_dir.join("backstop.redb").display()
        ),
        StoreBackend::Redis(RedisTarget::Single(u)) => format!("redis {}", redact(u)),
        StoreBackend::Redis(RedisTarget::Cluster(n)) => {
            format!("redis cluster ({} nodes given)", n.len())
        }
        StoreBackend::Redis(RedisTarget::Sentinel { master, .. }) => {
            format!("redis sentinel, master {master}")
        }
    };
    tracing::info!(store, "store: {store}");
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match crate::config::credentials(url) {
        Some((scheme, rest)) => format!("{scheme}://(credentials)@{rest}"),
        None => url.to_string(),
    }
}

impl Gateway {
    /// Opens the store and the spool, builds the first generation, binds the listeners (not
    /// serving them yet: see [`Listeners::apply`]) and the web, and starts delivery.
    async fn start(
        source: ConfigSource,
        cfg: Config,
    ) -> anyhow::Result<(Gateway, crate::inbound::Prepared)> {
        let metrics = Metrics::install().unwrap_or_default();
        let parts = build(cfg).await?;
        let cfg = parts.cfg.clone();
        let spool = open_spool(&cfg)?;
        let hook = backend_alerts(parts.store_alerts.clone(), parts.clock.clone());
        let kept = Kept {
            source,
            store: parts.store.clone(),
            store_alerts: parts.store_alerts.clone(),
            spool: spool.clone(),
            clock: parts.clock.clone(),
            ids: Arc::new(IdGen::new(rand::random::<u64>())),
            backends: Backends::new(hook),
            tls_results: open_tls_ledger(&cfg, parts.clock.unix())?,
            tls_reports_now: Arc::new(tokio::sync::Notify::new()),
        };
        kept.backends.follow(&cfg, kept.clock.unix());
        let (generation, setup) = generation(&kept, cfg.clone(), None).await?;
        kept.store_alerts.store(Some(generation.alerts.clone()));
        log_startup(&kept.source, &cfg);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let listeners = Listeners::new(shutdown_rx.clone(), alive_tx);
        let prepared = listeners.prepare(&cfg, &generation.ctx)?;
        let current = Arc::new(ArcSwap::new(generation.served.clone()));
        let web_state = Arc::new(crate::web::Web::new(current.clone(), metrics));
        let web = match cfg.web.addr {
            Some(addr) => Some(start_web(addr, bind_web(addr).await?, &web_state)?),
            None => None,
        };
        let (store, clock, ids) = (&kept.store, &kept.clock, &kept.ids);
        let notifier = Notifier::new(
            (spool.clone(), store.clone()),
            (cfg, generation.auth.clone(), generation.dkim.clone()),
            clock.clone(),
            ids.clone(),
        );
        notifier.posting(setup.verified_tls());
        let notifier = Arc::new(notifier);
        tracing::info!(messages = spool.len(), "queue loaded");
        let parts = (notifier.clone(), kept.backends.clone());
        let engine = Arc::new(Engine::new(spool, clock.clone(), parts, setup));
        let delivery = tokio::spawn(engine.clone().run(shutdown_rx));
        let dnsbl = tokio::spawn(generation.reputation.clone().run(clock.clone()));
        let gw = Gateway {
            kept,
            generation,
            listeners,
            current,
            engine,
            notifier,
            web,
            web_state,
            dnsbl,
            delivery,
            shutdown,
            alive,
        };
        Ok((gw, prepared))
    }

    /// The tasks that run beside the listeners; they follow reloads through `current`.
    fn spawn_background(
        &self,
        reloads: mpsc::Sender<ReloadRequest>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let k = &self.kept;
        let cfg = &self.generation.cfg;
        let control_path = crate::control::socket_path(&cfg.state_dir);
        let control = Arc::new(Control {
            current: self.current.clone(),
            reloads,
        });
        let control = crate::control::serve(&control_path, control)
            .with_context(|| format!("control socket {}", control_path.display()))?;
        Ok(vec![
            control,
            tokio::spawn(compact_spool(k.spool.clone())),
            tokio::spawn(settle_reports(self.notifier.clone(), self.current.clone())),
            tokio::spawn(tls_reports(self.notifier.clone(), self.current.clone())),
            tokio::spawn(reload_lists(self.current.clone())),
            tokio::spawn(purge_cache(k.store.clone(), k.clock.clone())),
            // every generation's harvest shares one set of counts: any of them flushes all
            tokio::spawn(flush_counts(self.generation.ctx.harvest.clone())),
            tokio::spawn(check_backends(k.backends.clone(), self.current.clone())),
        ])
    }

    /// Waits for SIGTERM or SIGINT; reloads on SIGHUP and on requests from the control
    /// socket.
    async fn run_until_stopped(
        &mut self,
        signals: Signals,
        reloads: &mut mpsc::Receiver<ReloadRequest>,
    ) -> anyhow::Result<()> {
        let Signals {
            mut term,
            mut int,
            mut hup,
        } = signals;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let _ = self.reload().await;
                }
                Some(answer) = reloads.recv() => {
                    tracing::info!("reload asked for (backstop reload)");
                    let _ = answer.send(match self.reload().await {
                        Ok(changes) => serde_json::json!({
                            "config": self.kept.source.to_string(),
                            "changes": changes,
                        }),
                        Err(e) => serde_json::json!({ "error": e }),
                    });
                }
            }
        }
    }

    /// Reads the configuration again and, when it is valid, runs it; otherwise the running one
    /// stays. Logs either way; the changes made, or why none were.
    async fn reload(&mut self) -> Result<Vec<String>, String> {
        systemd_notify("RELOADING=1");
        let result = self.try_reload().await;
        systemd_notify("READY=1\nSTATUS=accepting mail");
        match result {
            Ok(changes) => {
                for c in &changes {
                    tracing::info!("reload: {c}");
                }
                let source = &self.kept.source;
                tracing::info!(
                    config = %source, changes = changes.len(),
                    "configuration {source} reloaded: {} change(s)", changes.len()
                );
                Ok(changes)
            }
            Err(e) => {
                // one line, as every log line: a TOML error's picture of the line is folded
                let e = format!("{e:#}")
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                let source = &self.kept.source;
                let what = "configuration not reloaded; the running one stays";
                tracing::error!(config = %source, error = %e, "{what}");
                Err(e)
            }
        }
    }

    async fn try_reload(&mut self) -> anyhow::Result<Vec<String>> {
        let source = &self.kept.source;
        let mut cfg = source
            .load()
            .map_err(|e| anyhow::anyhow!("configuration {source}: {e}"))?;
        let old = self.generation.cfg.clone();
        let mut notes = Vec::new();
        if cfg.state_dir != old.state_dir {
            notes.push(format!(
                "state_dir: needs a restart; still {}",
                old.state_dir.display()
            ));
            cfg.state_dir = old.state_dir.clone();
        }
        if cfg.store != old.store {
            notes.push("store: needs a restart; the running store stays".to_string());
            cfg.store = old.store.clone();
        }
        preflight(&cfg)?;
        let mut changes = crate::config::diff::changes(&old, &cfg);
        changes.extend(notes);
        let cfg = Arc::new(cfg);
        let (generation, setup) =
            generation(&self.kept, cfg.clone(), Some(&self.generation)).await?;
        let prepared = self.listeners.prepare(&cfg, &generation.ctx)?;
        let web_moves = self.web.as_ref().map(|w| w.addr) != cfg.web.addr;
        let web_listener = match cfg.web.addr {
            Some(a) if web_moves => Some((a, bind_web(a).await?)),
            _ => None,
        };
        // all checked: from here on nothing fails
        self.listeners.apply(prepared);
        self.current.store(generation.served.clone());
        self.kept
            .store_alerts
            .store(Some(generation.alerts.clone()));
        self.notifier.posting(setup.verified_tls());
        self.engine.reconfigure(setup);
        self.notifier.reconfigure(
            cfg.clone(),
            generation.auth.clone(),
            generation.dkim.clone(),
        );
        self.kept.backends.follow(&cfg, self.kept.clock.unix());
        if web_moves {
            if let Some(w) = self.web.take() {
                let _ = w.stop.send(true);
            }
            if let Some((a, l)) = web_listener {
                self.web = start_web(a, l, &self.web_state).ok();
            }
        }
        let watched = |c: &Config| {
            (
                c.reputation.clone(),
                c.dns.clone(),
                c.alerts.clone(),
                c.hostname.clone(),
            )
        };
        if watched(&old) != watched(&cfg) {
            self.dnsbl.abort();
            let r = generation.reputation.clone();
            self.dnsbl = tokio::spawn(r.run(self.kept.clock.clone()));
        }
        self.generation = generation;
        Ok(changes)
    }

    /// Stops: no new connections or deliveries; sessions and deliveries in flight finish their
    /// transaction within `shutdown_timeout`; then the background tasks stop, what is kept in
    /// memory is written, and the web finishes its requests.
    async fn stop(mut self, background: Vec<tokio::task::JoinHandle<()>>) {
        let timeout = self.generation.cfg.limits.shutdown_timeout;
        tracing::info!(grace = ?timeout, "stopping: no new connections, sessions in flight may finish");
        systemd_notify("STOPPING=1\nSTATUS=stopping: sessions in flight may finish");
        let _ = self.shutdown.send(true);
        self.listeners.stop_accepting();
        let deadline = tokio::time::Instant::now() + timeout;
        let sessions = tokio::time::timeout_at(deadline, self.alive.recv());
        let (sessions, deliveries) = tokio::join!(sessions, self.engine.drain(deadline));
        match sessions {
            Ok(_) => tracing::info!("all sessions ended"),
            Err(_) => tracing::warn!("sessions still open after the shutdown timeout were cut off"),
        }
        match deliveries {
            0 => tracing::info!("no delivery in flight"),
            n => tracing::warn!(
                deliveries = n,
                "{n} delivery transaction(s) still running after the shutdown timeout were cut \
                 off; they are tried again at the next start (a message may arrive twice)"
            ),
        }
        for t in background {
            t.abort();
        }
        self.dnsbl.abort();
        if let Err(e) = self.generation.ctx.harvest.flush().await {
            tracing::warn!(error = %e, "defence counts not written: store failed");
        }
        if let Err(e) = self.kept.tls_results.flush() {
            tracing::warn!(error = %e, "TLS report counts not written");
        }
        if let Some(web) = self.web {
            let _ = web.stop.send(true);
            // requests in flight finish; a client that holds its connection is not waited for
            if tokio::time::timeout(WEB_GRACE, web.task).await.is_err() {
                tracing::warn!("web requests still open after {WEB_GRACE:?} were cut off");
            }
        }
        let _ = self.delivery.await;
        let spool = &self.kept.spool;
        let (records, syncs) = spool.write_stats();
        tracing::info!(
            records,
            syncs,
            queued = spool.len(),
            "spool: {records} records made durable with {syncs} syncs"
        );
        let _ = std::fs::remove_file(crate::control::socket_path(&self.generation.cfg.state_dir));
    }
}

async fn reload_lists(current: Arc<ArcSwap<Served>>) {
    let mut tick = tokio::time::interval(LIST_RELOAD_EVERY);
    loop {
        tick.tick().await;
        let served = current.load_full();
        for list in served.verifier.lists() {
            match list.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(file = %list.path().display(), entries = list.data().len(), "list reloaded")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "list not reloaded; the previous contents stay in use")
                }
            }
        }
    }
}

async fn compact_spool(spool: Arc<Spool>) {
    let mut tick = tokio::time::interval(COMPACT_EVERY);
    loop {
        tick.tick().await;
        match spool.compact().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(segments = n, "spool segments removed"),
            Err(e) => tracing::warn!(error = %e, "spool compaction failed"),
        }
    }
}

/// Settles reports left undecided (at start-up: a crash between a delivery pass and its
/// report; later: a store failure), and removes finished messages kept for the operator once
/// `[reports] keep_failed` has passed.
async fn settle_reports(notifier: Arc<Notifier>, current: Arc<ArcSwap<Served>>) {
    let mut tick = tokio::time::interval(REPORT_SWEEP_EVERY);
    loop {
        tick.tick().await;
        notifier.sweep().await;
        if let Err(e) = notifier.digest().await {
            tracing::warn!(error = %e, "postmaster digest not sent yet; tried again later");
        }
        let s = current.load_full();
        let keep = s.cfg.reports.keep_failed;
        let before = s.clock.unix().saturating_sub(keep.as_secs());
        match s.spool.purge_finished(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "finished messages removed after keep_failed"),
            Err(e) => tracing::warn!(error = %e, "removing finished messages failed"),
        }
    }
}

/// Writes the TLS report counts and sends the TLS reports that are due, every minute and
/// when `backstop tls-report send` asks (a task of its own: DNS lookups for many domains
/// never hold up delivery reports).
async fn tls_reports(notifier: Arc<Notifier>, current: Arc<ArcSwap<Served>>) {
    let mut tick = tokio::time::interval(REPORT_SWEEP_EVERY);
    let now = current.load_full().tls_reports_now.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = now.notified() => {}
        }
        notifier.tls_reports(&current.load_full().tls_results).await;
    }
}

async fn flush_counts(harvest: Arc<Harvest>) {
    let mut tick = tokio::time::interval(FLUSH_COUNTS_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = harvest.flush().await {
            tracing::warn!(error = %e, "defence counts not written yet: store failed");
        }
    }
}

/// Checks the next hops and call-out servers every `[health] interval`, as HELO the current
/// hostname.
async fn check_backends(backends: Arc<Backends>, current: Arc<ArcSwap<Served>>) {
    let clock = current.load().clock.clone();
    let settings = move || {
        let served = current.load_full();
        let cfg = &served.cfg;
        crate::health::Round {
            helo: cfg.hostname.clone(),
            timeout: cfg.callout.timeout.min(cfg.delivery.timeout),
            interval: cfg.health.interval,
            checks: served.verifier.checks(),
        }
    };
    backends.run(settings, clock).await;
}

async fn purge_cache(store: Arc<dyn Store>, clock: Arc<dyn Clock>) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    loop {
        tick.tick().await;
        match store.purge_expired(clock.unix()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "expired call-out cache entries removed"),
            Err(e) => tracing::warn!(error = %e, "call-out cache purge failed"),
        }
    }
}
