//! A pgbouncer in transaction mode in front of the test cluster, for one test.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;

use crate::Unavailable;
use crate::names::unique;

/// pgbouncer (Debian's, `GEOSTACK_PGBOUNCER` or found on `PATH` or in `/usr/sbin`) listening
/// on a free port of 127.0.0.1 in front of the cluster at `DATABASE_URL`, in transaction mode
/// (the mode of the seed's infrastructure), every database passed through. Clients authenticate
/// with SCRAM against the cluster's own role passwords (`auth_query` as `auth_user`), so each
/// role keeps its own server connections, as sqlpass's per-role pools need. Stopped, and its
/// files removed, when dropped.
///
/// ```no_run
/// # async fn demo() {
/// let bouncer = geostack_testkit::TestPgBouncer::start("admin_role", "its password").await;
/// let options = bouncer.connect_options().username("admin_role").password("its password");
/// # let _ = options;
/// # }
/// ```
pub struct TestPgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl TestPgBouncer {
    /// Starts pgbouncer; `auth_user` (a role with a password that may read `pg_shadow`)
    /// looks the other roles up.
    ///
    /// # Panics
    ///
    /// When pgbouncer is not installed or does not come up, naming the command that
    /// installs it.
    pub async fn start(auth_user: &str, auth_password: &str) -> Self {
        match Self::try_start(auth_user, auth_password).await {
            Ok(bouncer) => bouncer,
            Err(e) => panic!("{e}"),
        }
    }

    async fn try_start(auth_user: &str, auth_password: &str) -> Result<Self, Unavailable> {
        let unavailable = |e: &dyn std::fmt::Display| Unavailable::new("pgbouncer", e);
        let bin = std::env::var("GEOSTACK_PGBOUNCER")
            .ok()
            .or_else(|| find("pgbouncer"))
            .ok_or_else(|| unavailable(&"not installed"))?;
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let server = PgConnectOptions::from_str(&url).map_err(|e| unavailable(&e))?;
        let port = crate::os::free_port().map_err(|e| unavailable(&e))?;
        let dir = std::env::temp_dir().join(unique("gs_test_pgbouncer"));
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&e))?;
        let users = dir.join("users.txt");
        std::fs::write(&users, format!("\"{auth_user}\" \"{auth_password}\"\n"))
            .map_err(|e| unavailable(&e))?;
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={server_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = scram-sha-256\nauth_file = {users}\nauth_user = {auth_user}\n\
                 auth_query = SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1\n\
                 pool_mode = transaction\nmax_client_conn = 1000\ndefault_pool_size = 20\n\
                 ignore_startup_parameters = extra_float_digits,options\n\
                 logfile = {log}\npidfile = {pid}\n",
                host = server.get_host(),
                server_port = server.get_port(),
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
                pid = dir.join("pgbouncer.pid").display(),
            ),
        )
        .map_err(|e| unavailable(&e))?;
        // pgbouncer refuses to run as root: as root, it runs as the cluster's system user.
        let mut command = if crate::os::is_root() {
            set_owner(&dir, "postgres");
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let child = command
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| unavailable(&e))?;
        let mut bouncer = Self { child, port, dir };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(10)
                || bouncer.child.try_wait().ok().flatten().is_some()
            {
                let log =
                    std::fs::read_to_string(bouncer.dir.join("pgbouncer.log")).unwrap_or_default();
                return Err(unavailable(&format!("it did not come up: {log}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(bouncer)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Options to connect through it (set the user, password and database).
    pub fn connect_options(&self) -> PgConnectOptions {
        PgConnectOptions::new().host("127.0.0.1").port(self.port)
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        // As root the child is runuser, whose own child is pgbouncer: stop pgbouncer by the
        // pid it wrote, or it outlives the test.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `name` on `PATH`, or in `/usr/sbin` (where Debian puts pgbouncer).
fn find(name: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin"])
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// Gives `dir` and its files to `user` (pgbouncer, run as that user, writes its log there).
fn set_owner(dir: &std::path::Path, user: &str) {
    let _ = Command::new("chown").args(["-R", user]).arg(dir).status();
}
