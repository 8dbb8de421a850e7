//! The Redis backend (`[store] backend = "redis"`): the store shared by every node of a
//! cluster of gateways, on a standalone Redis, a master watched by Redis Sentinel, or a Redis
//! Cluster.
//!
//! Every operation is one Lua script (or one command), so it is atomic however many nodes race.
//! Entries keep their expiry as data (the caller's clock decides, exactly as in the embedded
//! store), and an index of expiry times (a sorted set) lets [`Store::purge_expired`] delete
//! what has expired. All keys of a namespace carry one hash tag, `{NAMESPACE}`, so that in a
//! Redis Cluster they live in one slot and the scripts stay atomic (backstop's shared state is
//! small: call-out answers, counters, claims).
//!
//! `rediss://` URLs are reached over TLS (rustls, the process's crypto provider), the servers
//! verified with the system's root certificates or a CA given in [`Tls`], which may also carry
//! a client certificate.
//!
//! Not responsible for: what to do when Redis is unreachable (callers get [`StoreError`] and
//! answer with a temporary failure).

use super::{CacheEntry, Store, StoreError};
use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    ClientTlsConfig, FromRedisValue, IntoConnectionInfo, Script, ScriptInvocation, TlsCertificates,
};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// How long one connection attempt or one answer may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Whether a script may run twice when its connection was dropped (it may have run once).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Again {
    /// The same effect twice (writing a value, reading, purging).
    Harmless,
    /// A second run would count twice or see its own claim as another's.
    Never,
}
/// Keys deleted per purge script run (short scripts: Redis serves nobody else meanwhile).
const PURGE_BATCH: u64 = 500;

/// Where the store lives.
#[derive(Clone, Debug)]
pub enum Target {
    /// One Redis server: `redis://HOST:PORT/DB` (or `rediss://`, `redis+unix://`).
    Single(String),
    /// A Redis Cluster: some of its nodes' URLs.
    Cluster(Vec<String>),
    /// The master that Redis Sentinel names `master`, found through these sentinels' URLs.
    Sentinel {
        /// The sentinels.
        sentinels: Vec<String>,
        /// The master's name in their configuration.
        master: String,
    },
}

/// Certificates for `rediss://` connections, in PEM. Empty (the default): servers are
/// verified with the system's root certificates and no client certificate is shown.
#[derive(Clone, Default)]
pub struct Tls {
    /// CA certificate(s) the servers' certificates must chain to, instead of the system's
    /// roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate (chain) and its private key, for servers that require one.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl Tls {
    /// Reads the CA file and the client certificate and key files.
    pub fn read(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<Tls, StoreError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                StoreError::Backend(format!("redis: cannot read {}: {e}", p.display()))
            })
        };
        Ok(Tls {
            ca: ca.map(read).transpose()?,
            client: match client {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    /// The redis crate's form; None when there is nothing to add to the defaults.
    fn certificates(&self) -> Option<TlsCertificates> {
        if self.ca.is_none() && self.client.is_none() {
            return None;
        }
        Some(TlsCertificates {
            client_tls: self.client.as_ref().map(|(cert, key)| ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
            root_cert: self.ca.clone(),
        })
    }
}

#[derive(Clone)]
enum Conn {
    /// One multiplexed connection: the requests of every task are pipelined on it (the redis
    /// crate's way to share a server among many tasks; it reconnects by itself).
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<tokio::sync::Mutex<Watched>>),
}

/// The master found through Sentinel, asked again after any failure (a failover moves it).
struct Watched {
    client: SentinelClient,
    conn: Option<MultiplexedConnection>,
}

impl Watched {
    async fn conn(&mut self) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let c = tokio::time::timeout(TIMEOUT, self.client.get_async_connection_with_config(&cfg))
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no master from the sentinels in time",
                ))
            })??;
        self.conn = Some(c.clone());
        Ok(c)
    }
}

/// The Redis backend.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    /// `{namespace}:`
    prefix: String,
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], KEYS[1])
return 1",
    )
});

static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1",
    )
});

static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local now = tonumber(ARGV[3])
local e = tonumber(redis.call('HGET', KEYS[1], 'e'))
local v = 0
if e and e > now then
  v = tonumber(redis.call('HGET', KEYS[1], 'v'))
else
  e = tonumber(ARGV[2])
end
v = v + tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'v', string.format('%d', v), 'e', string.format('%d', e))
redis.call('ZADD', KEYS[2], e, KEYS[1])
return v",
    )
});

/// Stores value ARGV[1] with expiry ARGV[2] ('' for none).
const PUT_BODY: &str = r"if ARGV[2] == '' then
  redis.call('HSET', KEYS[1], 'v', ARGV[1])
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('ZREM', KEYS[2], KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'e', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
end";

static PUT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{PUT_BODY}\nreturn 1")));

static PUT_IF_ABSENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"local cur = redis.call('HMGET', KEYS[1], 'v', 'e')
if cur[1] and (not cur[2] or tonumber(cur[2]) > tonumber(ARGV[3])) then return cur[1] end
{PUT_BODY}
return ARGV[1]"
    ))
});

static CACHE_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], KEYS[1])
return 1",
    )
});

static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, k in ipairs(keys) do
  redis.call('DEL', k)
  redis.call('ZREM', KEYS[1], k)
end
return #keys",
    )
});

/// `text` matched literally in a Redis glob pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Runs `$call` (which uses the connection `$c`) on the store's connection: a second time on
/// a dropped single-server connection when `$again` allows; through Sentinel, after any
/// failure the master is asked for again.
macro_rules! on_conn {
    ($self:ident, $again:expr, |$c:ident| $call:expr) => {
        match &$self.conn {
            Conn::Single(c) => {
                let mut $c = c.clone();
                match $call.await {
                    Err(e) if $again == Again::Harmless && dropped(&e) => $call.await,
                    r => r,
                }
            }
            Conn::Cluster(c) => {
                let mut $c = c.clone();
                $call.await
            }
            Conn::Sentinel(w) => {
                let mut $c = w.lock().await.conn().await.map_err(backend)?;
                let r = $call.await;
                forget_on_error(w, &r).await;
                r
            }
        }
        .map_err(backend)
    };
}

impl RedisStore {
    /// Connects; every key starts with `{namespace}:`. Fails (with the server's error) when
    /// Redis cannot be reached now. `rediss://` URLs are verified with the system's root
    /// certificates ([`RedisStore::connect_with_tls`] for others).
    pub async fn connect(target: &Target, namespace: &str) -> Result<RedisStore, StoreError> {
        RedisStore::connect_with_tls(target, &Tls::default(), namespace).await
    }

    /// Connects as [`RedisStore::connect`] does, `rediss://` URLs with `tls`'s certificates.
    pub async fn connect_with_tls(
        target: &Target,
        tls: &Tls,
        namespace: &str,
    ) -> Result<RedisStore, StoreError> {
        let conn = match target {
            Target::Single(url) => single(url, tls).await?,
            Target::Cluster(urls) => cluster(urls, tls).await?,
            Target::Sentinel { sentinels, master } => {
                let client = sentinel_client(sentinels, master, tls).map_err(backend)?;
                let mut watched = Watched { client, conn: None };
                watched.conn().await.map_err(backend)?;
                Conn::Sentinel(Arc::new(tokio::sync::Mutex::new(watched)))
            }
        };
        Ok(RedisStore {
            conn,
            prefix: format!("{{{namespace}}}:"),
        })
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    fn expiry(&self) -> String {
        format!("{}expiry", self.prefix)
    }

    /// Runs a script; once more at once when the connection had been dropped and running it
    /// twice is harmless (`again`).
    async fn run<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
        again: Again,
    ) -> Result<T, StoreError> {
        on_conn!(self, again, |c| inv.invoke_async(&mut c))
    }

    /// Runs a command (reads only: harmless twice).
    async fn cmd<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        on_conn!(self, Again::Harmless, |c| cmd.query_async(&mut c))
    }

    /// A hash's value and expiry (`None`: kept until replaced).
    async fn value(&self, key: &str) -> Result<Option<(String, Option<u64>)>, StoreError> {
        let (v, e): (Option<String>, Option<u64>) = self
            .cmd(redis::cmd("HMGET").arg(key).arg("v").arg("e"))
            .await?;
        Ok(v.map(|v| (v, e)))
    }
}

/// Whether `url` asks for TLS.
fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// One server; with `tls`'s certificates when it has any (the URL must then be `rediss://`).
async fn single(url: &str, tls: &Tls) -> Result<Conn, StoreError> {
    let client = match tls.certificates() {
        Some(certs) => redis::Client::build_with_tls(url, certs),
        None => redis::Client::open(url),
    }
    .map_err(backend)?;
    let cfg = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let manager = ConnectionManager::new_with_config(client, cfg)
        .await
        .map_err(backend)?;
    Ok(Conn::Single(manager))
}

/// A Redis Cluster; every node with `tls`'s certificates when it has any.
async fn cluster(urls: &[String], tls: &Tls) -> Result<Conn, StoreError> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .retries(1);
    if let Some(certs) = tls.certificates() {
        builder = builder.certs(certs);
    }
    let client = builder.build().map_err(backend)?;
    Ok(Conn::Cluster(
        client.get_async_connection().await.map_err(backend)?,
    ))
}

/// A configuration the redis crate would refuse or misread.
fn invalid_config(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, why))
}

/// The client asking `sentinels` for `master`. With `rediss://` sentinels, the master is
/// reached over TLS too, both verified with `tls`'s CA (else the system's roots) and shown its
/// client certificate; the sentinels must then share one user name and password.
fn sentinel_client(
    sentinels: &[String],
    master: &str,
    tls: &Tls,
) -> redis::RedisResult<SentinelClient> {
    if !sentinels.iter().any(|u| is_tls(u)) {
        if tls.certificates().is_some() {
            return Err(invalid_config(
                "TLS certificates are for rediss:// sentinels",
            ));
        }
        return SentinelClient::build(sentinels.to_vec(), master, None, SentinelServerType::Master);
    }
    let infos = sentinels
        .iter()
        .map(|u| u.as_str().into_connection_info())
        .collect::<redis::RedisResult<Vec<_>>>()?;
    let login = |i: &redis::ConnectionInfo| {
        let r = i.redis_settings();
        (
            r.username().map(str::to_owned),
            r.password().map(str::to_owned),
        )
    };
    if infos.iter().any(|i| login(i) != login(&infos[0])) {
        let why = "rediss:// sentinels must share one user name and password";
        return Err(invalid_config(why));
    }
    let addrs = infos.iter().map(|i| i.addr().clone());
    let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
        .set_client_to_redis_tls_mode(redis::TlsMode::Secure);
    if let Some(first) = infos.first().map(|i| i.redis_settings()) {
        if let Some(user) = first.username() {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = first.password() {
            builder = builder.set_client_to_sentinel_password(password);
        }
    }
    if let Some(certs) = tls.certificates() {
        builder = builder
            .set_client_to_sentinel_certificates(certs.clone())
            .set_client_to_redis_certificates(certs);
    }
    builder.build()
}

/// A connection that Redis (restarted, or a proxy) dropped: the manager reconnects, and the
/// operation is worth one more try at once, before the store is called unreachable.
fn dropped(e: &redis::RedisError) -> bool {
    e.is_connection_dropped() || e.is_io_error()
}

/// After a failure (the master gone, or demoted to a replica that refuses writes), the next
/// operation asks the sentinels for the master again.
async fn forget_on_error<T>(w: &tokio::sync::Mutex<Watched>, r: &redis::RedisResult<T>) {
    if r.is_err() {
        w.lock().await.conn = None;
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn cache_get(&self, key: &str) -> Result<Option<CacheEntry>, StoreError> {
        let v: Option<String> = self.cmd(redis::cmd("GET").arg(self.key("c", key))).await?;
        let Some(v) = v else { return Ok(None) };
        serde_json::from_str(&v)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                key: key.to_string(),
                message: e.to_string(),
            })
    }

    async fn cache_put(&self, key: &str, entry: &CacheEntry) -> Result<(), StoreError> {
        let value = serde_json::to_string(entry).map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut inv = CACHE_PUT.prepare_invoke();
        inv.key(self.key("c", key))
            .key(self.expiry())
            .arg(value)
            .arg(entry.expire_at);
        self.run::<i64>(&inv, Again::Harmless).await.map(|_| ())
    }

    async fn cache_keys(
        &self,
        prefix: &str,
        suffix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        // every cache entry is in the expiry index, one sorted set: scanned by pattern, it
        // gives the keys without a SCAN of every node of a cluster
        let head = self.key("c", "");
        let pattern = format!(
            "{}*{}",
            glob_escape(&(head.clone() + prefix)),
            glob_escape(suffix)
        );
        let (mut cursor, mut keys) = (0u64, Vec::new());
        loop {
            let (next, found): (u64, Vec<String>) = self
                .cmd(
                    redis::cmd("ZSCAN")
                        .arg(self.expiry())
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await?;
            // members and scores alternate
            for k in found.iter().step_by(2) {
                if keys.len() < max
                    && let Some(k) = k.strip_prefix(&head)
                {
                    keys.push(k.to_string());
                }
            }
            if next == 0 || keys.len() >= max {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    async fn purge_expired(&self, now: u64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let mut inv = PURGE.prepare_invoke();
            inv.key(self.expiry()).arg(now).arg(PURGE_BATCH);
            let n: u64 = self.run(&inv, Again::Harmless).await?;
            total += n as usize;
            if n < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    async fn claim(&self, key: &str, expire_at: u64) -> Result<bool, StoreError> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(self.key("l", key))
            .key(self.expiry())
            .arg(expire_at);
        Ok(self.run::<i64>(&inv, Again::Never).await? == 1)
    }

    async fn unclaim(&self, key: &str) -> Result<(), StoreError> {
        let mut inv = FORGET.prepare_invoke();
        inv.key(self.key("l", key)).key(self.expiry());
        self.run::<i64>(&inv, Again::Harmless).await.map(|_| ())
    }

    async fn add(&self, key: &str, n: u64, expire_at: u64, now: u64) -> Result<u64, StoreError> {
        let mut inv = ADD.prepare_invoke();
        inv.key(self.key("n", key))
            .key(self.expiry())
            .arg(n)
            .arg(expire_at)
            .arg(now);
        self.run(&inv, Again::Never).await
    }

    async fn count(&self, key: &str, now: u64) -> Result<u64, StoreError> {
        Ok(match self.value(&self.key("n", key)).await? {
            Some((v, Some(e))) if e > now => v.parse().unwrap_or(0),
            Some(_) | None => 0,
        })
    }

    async fn put(&self, key: &str, value: &str, expire_at: Option<u64>) -> Result<(), StoreError> {
        let mut inv = PUT.prepare_invoke();
        inv.key(self.key("v", key))
            .key(self.expiry())
            .arg(value)
            .arg(expire_at.map_or(String::new(), |e| e.to_string()));
        self.run::<i64>(&inv, Again::Harmless).await.map(|_| ())
    }

    async fn get(&self, key: &str, now: u64) -> Result<Option<String>, StoreError> {
        Ok(match self.value(&self.key("v", key)).await? {
            Some((v, None)) => Some(v),
            Some((v, Some(e))) if e > now => Some(v),
            Some(_) | None => None,
        })
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: &str,
        expire_at: Option<u64>,
        now: u64,
    ) -> Result<String, StoreError> {
        let mut inv = PUT_IF_ABSENT.prepare_invoke();
        inv.key(self.key("v", key))
            .key(self.expiry())
            .arg(value)
            .arg(expire_at.map_or(String::new(), |e| e.to_string()))
            .arg(now);
        // a second run finds the value the first one stored, and answers it: harmless
        self.run(&inv, Again::Harmless).await
    }
}
