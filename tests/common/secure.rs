//! Brokers with TLS and authentication for the security tests: started from
//! a TOML text (paths of certificate files written by the test), clients
//! with a bearer token and TLS settings.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use taskbroker::app::{self, Running};
use taskbroker::config::{Config, StorageKind};
use taskbroker::core::clock::SystemClock;
use taskbroker::pb::admin_service_client::AdminServiceClient;
use taskbroker::pb::producer_service_client::ProducerServiceClient;
use taskbroker::pb::worker_service_client::WorkerServiceClient;

/// Starts a memory-store broker on 127.0.0.1:0 (admin port too) from `toml`.
pub async fn start(toml: &str) -> Running {
    let mut config = Config::from_toml(toml).expect("test config parses");
    config.storage = StorageKind::Memory;
    config.listen = "127.0.0.1:0".into();
    config.admin_listen = "127.0.0.1:0".into();
    config.shutdown_grace = Duration::from_secs(2);
    config.validate().expect("test config is valid");
    app::start(&config, Arc::new(SystemClock)).await.expect("broker starts")
}

/// TLS settings of a client: the CA that signed the server, and optionally
/// its own certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Option<String>,
    pub identity: Option<(String, String)>,
}

/// A channel to `addr`: plaintext without `tls`.
pub async fn connect(
    addr: std::net::SocketAddr,
    tls: Option<&ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        Some(t) => {
            let mut config = ClientTlsConfig::new().domain_name("localhost");
            if let Some(ca) = &t.ca_pem {
                config = config.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &t.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config).unwrap()
        }
    };
    endpoint.connect_timeout(Duration::from_secs(5)).connect().await
}

/// Sends `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
pub struct Bearer(pub Option<AsciiMetadataValue>);

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| format!("Bearer {t}").parse().unwrap()))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Authed = InterceptedService<Channel, Bearer>;

/// The three services over one channel, with one token.
pub struct Clients {
    pub producer: ProducerServiceClient<Authed>,
    pub worker: WorkerServiceClient<Authed>,
    pub admin: AdminServiceClient<Authed>,
}

impl Clients {
    pub fn new(channel: Channel, token: Option<&str>) -> Self {
        let b = Bearer::new(token);
        Self {
            producer: ProducerServiceClient::with_interceptor(channel.clone(), b.clone()),
            worker: WorkerServiceClient::with_interceptor(channel.clone(), b.clone()),
            admin: AdminServiceClient::with_interceptor(channel, b),
        }
    }
}
