//! The gRPC layer: it only translates. Each handler converts the request into
//! broker inputs ([`convert`]), makes one broker call, and converts the answer
//! or the error ([`status`]) back. No queue, lease or retry logic lives here.

pub mod admin;
pub mod caller;
pub mod codec;
pub mod convert;
pub mod keda;
pub mod observe;
pub mod producer;
pub mod schedules;
pub mod server;
pub mod status;
pub mod stream;
pub mod worker;
