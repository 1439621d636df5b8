//! A private `redis-server` for tests that kill or restart Redis.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Unavailable;
use crate::names::unique;
use crate::os::free_port;

/// A `redis-server` child process on a free port of 127.0.0.1, killed when dropped.
///
/// ```no_run
/// let mut server = geostack_testkit::RedisServer::start();
/// let client = redis::Client::open(server.url()).unwrap();
/// server.kill(); // SIGKILL: clients now see connection errors
/// server.restart(); // same port, same data directory
/// ```
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    persistent: bool,
    cluster: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed or does not come up, naming the command that
    /// installs it.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a server that writes every change to an append-only file (`appendfsync always`)
    /// in a directory of its own, so that a kill and a restart lose no acknowledged write.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    /// Starts a server in cluster mode, for [`crate::RedisCluster`].
    pub(crate) fn start_cluster_node() -> Self {
        Self::start_mode(false, true)
    }

    fn start_with(persistent: bool) -> Self {
        Self::start_mode(persistent, false)
    }

    fn start_mode(persistent: bool, cluster: bool) -> Self {
        let dir = std::env::temp_dir().join(unique("gs_redis"));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("testkit: cannot create {}: {e}", dir.display());
        }
        let mut server = Self {
            port: 0,
            dir,
            persistent,
            cluster,
            child: None,
        };
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last = None;
        for _ in 0..5 {
            server.port = match free_port() {
                Ok(port) => port,
                Err(e) => panic!("{}", Unavailable::new("a free local port", e)),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => panic!("{e}"),
            None => panic!("testkit: redis-server did not start"),
        }
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server process is running (it was not killed since it last started).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL and waits for it to exit. Nothing is flushed: a
    /// non-persistent server loses everything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (killing it first if it
    /// runs).
    ///
    /// # Panics
    ///
    /// When it does not come up.
    pub fn restart(&mut self) {
        self.kill();
        // The kernel may hold the port for a moment after the kill.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), Unavailable> {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--daemonize", "no", "--logfile", "redis.log"]);
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if self.cluster {
            cmd.args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ]);
            cmd.args(["--cluster-node-timeout", "2000"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Unavailable::new("redis-server", e))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Unavailable::new(
                    "redis-server",
                    format!("it exited with {status}; see {}", self.dir.display()),
                ));
            }
            if self.answers_ping() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Unavailable::new("redis-server", "no answer within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answers_ping(&self) -> bool {
        if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            return false;
        }
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
