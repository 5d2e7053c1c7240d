//! # taskbroker
//!
//! A gRPC task broker: producers enqueue tasks into named queues; workers lease
//! them under fenced leases and settle them with Ack, Nack or ExtendLease.
//!
//! # Layout
//! - [`app`]: the one place that assembles and stops the program (store,
//!   broker, timer and schedule loops, readiness, gRPC server, admin HTTP port).
//! - [`core`]: the pure domain (tasks, the state machine in
//!   [`core::transition`], priority order, routing, backoff, lease fencing,
//!   queue selection and the lease driver, schedule due times and catch-up,
//!   trace context, the clock). No I/O.
//! - [`store`]: the storage trait in task operations and its backends: memory
//!   and embedded (write-ahead log) share one in-memory table that applies
//!   `core::transition`; Redis runs one Lua script per operation, each naming
//!   the core function it mirrors (`tests/differential.rs` keeps them equal).
//! - [`broker`]: validation, resolution against queue settings and routes,
//!   one store call per request, wake-ups for waiting workers.
//! - [`background`]: the timer loop (expired leases, due tasks, retention)
//!   and the schedule loop (periodic schedules, [`broker::schedules`]).
//! - [`admin_http`]: the admin HTTP port: the web dashboard (server-rendered,
//!   assets compiled in), `/healthz`, `/readyz`; calls the broker's
//!   operations API.
//! - [`grpc`]: the thin gRPC layer: the one middleware stack
//!   ([`grpc::caller`]), conversions, error mapping, services, the server.
//! - [`security`]: TLS on the ports (certificates that follow their
//!   files), the accept loop, authentication (tokens, client certificates);
//!   what a principal may do is [`core::access`]'s.
//! - [`config`]: the TOML config and its validation.
//! - [`cli`]: the `taskbroker` subcommands (`bench` behind the feature of that name).
//!
//! Dependencies point one way: `grpc → broker → core`, `admin_http →
//! broker`, `broker → store`; `app` and `cli` wire concrete backends.
#![forbid(unsafe_code)]

pub mod admin_http;
pub mod app;
pub mod background;
pub mod broker;
pub mod cli;
pub mod config;
pub mod core;
pub mod grpc;
pub mod security;
pub mod store;
pub mod telemetry;

/// KEDA's `externalscaler` service (vendored proto), served for autoscaling.
/// Its doc comments are upstream's, unchanged.
#[allow(clippy::doc_lazy_continuation)]
pub mod keda {
    tonic::include_proto!("externalscaler");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("externalscaler_descriptor");
}

/// The generated protobuf types and gRPC stubs of `taskbroker.v1`.
pub mod pb {
    tonic::include_proto!("taskbroker.v1");

    /// Descriptor set for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskbroker_descriptor");

    /// `taskbroker.bench.v1`: the no-op echo service `taskbroker bench` uses as its baseline.
    #[cfg(feature = "bench")]
    pub mod bench {
        tonic::include_proto!("taskbroker.bench.v1");
    }
}
