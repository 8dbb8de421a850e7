//! A directory (LDAP) asked whether an address belongs to an entry: one search per address,
//! on pooled connections, over `ldap://`, `ldap://` with StartTLS or `ldaps://`, with failover
//! across several URLs.
//!
//! Responsible for: connecting (bind as the configured DN, or anonymously), searching under the
//! base with the escaped filter ([`super::ldap_filter`]), bounding every step by the timeout,
//! keeping at most `max_connections` idle connections and dropping one that failed (the next
//! lookup connects again: a restarted server is used again without a restart of ours). Not
//! responsible for: caching answers or deciding what a missing directory means at RCPT (the
//! recipient policy does both, as for call-outs).

use super::ldap_filter::Template;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where and how to search.
#[derive(Clone, Debug)]
pub struct Settings {
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
}

impl Directory {
    /// A directory; nothing is connected until the first lookup.
    pub fn new(settings: Settings) -> Directory {
        Directory {
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The entry `address` belongs to, if any. A kept connection that fails (the server
    /// restarted, or closed it while idle) is dropped and the search tried once more on a new
    /// one.
    pub async fn lookup(&self, address: &str) -> Result<Answer, DirectoryError> {
        if let Some(kept) = self.take_idle()
            && let Ok(answer) = self.search(kept, address).await
        {
            return Ok(answer);
        }
        let fresh = self.connect().await?;
        self.search(fresh, address).await
    }

    /// One search on one connection, given back to the pool when it worked.
    async fn search(
        &self,
        (url, mut ldap): (String, Ldap),
        address: &str,
    ) -> Result<Answer, DirectoryError> {
        let filter = self.settings.filter.render(address);
        let search = ldap.with_timeout(self.settings.timeout).search(
            &self.settings.base,
            Scope::Subtree,
            &filter,
            vec!["1.1"],
        );
        let result = tokio::time::timeout(self.settings.timeout, search).await;
        let failed = |reason: String| DirectoryError::Search {
            url: url.clone(),
            reason,
        };
        let (entries, _) = match result {
            Err(_) => return Err(failed("timed out".into())),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Ok(Ok(r)) => r.success().map_err(|e| failed(e.to_string()))?,
        };
        self.give_back(url, ldap);
        Ok(match entries.into_iter().next() {
            Some(e) => Answer::Found(SearchEntry::construct(e).dn),
            None => Answer::NotFound,
        })
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
                Err(_) => why.push(format!("{url}: timed out")),
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
