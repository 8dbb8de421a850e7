//! The composition root: the only place that wires modules together and spawns long-lived
//! tasks (listeners, list reloads, cache purge, control socket), and that runs the graceful
//! stop on SIGTERM.

use crate::alert::Alerts;
use crate::auth::SenderAuth;
use crate::backscatter::{Guard, Tags};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, RedisTarget, StoreBackend};
use crate::delivery::Engine;
use crate::delivery::mx::MxResolver;
use crate::harvest::Harvest;
use crate::ids::IdGen;
use crate::inbound::{self, Context};
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
use crate::upstream::Pools;
use anyhow::Context as _;
use backstop_proto::address::{Mailbox, ReversePath};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the web listener may take to finish its requests at shutdown.
const WEB_GRACE: Duration = Duration::from_secs(5);
/// How often list files are checked for changes.
const LIST_RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How often expired cache entries are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// The wired-up parts that `serve` and `verify` share.
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

/// Longest wait for one DNS answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// How often undecided reports and old finished messages are looked at.
const REPORT_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the spool's disk space is reclaimed.
const COMPACT_EVERY: Duration = Duration::from_secs(5);

/// The spool's directory in `state_dir`.
pub fn spool_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("queue")
}

/// Where alerts about the shared store go once they can (set when serving).
pub type StoreAlerts = Arc<OnceLock<Arc<Alerts>>>;

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
    let shared = RedisStore::connect(&target, &cfg.store.namespace)
        .await
        .context("[store] redis")?;
    let local = EmbeddedStore::open(&cfg.state_dir.join("local.redb"))?;
    let hook: Hook = Arc::new(move |down, detail| {
        let kind = if down {
            "store_degraded"
        } else {
            "store_recovered"
        };
        match alerts.get() {
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

/// Opens the store and builds the verifier.
pub async fn build(cfg: Config) -> anyhow::Result<Parts> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("state_dir {}: cannot create", cfg.state_dir.display()))?;
    let store_alerts = StoreAlerts::default();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = open_store(&cfg, store_alerts.clone(), clock.clone()).await?;
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
    let random: Random = Arc::new(rand::random::<u64>);
    let callout = Callout::new(
        cfg.callout.clone(),
        store.clone(),
        clock.clone(),
        prober,
        random,
    );
    let verifier = Arc::new(Verifier::new(&cfg, callout, clock.clone())?);
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

/// Runs the gateway until SIGTERM or SIGINT, then stops gracefully. `ready` gets the bound
/// listener addresses once clients can connect.
pub async fn serve(cfg: Config, ready: impl FnOnce(&[SocketAddr])) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let parts = build(cfg).await?;
    let cfg = parts.cfg.clone();
    let bound = inbound::bind(&cfg).await?;
    let metrics = Metrics::install().unwrap_or_default();
    let web_listener = match cfg.web.addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("web.addr {addr}: cannot listen"))?;
            let a = l.local_addr()?;
            tracing::info!(addr = %a, "web: dashboard at http://{a}/, metrics at http://{a}/metrics");
            Some(l)
        }
        None => None,
    };
    let addrs = bound
        .iter()
        .map(|b| b.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let spool = Spool::open(&spool_dir(&cfg))
        .with_context(|| format!("spool {}", spool_dir(&cfg).display()))?;
    let queued = spool.len();
    let resolver = MxResolver::new(cfg.delivery.resolver, DNS_TIMEOUT.min(cfg.delivery.timeout))
        .context("delivery.resolver")?;
    let auth = SenderAuth::new(cfg.delivery.resolver, DNS_TIMEOUT.min(cfg.delivery.timeout))
        .context("delivery.resolver")?;
    let guard = guard(&parts).await?;
    let alerts = Arc::new(Alerts::new(cfg.clone(), parts.store.clone()));
    let _ = parts.store_alerts.set(alerts.clone());
    let watch = Arc::new(Watch::new(
        cfg.clone(),
        parts.store.clone(),
        spool.clone(),
        alerts.clone(),
    ));
    let reputation = Arc::new(Reputation::new(
        cfg.clone(),
        parts.store.clone(),
        resolver.clone(),
        alerts,
    ));
    let tags = guard.tags().clone();
    let ids = Arc::new(IdGen::new(rand::random::<u64>()));
    let notifier = Arc::new(Notifier::new(
        spool.clone(),
        parts.store.clone(),
        cfg.clone(),
        parts.clock.clone(),
        ids.clone(),
    ));
    let engine = Arc::new(Engine::new(
        spool.clone(),
        cfg.clone(),
        parts.clock.clone(),
        resolver,
        notifier.clone(),
        (tags, watch.clone(), reputation.clone()),
    ));
    let harvest = Arc::new(Harvest::new(cfg.clone(), parts.store.clone()));
    let ctx = Arc::new(Context {
        cfg: cfg.clone(),
        verifier: parts.verifier.clone(),
        relays: Pools::new(&cfg.hostname, RELAY_TIMEOUT, MAX_RELAY_CONNECTIONS),
        clock: parts.clock.clone(),
        ids,
        auth: Arc::new(auth),
        spool: spool.clone(),
        guard: guard.clone(),
        harvest: harvest.clone(),
        watch: watch.clone(),
        outbound: Arc::new(crate::outbound::Limiter::new(
            cfg.clone(),
            parts.store.clone(),
        )),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tracing::info!(messages = queued, "queue loaded");
    let delivery = tokio::spawn(engine.run(shutdown_rx.clone()));
    let compact = tokio::spawn(compact_spool(spool.clone()));
    let reports = tokio::spawn(settle_reports(
        notifier,
        spool.clone(),
        parts.clock.clone(),
        cfg.reports.keep_failed,
    ));
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    for b in bound {
        tokio::spawn(inbound::accept_loop(
            b,
            ctx.clone(),
            shutdown_rx.clone(),
            alive_tx.clone(),
        ));
    }
    drop(alive_tx);
    let control_path = crate::control::socket_path(&cfg.state_dir);
    let served = Arc::new(crate::control::Served {
        cfg: cfg.clone(),
        store: parts.store.clone(),
        verifier: parts.verifier.clone(),
        guard: guard.clone(),
        watch: watch.clone(),
        spool: spool.clone(),
        clock: parts.clock.clone(),
    });
    let control = crate::control::serve(&control_path, served.clone())
        .with_context(|| format!("control socket {}", control_path.display()))?;
    let web = match web_listener {
        Some(listener) => {
            let web = Arc::new(crate::web::Web::new(served, metrics));
            Some(crate::web::serve(listener, web, shutdown_rx.clone()))
        }
        None => None,
    };
    let reload = tokio::spawn(reload_lists(parts.verifier.clone()));
    let purge = tokio::spawn(purge_cache(parts.store.clone(), parts.clock.clone()));
    let dnsbl = tokio::spawn(reputation.run(parts.clock.clone()));
    let counts = tokio::spawn(flush_counts(harvest.clone()));
    for a in &addrs {
        tracing::info!(addr = %a, "listening on {a}");
    }
    ready(&addrs);

    wait_for_signal().await?;
    tracing::info!(grace = ?cfg.limits.shutdown_timeout, "stopping: no new connections, sessions in flight may finish");
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(cfg.limits.shutdown_timeout, alive_rx.recv()).await {
        Ok(_) => tracing::info!("all sessions ended"),
        Err(_) => tracing::warn!("sessions still open after the shutdown timeout were cut off"),
    }
    control.abort();
    reload.abort();
    purge.abort();
    dnsbl.abort();
    counts.abort();
    if let Err(e) = harvest.flush().await {
        tracing::warn!(error = %e, "defence counts not written: store failed");
    }
    compact.abort();
    reports.abort();
    if let Some(web) = web {
        // requests in flight finish; a client that holds its connection is not waited for
        if tokio::time::timeout(WEB_GRACE, web).await.is_err() {
            tracing::warn!("web requests still open after {WEB_GRACE:?} were cut off");
        }
    }
    let _ = delivery.await;
    let (records, syncs) = spool.write_stats();
    tracing::info!(
        records,
        syncs,
        queued = spool.len(),
        "spool: {records} records made durable with {syncs} syncs"
    );
    let _ = std::fs::remove_file(&control_path);
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

async fn reload_lists(verifier: Arc<Verifier>) {
    let mut tick = tokio::time::interval(LIST_RELOAD_EVERY);
    loop {
        tick.tick().await;
        for list in verifier.lists() {
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
/// `keep` has passed.
async fn settle_reports(
    notifier: Arc<Notifier>,
    spool: Arc<Spool>,
    clock: Arc<dyn Clock>,
    keep: Duration,
) {
    let mut tick = tokio::time::interval(REPORT_SWEEP_EVERY);
    loop {
        tick.tick().await;
        notifier.sweep().await;
        if let Err(e) = notifier.digest().await {
            tracing::warn!(error = %e, "postmaster digest not sent yet; tried again later");
        }
        let before = clock.unix().saturating_sub(keep.as_secs());
        match spool.purge_finished(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "finished messages removed after keep_failed"),
            Err(e) => tracing::warn!(error = %e, "removing finished messages failed"),
        }
    }
}

/// How often counts kept in memory are added to the store.
const FLUSH_COUNTS_EVERY: Duration = Duration::from_secs(2);

async fn flush_counts(harvest: Arc<Harvest>) {
    let mut tick = tokio::time::interval(FLUSH_COUNTS_EVERY);
    loop {
        tick.tick().await;
        if let Err(e) = harvest.flush().await {
            tracing::warn!(error = %e, "defence counts not written yet: store failed");
        }
    }
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
