//! The connection the store sends commands on: one Redis (a multiplexed,
//! self-reconnecting [`ConnectionManager`]) or a Redis Cluster (redis-rs's
//! cluster client, which routes each command to the node owning its keys'
//! slot and follows resharding and failover by itself).
//!
//! Every script call and pipeline the store sends touches one queue's keys,
//! which share a hash tag and so one slot; the few global keys are read or
//! written alone. Nothing the store sends crosses slots.
//!
//! The connection manager reconnects when a connection breaks, but not when
//! one merely stops answering (a partition or a dropped NAT entry that never
//! resets the socket): every call would then time out forever. So a call that
//! times out also replaces the single-node connection with a new one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// How long opening a connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Where the store's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One Redis (or Valkey), possibly with replicas behind a failover proxy.
    Single(String),
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// A single Redis at `url`, or with `cluster` the comma-separated seed
    /// node URLs of a Redis Cluster.
    pub fn new(url: &str, cluster: bool) -> Self {
        if cluster {
            Target::Cluster(url.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect())
        } else {
            Target::Single(url.to_owned())
        }
    }

    /// The nodes to subscribe to events on, in order of preference: in a
    /// cluster, PUBLISH reaches subscribers on every node, so any seed does.
    pub fn pubsub_clients(&self) -> RedisResult<Vec<Client>> {
        match self {
            Target::Single(url) => Ok(vec![Client::open(url.as_str())?]),
            Target::Cluster(seeds) => seeds.iter().map(|u| Client::open(u.as_str())).collect(),
        }
    }
}

/// A cheap handle on the store's connection.
#[derive(Clone)]
pub enum Conn {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

/// One Redis: the current connection manager, replaced when calls time out.
pub struct Single {
    client: Client,
    current: RwLock<ConnectionManager>,
    replacing: AtomicBool,
}

impl Single {
    fn config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500))
    }

    fn manager(&self) -> ConnectionManager {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After a timeout: connects anew in the background (one attempt at a
    /// time) and makes the new connection the current one.
    fn replace(self: &Arc<Self>) {
        if self.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let fresh = this.client.get_connection_manager_with_config(Self::config());
            match tokio::time::timeout(CONNECT_TIMEOUT * 2, fresh).await {
                Ok(Ok(manager)) => {
                    *this.current.write().unwrap_or_else(|e| e.into_inner()) = manager;
                    tracing::warn!("redis stopped answering on a connection; replaced it");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "could not replace the redis connection"),
                Err(_) => tracing::debug!("replacing the redis connection timed out"),
            }
            this.replacing.store(false, Ordering::Release);
        });
    }

    /// `result`, after replacing the connection if it timed out.
    fn check<T>(self: &Arc<Self>, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &result {
            if e.is_timeout() {
                self.replace();
            }
        }
        result
    }
}

impl Conn {
    pub async fn open(target: &Target) -> RedisResult<Conn> {
        match target {
            Target::Single(url) => {
                let client = Client::open(url.as_str())?;
                let manager = client.get_connection_manager_with_config(Single::config()).await?;
                let single =
                    Single { client, current: RwLock::new(manager), replacing: AtomicBool::new(false) };
                Ok(Conn::Single(Arc::new(single)))
            }
            Target::Cluster(seeds) => {
                let client = ClusterClient::builder(seeds.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(2)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(single) => Box::pin(async move {
                let result = single.manager().send_packed_command(cmd).await;
                single.check(result)
            }),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
                single.check(result)
            }),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(single) => single.manager().get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_target_lists_its_seed_nodes() {
        assert_eq!(Target::new("redis://a:1", false), Target::Single("redis://a:1".into()));
        let cluster = Target::new("redis://a:1, redis://b:2,", true);
        assert_eq!(cluster, Target::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()]));
        assert_eq!(cluster.pubsub_clients().unwrap().len(), 2);
    }
}
