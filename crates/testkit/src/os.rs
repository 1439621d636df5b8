//! What the private servers need from the machine: a free port, and whether we are root.

use std::process::Command;

/// A port of 127.0.0.1 free now (another process may take it before the caller binds it).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (PostgreSQL and pgbouncer then run as `postgres`).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}
