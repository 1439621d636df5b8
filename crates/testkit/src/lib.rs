#![doc = include_str!("../README.md")]
// This crate's job is to fail the test loudly: panicking with a clear message is its contract.
#![expect(
    clippy::panic,
    reason = "test support fails the calling test with a message"
)]

mod fault_proxy;
mod names;
pub mod natural_earth;
mod os;
mod pg;
mod pgbouncer;
mod redis_cluster;
mod redis_prefix;
mod redis_server;
mod tls;
mod unavailable;

pub use fault_proxy::FaultProxy;
pub use pg::{TestDb, TestRole};
pub use pgbouncer::TestPgBouncer;
pub use redis_cluster::RedisCluster;
pub use redis_prefix::TestRedis;
pub use redis_server::RedisServer;
pub use tls::{TlsPostgres, TlsRedis};
pub use unavailable::Unavailable;

/// The command that provisions every service the tests need.
pub const PROVISION: &str = "scripts/services";
