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
mod varnish;

pub use fault_proxy::FaultProxy;
pub use pg::{TestDb, TestRole};
pub use pgbouncer::TestPgBouncer;
pub use redis_cluster::RedisCluster;
pub use redis_prefix::TestRedis;
pub use redis_server::RedisServer;
pub use tls::{TlsPostgres, TlsRedis};
pub use unavailable::Unavailable;
pub use varnish::TestVarnish;

/// A port of 127.0.0.1 free a moment ago, for a service whose address must be known before
/// it starts.
///
/// # Panics
///
/// When the system gives no free port.
pub fn free_port() -> u16 {
    match os::free_port() {
        Ok(port) => port,
        Err(e) => panic!("{}", Unavailable::new("a free local port", e)),
    }
}

/// The command that provisions every service the tests need.
pub const PROVISION: &str = "scripts/services";
