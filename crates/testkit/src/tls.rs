//! TLS peers for one test: a certificate authority and a server certificate made with the
//! `openssl` command, a PostgreSQL cluster of the test's own with `ssl = on` that refuses
//! connections without TLS, and a `redis-server` listening on a TLS port only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Unavailable;
use crate::names::unique;
use crate::os::{free_port, is_root};

/// A directory with `ca.pem` (a certificate authority made for the test) and `server.pem` /
/// `server.key` (a certificate it signed for `localhost` and `127.0.0.1`). Removed when
/// dropped.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(what: &str) -> Result<Self, Unavailable> {
        let unavailable = |e: &dyn std::fmt::Display| Unavailable::new("openssl", e);
        let dir = std::env::temp_dir().join(unique(what));
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&e))?;
        let certs = Self { dir };
        let ext = certs.path("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nbasicConstraints = CA:FALSE\n",
        )
        .map_err(|e| unavailable(&e))?;
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=geostack test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&certs.dir)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| unavailable(&e))?;
            if !out.status.success() {
                return Err(unavailable(&String::from_utf8_lossy(&out.stderr)));
            }
        }
        Ok(certs)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own (`initdb` of the installed server, as the
/// `postgres` system user when run as root) on a free port of 127.0.0.1, with `ssl = on` and a
/// certificate from a test authority; `pg_hba.conf` takes TLS connections only (trust) and
/// rejects the rest. Stopped and removed when dropped.
///
/// ```no_run
/// # async fn demo() {
/// let pg = geostack_testkit::TlsPostgres::start().await;
/// // sslmode=verify-full with the test authority as root.
/// let pool = sqlx::PgPool::connect(&pg.url("postgres")).await.unwrap();
/// # }
/// ```
pub struct TlsPostgres {
    certs: Certificates,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    root: bool,
}

impl TlsPostgres {
    /// Makes and starts the cluster.
    ///
    /// # Panics
    ///
    /// When `openssl` or the PostgreSQL server binaries are missing or the cluster does not
    /// come up, naming what failed.
    pub async fn start() -> Self {
        match Self::try_start() {
            Ok(pg) => pg,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_start() -> Result<Self, Unavailable> {
        let unavailable = |e: &dyn std::fmt::Display| Unavailable::new("a TLS PostgreSQL", e);
        let bin = postgres_bin().ok_or_else(|| unavailable(&"initdb is not installed"))?;
        let certs = Certificates::make("gs_tls_pg")?;
        let data = certs.path("data");
        let root = is_root();
        let port = free_port().map_err(|e| unavailable(&e))?;
        let pg = Self {
            certs,
            data,
            port,
            bin,
            root,
        };
        if root {
            // The server runs as postgres and reads its key, which must be its own.
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.certs.dir)
                .status();
        }
        let key = pg.certs.path("server.key");
        set_mode(&key, 0o600).map_err(|e| unavailable(&e))?;
        pg.run("initdb", |c| {
            c.arg("-D")
                .arg(&pg.data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        })?;
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nfsync = off\n\
             max_connections = 40\nshared_buffers = 16MB\n",
            dir = pg.certs.dir.display(),
            cert = pg.certs.path("server.pem").display(),
            key = key.display(),
        );
        append(&pg.data.join("postgresql.conf"), &conf).map_err(|e| unavailable(&e))?;
        std::fs::write(
            pg.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 reject\n",
        )
        .map_err(|e| unavailable(&e))?;
        if root {
            let _ = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&pg.data)
                .status();
        }
        pg.run("pg_ctl", |c| {
            c.arg("-D")
                .arg(&pg.data)
                .args(["-w", "-t", "30", "-l"])
                .arg(pg.certs.path("postgres.log"))
                .arg("start");
        })?;
        Ok(pg)
    }

    /// Runs one of the server's programs, as postgres when root.
    fn run(
        &self,
        program: &'static str,
        args: impl FnOnce(&mut Command),
    ) -> Result<(), Unavailable> {
        let path = self.bin.join(program);
        let mut command = if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        args(&mut command);
        let out = command
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Unavailable::new(program, e))?;
        if out.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.certs.path("postgres.log")).unwrap_or_default();
            Err(Unavailable::new(
                program,
                format!("{}{log}", String::from_utf8_lossy(&out.stderr)),
            ))
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test authority's certificate (PEM file), which signed the server's.
    pub fn ca_file(&self) -> PathBuf {
        self.certs.path("ca.pem")
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>?sslmode=verify-full&sslrootcert=…`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca_file().display()
        )
    }

    /// The same connection without TLS (`sslmode=disable`), which the cluster refuses.
    pub fn plain_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", |c| {
            c.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"]);
        });
    }
}

/// A `redis-server` on a free port of 127.0.0.1 that speaks TLS only (`--port 0
/// --tls-port …`), with a certificate from a test authority and no client certificates asked.
/// Killed and its files removed when dropped.
///
/// ```no_run
/// let redis = geostack_testkit::TlsRedis::start();
/// let client = redis::Client::open(redis.url()).unwrap(); // rediss://, with the system roots
/// # let _ = (client, redis.ca_pem());
/// ```
pub struct TlsRedis {
    certs: Certificates,
    port: u16,
    child: Child,
}

impl TlsRedis {
    /// Starts the server.
    ///
    /// # Panics
    ///
    /// When `openssl` or `redis-server` is missing or the server does not come up.
    pub fn start() -> Self {
        match Self::try_start() {
            Ok(redis) => redis,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_start() -> Result<Self, Unavailable> {
        let unavailable = |e: &dyn std::fmt::Display| Unavailable::new("a TLS redis-server", e);
        let certs = Certificates::make("gs_tls_redis")?;
        let port = free_port().map_err(|e| unavailable(&e))?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.pem"))
            .arg("--dir")
            .arg(&certs.dir)
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| unavailable(&e))?;
        let mut redis = Self { certs, port, child };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(5)
                || redis.child.try_wait().ok().flatten().is_some()
            {
                let log =
                    std::fs::read_to_string(redis.certs.path("redis.log")).unwrap_or_default();
                return Err(unavailable(&format!("it did not come up: {log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(redis)
    }

    /// `rediss://localhost:<port>`.
    pub fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }

    /// The test authority's certificate (PEM file).
    pub fn ca_file(&self) -> PathBuf {
        self.certs.path("ca.pem")
    }

    /// The test authority's certificate, PEM.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).unwrap_or_default()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bin directory of the newest PostgreSQL server installed (`GEOSTACK_PG_BINDIR` first).
fn postgres_bin() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("GEOSTACK_PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
    file.write_all(text.as_bytes())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
