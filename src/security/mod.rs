//! Transport security and authentication: TLS on the ports (certificates
//! that follow their files), the accept loop, and who a caller is.
//!
//! What a caller may do is decided in [`crate::core::access`]; the gRPC
//! layer that asks this module once per call is [`crate::grpc::caller`].

pub mod authn;
pub mod conn;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use authn::{Authenticator, Unauthenticated};
pub use conn::{Conn, Peer, PeerIdentity};
pub use tls::{Alpn, ServerTls, TlsFiles};

/// How often certificate and token files are looked at for changes.
pub const FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Re-reads changed certificate and token files until `stop`.
pub async fn follow_files(
    tls: Vec<Arc<ServerTls>>,
    auth: Arc<Authenticator>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FILE_CHECK_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for t in &tls {
            t.refresh();
        }
        auth.refresh();
    }
}
