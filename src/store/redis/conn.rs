//! The connection the store sends commands on: one Redis (a multiplexed,
//! self-reconnecting [`ConnectionManager`]), the master of a Sentinel-managed
//! Redis, or a Redis Cluster (redis-rs's cluster client, which routes each
//! command to the node owning its keys' slot and follows resharding and
//! failover by itself).
//!
//! Every script call and pipeline the store sends touches one queue's keys,
//! which share a hash tag and so one slot; the few global keys are read or
//! written alone. Nothing the store sends crosses slots.
//!
//! The connection manager reconnects when a connection breaks, but not when
//! one merely stops answering (a partition or a dropped NAT entry that never
//! resets the socket): every call would then time out forever. So a call that
//! times out also replaces the connection with a new one. Under Sentinel the
//! new connection goes to whichever node the sentinels name master now, and a
//! broken connection or a `READONLY` answer (the old master came back as a
//! replica) replaces it too.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, TlsMode,
    Value,
};

/// How long opening a connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Where the store's Redis is. Its `Debug` form hides passwords ([`redact`]).
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis (or Valkey).
    Single(String),
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
    /// The master named `master` of the sentinels at these URLs.
    Sentinel { sentinels: Vec<String>, master: String },
}

impl Target {
    /// A single Redis at `url`; with `cluster` the comma-separated seed node
    /// URLs of a Redis Cluster; with a `sentinel_master` name, the
    /// comma-separated URLs of the sentinels that watch it.
    pub fn new(url: &str, cluster: bool, sentinel_master: &str) -> Self {
        let list = || url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        if cluster {
            Target::Cluster(list())
        } else if !sentinel_master.is_empty() {
            Target::Sentinel { sentinels: list(), master: sentinel_master.to_owned() }
        } else {
            Target::Single(url.to_owned())
        }
    }

    /// Every URL in the target.
    pub fn urls(&self) -> Vec<String> {
        match self {
            Target::Single(url) => vec![url.clone()],
            Target::Cluster(urls) | Target::Sentinel { sentinels: urls, .. } => urls.clone(),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self.urls().iter().map(|u| redact(u)).collect();
        match self {
            Target::Single(_) => f.debug_tuple("Single").field(&urls[0]).finish(),
            Target::Cluster(_) => f.debug_tuple("Cluster").field(&urls).finish(),
            Target::Sentinel { master, .. } => {
                f.debug_struct("Sentinel").field("sentinels", &urls).field("master", master).finish()
            }
        }
    }
}

/// `urls` (one Redis URL or a comma-separated list) fit to print: every
/// password replaced by `***` (the user name kept). The one function through
/// which a Redis URL reaches a log or an error message.
///
/// Credentials sit between a `scheme://` and the last `@` before the next
/// URL's `scheme://`; taking the *last* `@` covers passwords holding `@` or
/// `,` (which split a list naively). Text with no `scheme://` is treated the
/// same from its start. Over-redacting a malformed URL is fine; leaking is not.
pub fn redact(urls: &str) -> String {
    let mut out = String::with_capacity(urls.len());
    let mut rest = urls;
    loop {
        // This URL's text runs to the next URL's scheme (or to the end).
        let end = rest.find("://").map_or(rest.len(), |i| scheme_start(&rest[..i]));
        let (this, next) = rest.split_at(end);
        out.push_str(&hide_password(this));
        let Some(i) = next.find("://") else { return out };
        out.push_str(&next[..i + 3]);
        rest = &next[i + 3..];
    }
}

/// Where the scheme ending `before` starts.
fn scheme_start(before: &str) -> usize {
    before.rfind(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c))).map_or(0, |i| i + 1)
}

/// `user:pass@rest` as `user:***@rest`; `token@rest` as `***@rest`.
fn hide_password(text: &str) -> String {
    let Some(at) = text.rfind('@') else { return text.to_owned() };
    let shown = match text[..at].split_once(':') {
        Some((user, _)) if !user.contains(',') => format!("{user}:***"),
        Some(_) => ":***".to_owned(),
        None => "***".to_owned(),
    };
    shown + &text[at..]
}

/// A cheap handle on the store's connection.
#[derive(Clone)]
pub enum Conn {
    Single(Arc<Single>),
    Cluster(Arc<Cluster>),
}

/// One Redis (found directly or through sentinels): the current connection
/// manager, replaced when calls time out.
pub struct Single {
    source: Source,
    current: RwLock<ConnectionManager>,
    replacing: AtomicBool,
}

/// Where a single-node connection goes.
enum Source {
    Url(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

impl Source {
    /// A client for the node to use now (under Sentinel: the current master).
    async fn client(&self) -> RedisResult<Client> {
        match self {
            Source::Url(client) => Ok(client.clone()),
            Source::Sentinel(sentinel) => sentinel.lock().await.async_get_client().await,
        }
    }
}

impl Single {
    fn config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    async fn open(source: Source) -> RedisResult<Single> {
        let manager = source.client().await?.get_connection_manager_with_config(Self::config()).await?;
        Ok(Single { source, current: RwLock::new(manager), replacing: AtomicBool::new(false) })
    }

    fn manager(&self) -> ConnectionManager {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connects anew in the background (one attempt at a time) and makes the
    /// new connection the current one.
    fn replace(self: &Arc<Self>) {
        if self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let fresh = async {
                this.source.client().await?.get_connection_manager_with_config(Self::config()).await
            };
            match tokio::time::timeout(CONNECT_TIMEOUT * 3, fresh).await {
                Ok(Ok(manager)) => {
                    *this.current.write().unwrap_or_else(|e| e.into_inner()) = manager;
                    tracing::warn!("replaced the redis connection");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "could not replace the redis connection"),
                Err(_) => tracing::debug!("replacing the redis connection timed out"),
            }
            this.replacing.store(false, Ordering::Release);
        });
    }

    /// `result`, after replacing the connection if it showed the connection
    /// is no good: a timeout, or under Sentinel a broken connection or a node
    /// that is no longer master. A `READONLY` answer is not an `Err` here:
    /// the connection returns server errors as replies (`readonly` finds it).
    fn check<T>(self: &Arc<Self>, result: RedisResult<T>, readonly: impl Fn(&T) -> bool) -> RedisResult<T> {
        let sentinel = matches!(self.source, Source::Sentinel(_));
        let no_good = match &result {
            Err(e) => e.is_timeout() || (sentinel && lost_master(e)),
            Ok(reply) => sentinel && readonly(reply),
        };
        if no_good {
            self.replace();
        }
        result
    }
}

/// The sentinels to ask, and how to reach the master they name. `redis_url`
/// has one user, password and database for both: the master gets them all
/// (without them a master with `requirepass` answers NOAUTH), the sentinels
/// the user and password (a sentinel has no databases: SELECT would fail), as
/// in setups where sentinels and master share one password. The master is
/// reached over TLS when the sentinels are (`rediss://`, `#insecure` carried
/// over). The first URL's credentials are the master's.
fn sentinel_setup(sentinels: &[String]) -> RedisResult<(Vec<ConnectionInfo>, SentinelNodeConnectionInfo)> {
    let parsed: Vec<ConnectionInfo> =
        sentinels.iter().map(|url| url.as_str().into_connection_info()).collect::<RedisResult<_>>()?;
    let mut node = SentinelNodeConnectionInfo::default();
    if let Some(first) = parsed.first() {
        node = node.set_redis_connection_info(first.redis_settings().clone());
    }
    node = match sentinels.first() {
        Some(url) if url.starts_with("rediss://") && url.ends_with("#insecure") => {
            node.set_tls_mode(TlsMode::Insecure)
        }
        Some(url) if url.starts_with("rediss://") => node.set_tls_mode(TlsMode::Secure),
        _ => node,
    };
    let sentinels = parsed
        .into_iter()
        .map(|info| {
            let settings = info.redis_settings().clone().set_db(0);
            info.set_redis_settings(settings)
        })
        .collect();
    Ok((sentinels, node))
}

/// An error that says this connection no longer reaches a working master.
fn lost_master(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.code() == Some("READONLY")
}

/// A `READONLY` reply: the node is a replica now (a demoted master).
fn readonly_reply(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(e) if e.code() == "READONLY")
}

/// A Redis Cluster, and the seed nodes to subscribe to events on.
pub struct Cluster {
    conn: ClusterConnection,
    seeds: Vec<Client>,
    next_seed: AtomicUsize,
}

impl Conn {
    pub async fn open(target: &Target) -> RedisResult<Conn> {
        match target {
            Target::Single(url) => {
                Ok(Conn::Single(Arc::new(Single::open(Source::Url(Client::open(url.as_str())?)).await?)))
            }
            Target::Sentinel { sentinels, master } => {
                let (sentinels, node) = sentinel_setup(sentinels)?;
                let client =
                    SentinelClient::build(sentinels, master.clone(), Some(node), SentinelServerType::Master)?;
                let source = Source::Sentinel(tokio::sync::Mutex::new(client));
                Ok(Conn::Single(Arc::new(Single::open(source).await?)))
            }
            Target::Cluster(seeds) => {
                let client = ClusterClient::builder(seeds.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()?;
                let conn = client.get_async_connection().await?;
                let seeds = seeds.iter().map(|u| Client::open(u.as_str())).collect::<RedisResult<_>>()?;
                Ok(Conn::Cluster(Arc::new(Cluster { conn, seeds, next_seed: AtomicUsize::new(0) })))
            }
        }
    }

    /// A client to subscribe to events through, for each (re)subscription:
    /// the node in use (under Sentinel the master now), or in a cluster, where
    /// PUBLISH reaches subscribers on every node, the next seed node in turn.
    pub async fn pubsub_client(&self) -> RedisResult<Client> {
        match self {
            Conn::Single(single) => single.source.client().await,
            Conn::Cluster(cluster) => {
                let next = cluster.next_seed.fetch_add(1, Ordering::Relaxed);
                Ok(cluster.seeds[next % cluster.seeds.len()].clone())
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(single) => Box::pin(async move {
                let result = single.manager().send_packed_command(cmd).await;
                single.check(result, readonly_reply)
            }),
            Conn::Cluster(cluster) => {
                Box::pin(async move { cluster.conn.clone().req_packed_command(cmd).await })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(single) => Box::pin(async move {
                let result = single.manager().send_packed_commands(cmd, offset, count).await;
                single.check(result, |replies| replies.iter().any(readonly_reply))
            }),
            Conn::Cluster(cluster) => {
                Box::pin(async move { cluster.conn.clone().req_packed_commands(cmd, offset, count).await })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(single) => single.manager().get_db(),
            Conn::Cluster(cluster) => cluster.conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_list_their_nodes() {
        assert_eq!(Target::new("redis://a:1", false, ""), Target::Single("redis://a:1".into()));
        let cluster = Target::new("redis://a:1, redis://b:2,", true, "");
        assert_eq!(cluster, Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]));
        let sentinel = Target::new("redis://s1:26379,redis://s2:26379", false, "tb");
        assert_eq!(
            sentinel,
            Target::Sentinel {
                sentinels: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
                master: "tb".into()
            }
        );
        assert_eq!(sentinel.urls().len(), 2);
    }

    #[test]
    fn redact_hides_every_password_and_keeps_the_rest() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:s3cret@host:6379/2", "redis://:***@host:6379/2"),
            ("rediss://alice:s3cret@host:6380#insecure", "rediss://alice:***@host:6380#insecure"),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://:p@ss,w:rd@host", "redis://:***@host"),
            ("u:s3cret@host:1", "u:***@host:1"),
            ("", ""),
            ("not a url", "not a url"),
            (
                "redis://a:1, redis://u:s3cret@b:2,rediss://:t0p,s3cret@c:3",
                "redis://a:1, redis://u:***@b:2,rediss://:***@c:3",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
        let t = Target::new("redis://:s3cret@s1:26379,redis://u:s3cret@s2:26379", false, "tb");
        let debug = format!("{t:?} {:?}", Target::Single("redis://:s3cret@h".into()));
        assert!(!debug.contains("s3cret") && debug.contains("s2:26379"), "{debug}");
    }
}
