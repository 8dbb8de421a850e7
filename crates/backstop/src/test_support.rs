//! Helpers for unit tests only: a small configuration with its directory and store.

/// Unit tests' configuration: domain example.test (user alice, a list source, a Maildir next
/// hop) plus `extra` TOML; with its directory (kept alive by the caller) and an embedded
/// store in it.
pub(crate) fn for_tests(
    extra: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<crate::config::Config>,
    std::sync::Arc<dyn crate::store::Store>,
) {
    let d = tempfile::tempdir().unwrap();
    let list = d.path().join("users");
    std::fs::write(&list, "alice@example.test\n").unwrap();
    let text = format!(
        "hostname = \"mx.example.test\"\nstate_dir = \"var\"\n[[listen]]\naddr = \"127.0.0.1:2525\"\n\
         [[domain]]\nname = \"example.test\"\nrecipients = [\"list:{}\"]\nnext_hop = \"maildir:m\"\n{extra}",
        list.display()
    );
    let cfg = crate::config::Config::from_toml(&text, d.path()).unwrap();
    let store = crate::store::embedded::EmbeddedStore::open(&d.path().join("s")).unwrap();
    (d, std::sync::Arc::new(cfg), std::sync::Arc::new(store))
}

/// What the gateway's decisions stand on, for unit tests: [`for_tests`]'s configuration and
/// store, a clock fixed at `now`, a verifier whose probes go to `prober`, and a BATV guard.
pub(crate) struct Parts {
    pub dir: tempfile::TempDir,
    pub cfg: std::sync::Arc<crate::config::Config>,
    pub store: std::sync::Arc<dyn crate::store::Store>,
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
    pub verifier: std::sync::Arc<crate::policy::Verifier>,
    pub guard: std::sync::Arc<crate::backscatter::Guard>,
}

pub(crate) async fn parts(
    extra: &str,
    prober: std::sync::Arc<dyn crate::policy::probe::Prober>,
    now: u64,
) -> Parts {
    use std::sync::Arc;
    let (dir, cfg, store) = for_tests(extra);
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::ManualClock::new(now));
    let callout = crate::policy::callout::Callout::new(
        cfg.callout.clone(),
        store.clone(),
        clock.clone(),
        (prober, Arc::new(|| 7)),
        None,
    );
    let verifier = Arc::new(crate::policy::Verifier::new(&cfg, callout, clock.clone()).unwrap());
    let tags = crate::backscatter::Tags::load(&cfg, store.as_ref(), now, || [1; 16])
        .await
        .unwrap();
    let guard = crate::backscatter::Guard::new(cfg.clone(), store.clone(), Arc::new(tags), now)
        .await
        .unwrap();
    Parts {
        dir,
        cfg,
        store,
        clock,
        verifier,
        guard: Arc::new(guard),
    }
}

impl Parts {
    /// The spool under the test directory and a sender watch over it.
    pub fn watch(
        &self,
    ) -> (
        std::sync::Arc<crate::queue::Spool>,
        std::sync::Arc<crate::senders::Watch>,
    ) {
        let spool = crate::queue::Spool::open(&self.dir.path().join("queue")).unwrap();
        let alerts = std::sync::Arc::new(crate::alert::Alerts::new(
            self.cfg.clone(),
            self.store.clone(),
        ));
        let watch =
            crate::senders::Watch::new(self.cfg.clone(), self.store.clone(), spool.clone(), alerts);
        (spool, std::sync::Arc::new(watch))
    }
}
