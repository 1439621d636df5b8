//! A varnishd in front of a test's server, purged as CARTO purges its Varnish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Unavailable;
use crate::names::unique;

/// varnishd (Debian's `varnish`: `GEOSTACK_VARNISHD`, else in `/usr/sbin`; `scripts/services`
/// with `GEOSTACK_CACHE=1` installs it) on
/// a free port of 127.0.0.1, caching what `backend` answers as its headers allow, with CARTO's
/// purge: a `PURGE` request bans every object whose `X-Cache-Channel` matches the request's
/// `X-Cache-Channel` (a regular expression). Killed, and its files removed, when dropped.
///
/// ```no_run
/// # fn demo(server: std::net::SocketAddr) {
/// let varnish = geostack_testkit::TestVarnish::start(server);
/// let front = varnish.addr(); // ask here; PURGE here too
/// # let _ = front; }
/// ```
pub struct TestVarnish {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl TestVarnish {
    /// Starts varnishd in front of `backend`, on a free port.
    ///
    /// # Panics
    ///
    /// When varnishd is not installed or does not come up, naming the command that installs
    /// it.
    pub fn start(backend: SocketAddr) -> Self {
        Self::start_on(crate::free_port(), backend)
    }

    /// Starts varnishd in front of `backend` on `port` (found beforehand with
    /// [`crate::free_port`], for a server that must know where to send its purges).
    ///
    /// # Panics
    ///
    /// As [`TestVarnish::start`].
    pub fn start_on(port: u16, backend: SocketAddr) -> Self {
        match Self::try_start(port, backend) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_start(port: u16, backend: SocketAddr) -> Result<Self, Unavailable> {
        let unavailable = |e: &dyn std::fmt::Display| Unavailable::new("varnishd", e);
        let bin = std::env::var("GEOSTACK_VARNISHD")
            .ok()
            .or_else(|| {
                ["/usr/sbin/varnishd", "/usr/bin/varnishd"]
                    .into_iter()
                    .find(|p| std::path::Path::new(p).exists())
                    .map(str::to_owned)
            })
            .ok_or_else(|| unavailable(&"not installed"))?;
        let dir = std::env::temp_dir().join(unique("gs_test_varnish"));
        std::fs::create_dir_all(&dir).map_err(|e| unavailable(&e))?;
        let vcl = dir.join("test.vcl");
        std::fs::write(
            &vcl,
            format!(
                r#"vcl 4.1;
backend server {{ .host = "{}"; .port = "{}"; }}
acl purgers {{ "127.0.0.1"; }}
sub vcl_recv {{
  if (req.method == "PURGE") {{
    if (client.ip !~ purgers) {{ return (synth(405, "Not allowed")); }}
    ban("obj.http.X-Cache-Channel ~ " + req.http.X-Cache-Channel);
    return (synth(200, "Banned"));
  }}
}}
"#,
                backend.ip(),
                backend.port()
            ),
        )
        .map_err(|e| unavailable(&e))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(&bin)
            .arg("-F")
            .args(["-j", "none"])
            .arg("-n")
            .arg(dir.join("work"))
            .args(["-a", &addr.to_string()])
            .arg("-f")
            .arg(&vcl)
            .args(["-s", "malloc,32m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| unavailable(&e))?;
        let mut varnish = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = varnish.child.try_wait() {
                return Err(unavailable(&format!("it exited with {status}")));
            }
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(varnish);
            }
            if Instant::now() >= deadline {
                let _ = varnish.child.kill();
                return Err(unavailable(&"no answer within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TestVarnish {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
