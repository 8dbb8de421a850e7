//! A directory (LDAP) asked whether an address belongs to an entry: one search per address,
//! on pooled connections, over `ldap://`, `ldap://` with StartTLS or `ldaps://`, with failover
//! across several URLs.
//!
//! Responsible for: connecting (bind as the configured DN, or anonymously), searching under the
//! base with the escaped filter ([`backstop_proto::ldap_filter`]), bounding every step by the timeout,
//! keeping at most `max_connections` idle connections and dropping one that failed (the next
//! lookup connects again: a restarted server is used again without a restart of ours); while
//! it fails, one lookup at a time tries it again and the others get the failure at once, which
//! is logged once. Not
//! responsible for: caching answers or deciding what a missing directory means at RCPT (the
//! recipient policy does both, as for call-outs).

use backstop_proto::ldap_filter::Template;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where and how to search.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Its name in the configuration (`ldap:NAME`), for the log.
    pub name: String,
    /// `ldap://host:port` or `ldaps://host:port`, tried in order.
    pub urls: Vec<String>,
    /// StartTLS on `ldap://` URLs.
    pub starttls: bool,
    /// Bind DN and password; anonymous when `None`.
    pub bind: Option<(String, String)>,
    /// The search base.
    pub base: String,
    /// The filter template.
    pub filter: Template,
    /// Each connection, bind and search.
    pub timeout: Duration,
    /// Idle connections kept.
    pub max_connections: usize,
    /// TLS client settings (the CA to trust), for ldaps and StartTLS.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// What the directory said about an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An entry matched: its DN.
    Found(String),
    /// No entry matched.
    NotFound,
}

/// Why the directory could not answer.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// No URL could be connected to (and bound).
    #[error("no directory server answered: {0}")]
    Unreachable(String),
    /// It could not be used at the last try, and another lookup is trying it again: answered
    /// at once rather than after another timeout.
    #[error("{0} (another lookup is trying it again)")]
    StillDown(String),
    /// The search failed on a connected server.
    #[error("search failed on {url}: {reason}")]
    Search {
        /// The server.
        url: String,
        /// Its words, or the timeout.
        reason: String,
    },
}

/// A directory with its idle connections.
pub struct Directory {
    settings: Settings,
    idle: Mutex<Vec<(String, Ldap)>>,
    /// Why no server could be connected to and bound, as last logged (logged once until it
    /// changes or the directory answers again).
    failing: Mutex<Option<String>>,
    /// While failing, one lookup at a time tries to connect (a server that does not answer
    /// would otherwise hold every RCPT for a timeout).
    trying: AtomicBool,
}

/// Ends a turn at trying a failing directory, however the attempt ends.
struct Turn<'a>(&'a AtomicBool);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Why a directory's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("ldap:{name}: {reason}")]
pub struct SettingsError {
    name: String,
    reason: String,
}

impl Settings {
    /// The settings of an `[[ldap]]` table; its CA file read again (it was checked when the
    /// configuration was).
    pub fn of(cfg: &crate::config::Ldap) -> Result<Settings, SettingsError> {
        let tls = match &cfg.tls_ca {
            Some(ca) => Some(tls_with_ca(ca).map_err(|reason| SettingsError {
                name: cfg.name.clone(),
                reason,
            })?),
            None => None,
        };
        Ok(Settings {
            name: cfg.name.clone(),
            urls: cfg.urls.clone(),
            starttls: cfg.starttls,
            bind: cfg.bind_dn.clone().zip(cfg.bind_password.clone()),
            base: cfg.base.clone(),
            filter: cfg.filter.clone(),
            timeout: cfg.timeout,
            max_connections: cfg.max_connections,
            tls,
        })
    }
}

/// TLS that trusts the CA certificates of one PEM file and nothing else.
fn tls_with_ca(ca: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = crate::config::read_trust_anchors(ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Directory {
    /// A directory; nothing is connected until the first lookup.
    pub fn new(settings: Settings) -> Directory {
        Directory {
            settings,
            idle: Mutex::new(Vec::new()),
            failing: Mutex::new(None),
            trying: AtomicBool::new(false),
        }
    }

    /// Its name in the configuration.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// The search filter for `address`, as sent.
    pub fn filter_for(&self, address: &str) -> String {
        self.settings.filter.render(address)
    }

    /// Whether a server answers: a new connection, bound (the health check). What answered.
    pub async fn check(&self) -> Result<String, DirectoryError> {
        self.guarded(async {
            let started = std::time::Instant::now();
            let (url, ldap) = self.connect().await?;
            // the base itself: a server that takes connections but does not answer is down
            let (url, ldap) = self
                .search_on((url, ldap), Scope::Base, "(objectClass=*)")
                .await?;
            let took = started.elapsed().as_millis();
            let how = match &self.settings.bind {
                Some((dn, _)) => format!("bound as {dn}"),
                None => "anonymous".to_string(),
            };
            let answer = format!("{url}: {how}, {took} ms");
            self.give_back(url, ldap);
            Ok(answer)
        })
        .await
    }

    /// The entry `address` belongs to, if any. A kept connection that fails (the server
    /// restarted, or closed it while idle) is dropped and the search tried once more on a new
    /// one.
    pub async fn lookup(&self, address: &str) -> Result<Answer, DirectoryError> {
        self.guarded(async {
            if let Some(kept) = self.take_idle()
                && let Ok(answer) = self.search(kept, address).await
            {
                return Ok(answer);
            }
            let fresh = self.connect().await?;
            self.search(fresh, address).await
        })
        .await
    }

    /// Runs `work` (a lookup or a check) unless the directory is failing and another caller
    /// is already trying it again: then the last failure, at once (a server that does not
    /// answer would otherwise hold every RCPT for a timeout). A new failure is logged once
    /// (not at every lookup while the directory stays down), and the recovery once.
    async fn guarded<T>(
        &self,
        work: impl Future<Output = Result<T, DirectoryError>>,
    ) -> Result<T, DirectoryError> {
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _turn = match failing {
            None => None,
            Some(why) if self.trying.swap(true, Ordering::SeqCst) => {
                return Err(DirectoryError::StillDown(why));
            }
            Some(_) => Some(Turn(&self.trying)),
        };
        let result = work.await;
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        match result.as_ref().err() {
            Some(e) if failing.as_deref() != Some(&e.to_string()) => {
                tracing::warn!(directory = %self.settings.name, error = %e,
                    "directory cannot be used: unknown recipients get 451 until it answers");
                *failing = Some(e.to_string());
            }
            None if failing.is_some() => {
                tracing::info!(directory = %self.settings.name, "directory answers again");
                *failing = None;
            }
            _ => {}
        }
        result
    }

    /// One search for `address` on one connection, given back to the pool when it worked.
    async fn search(&self, conn: (String, Ldap), address: &str) -> Result<Answer, DirectoryError> {
        let filter = self.settings.filter.render(address);
        let (url, ldap, entries) = self.search_entries(conn, Scope::Subtree, &filter).await?;
        self.give_back(url, ldap);
        Ok(match entries.into_iter().next() {
            Some(e) => Answer::Found(SearchEntry::construct(e).dn),
            None => Answer::NotFound,
        })
    }

    /// A search under the base that must work; the connection back.
    async fn search_on(
        &self,
        conn: (String, Ldap),
        scope: Scope,
        filter: &str,
    ) -> Result<(String, Ldap), DirectoryError> {
        let (url, ldap, _) = self.search_entries(conn, scope, filter).await?;
        Ok((url, ldap))
    }

    /// One search, bounded by the timeout: the entries found (no attributes).
    async fn search_entries(
        &self,
        (url, mut ldap): (String, Ldap),
        scope: Scope,
        filter: &str,
    ) -> Result<(String, Ldap, Vec<ldap3::ResultEntry>), DirectoryError> {
        let search = ldap.with_timeout(self.settings.timeout).search(
            &self.settings.base,
            scope,
            filter,
            vec!["1.1"],
        );
        let result = tokio::time::timeout(self.settings.timeout, search).await;
        let failed = |reason: String| DirectoryError::Search {
            url: url.clone(),
            reason,
        };
        let (entries, _) = match result {
            Err(_) | Ok(Err(ldap3::LdapError::Timeout { .. })) => {
                let after = crate::config::format_duration(self.settings.timeout);
                return Err(failed(format!("no answer within {after}")));
            }
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(r)) => r.success().map_err(|e| failed(e.to_string()))?,
        };
        Ok((url, ldap, entries))
    }

    fn take_idle(&self) -> Option<(String, Ldap)> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, url: String, ldap: Ldap) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.settings.max_connections {
            idle.push((url, ldap));
        }
    }

    /// A bound connection to the first URL that takes one.
    async fn connect(&self) -> Result<(String, Ldap), DirectoryError> {
        let mut why = Vec::new();
        for url in &self.settings.urls {
            match tokio::time::timeout(self.settings.timeout, self.connect_to(url)).await {
                Ok(Ok(ldap)) => return Ok((url.clone(), ldap)),
                Ok(Err(e)) => why.push(format!("{url}: {e}")),
                Err(_) => why.push(format!(
                    "{url}: no answer within {} (connect and bind)",
                    crate::config::format_duration(self.settings.timeout)
                )),
            }
        }
        Err(DirectoryError::Unreachable(why.join("; ")))
    }

    async fn connect_to(&self, url: &str) -> Result<Ldap, ldap3::LdapError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.settings.timeout)
            .set_starttls(self.settings.starttls && url.starts_with("ldap://"));
        if let Some(tls) = &self.settings.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, url).await?;
        ldap3::drive!(conn);
        if let Some((dn, password)) = &self.settings.bind {
            ldap.simple_bind(dn, password).await?.success()?;
        }
        Ok(ldap)
    }
}

#[async_trait::async_trait]
impl crate::health::Check for Directory {
    async fn check(&self) -> Result<String, String> {
        Directory::check(self).await.map_err(|e| e.to_string())
    }
}

/// A directory (nothing connected yet) for each `[[ldap]]` table a domain of `cfg` uses.
pub fn of_config(cfg: &crate::config::Config) -> Result<Vec<Arc<Directory>>, SettingsError> {
    let used = |name: &str| {
        let source = crate::config::Source::Ldap(name.to_string());
        cfg.domains.iter().any(|d| d.sources.contains(&source))
    };
    let used = cfg.ldap.iter().filter(|l| used(&l.name));
    used.map(|l| Ok(Arc::new(Directory::new(Settings::of(l)?))))
        .collect()
}

/// The health checks of `directories`.
pub fn checks(directories: &[Arc<Directory>]) -> crate::health::Checks {
    let check = |d: &Arc<Directory>| -> (crate::health::Target, Arc<dyn crate::health::Check>) {
        (crate::health::Target::Ldap(d.name().to_string()), d.clone())
    };
    directories.iter().map(check).collect()
}
