//! A TCP proxy between Redis clients and a Redis server that injects the faults a network and a
//! server inflict: a reply lost after its command ran, a connection cut in the middle of a
//! reply, a delay, a blackhole (nothing passes for a while), every connection cut at once.
//!
//! It reads the RESP stream both ways, so that a fault can be aimed at the reply to one command
//! (pairing replies with commands in order: for request/reply connections, not pub/sub).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Tells whether a fault is aimed at a reply: given the command's arguments (the command name
/// first) and the reply's raw RESP bytes.
type Aim = Box<dyn Fn(&[Vec<u8>], &[u8]) -> bool + Send>;

struct Shot {
    aim: Aim,
    /// Pass on the first half of the reply before cutting (else nothing of it).
    half: bool,
}

#[derive(Default)]
struct Faults {
    shots: Vec<Shot>,
    delay: Duration,
    blackhole: bool,
    lost: usize,
}

type Shared = Arc<Mutex<Faults>>;

/// A fault-injecting proxy in front of a Redis server, on a free local port. Dropping it stops
/// it and closes its connections.
///
/// ```no_run
/// # async fn demo() {
/// use geostack_testkit::FaultProxy;
///
/// let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).await;
/// // The reply to the next INCR is lost: the counter moves, the client never hears of it.
/// proxy.lose_reply(|command, _reply| command[0].eq_ignore_ascii_case(b"INCR"));
/// let client = redis::Client::open(proxy.url()).unwrap();
/// # let _ = client; }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Shared,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|g| *g += 1);
    }
}

impl FaultProxy {
    /// Starts a proxy to the Redis server at `upstream`.
    ///
    /// # Panics
    ///
    /// When no local port can be bound.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the fault proxy cannot bind a local port: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the fault proxy has no local address: {e}"));
        let faults: Shared = Arc::default();
        let (cut, _) = watch::channel(0u64);
        let task = {
            let faults = Arc::clone(&faults);
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let _ = client.set_nodelay(true);
                    let faults = Arc::clone(&faults);
                    let cut = cut.subscribe();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(upstream).await {
                            let _ = server.set_nodelay(true);
                            relay(client, server, faults, cut).await;
                        }
                    });
                }
            })
        };
        Self {
            addr,
            faults,
            cut,
            task,
        }
    }

    /// Starts a proxy to the Redis server of `url` (`redis://host:port…`).
    ///
    /// # Panics
    ///
    /// For a URL without a reachable host and port.
    pub async fn to_url(url: &str) -> Self {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .unwrap_or_else(|e| panic!("not a Redis URL: {url}: {e}"));
        let redis::ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            panic!("the fault proxy speaks plain TCP only: {url}");
        };
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("cannot resolve {host}:{port}"));
        Self::start(upstream).await
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A Redis URL to the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The reply to the next command that `aim` picks (given the command's arguments and the
    /// reply's raw bytes) is lost: the command ran, and its connection is cut before any of its
    /// reply passes — what a connection lost at the wrong moment does. Once.
    pub fn lose_reply(&self, aim: impl Fn(&[Vec<u8>], &[u8]) -> bool + Send + 'static) {
        self.shoot(Shot {
            aim: Box::new(aim),
            half: false,
        });
    }

    /// As [`FaultProxy::lose_reply`], but the first half of the reply passes before the cut.
    pub fn cut_mid_reply(&self, aim: impl Fn(&[Vec<u8>], &[u8]) -> bool + Send + 'static) {
        self.shoot(Shot {
            aim: Box::new(aim),
            half: true,
        });
    }

    /// Every byte, either way, waits `delay` before it passes (zero: none).
    pub fn delay(&self, delay: Duration) {
        self.faults().delay = delay;
    }

    /// While on, nothing passes either way and connections stay open: a network that drops
    /// every packet. As TCP does, what was sent meanwhile arrives once it is off (unless the
    /// client gave up on the connection).
    pub fn blackhole(&self, on: bool) {
        self.faults().blackhole = on;
    }

    /// Cuts every open connection now (new ones are accepted).
    pub fn cut_all(&self) {
        self.cut.send_modify(|g| *g += 1);
    }

    /// How many replies were lost or cut so far.
    pub fn lost(&self) -> usize {
        self.faults().lost
    }

    /// Whether a fault aimed with [`FaultProxy::lose_reply`] or [`FaultProxy::cut_mid_reply`]
    /// is still waiting for its reply.
    pub fn armed(&self) -> bool {
        !self.faults().shots.is_empty()
    }

    fn shoot(&self, shot: Shot) {
        self.faults().shots.push(shot);
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Relays one client connection until either side closes, a fault cuts it, or every
/// connection is cut.
async fn relay(
    client: TcpStream,
    server: TcpStream,
    faults: Shared,
    mut cut: watch::Receiver<u64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // The commands whose replies have not come back yet, in order.
    let commands: Arc<Mutex<VecDeque<Vec<Vec<u8>>>>> = Arc::default();
    let upstream = {
        let commands = Arc::clone(&commands);
        let faults = Arc::clone(&faults);
        async move {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = client_read.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                pending.extend_from_slice(&buf[..n]);
                let mut frames = Vec::new();
                while let Some(len) = frame_len(&pending) {
                    let frame: Vec<u8> = pending.drain(..len).collect();
                    frames.push(frame);
                }
                for frame in frames {
                    pass(&faults).await;
                    lock(&commands).push_back(command_args(&frame));
                    if server_write.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let downstream = async move {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(len) = frame_len(&pending) {
                let reply: Vec<u8> = pending.drain(..len).collect();
                let command = lock(&commands).pop_front().unwrap_or_default();
                let shot = {
                    let mut f = lock(&faults);
                    let hit = f.shots.iter().position(|s| (s.aim)(&command, &reply));
                    hit.map(|i| {
                        f.lost += 1;
                        f.shots.remove(i)
                    })
                };
                if let Some(shot) = shot {
                    if shot.half {
                        let _ = client_write.write_all(&reply[..reply.len() / 2]).await;
                        let _ = client_write.flush().await;
                    }
                    return;
                }
                pass(&faults).await;
                if client_write.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    };
    let start = *cut.borrow_and_update();
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
        _ = cut.wait_for(|g| *g != start) => {}
    }
}

/// Waits out the delay, and while the network is a blackhole.
async fn pass(faults: &Shared) {
    let delay = lock(faults).delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    while lock(faults).blackhole {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The length of the RESP value at the start of `buf`, or `None` while it is incomplete.
/// RESP2 and RESP3: aggregates count their elements (maps and attributes two per entry), bulk
/// types their bytes; an inline command is one line.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    // Values still to read at this point: aggregates add their elements.
    let mut remaining: u64 = 1;
    while remaining > 0 {
        let line_end = at + find_crlf(buf.get(at..)?)?;
        let kind = *buf.get(at)?;
        let header = std::str::from_utf8(buf.get(at + 1..line_end)?).ok()?;
        remaining -= 1;
        at = line_end + 2;
        match kind {
            b'$' | b'=' | b'!' => {
                let len: i64 = header.parse().ok()?;
                if len >= 0 {
                    at += usize::try_from(len).ok()? + 2;
                    if at > buf.len() {
                        return None;
                    }
                }
            }
            b'*' | b'~' | b'>' => remaining += header.parse::<i64>().ok()?.max(0).unsigned_abs(),
            b'%' | b'|' => remaining += 2 * header.parse::<i64>().ok()?.max(0).unsigned_abs(),
            // Simple strings, errors, integers, nulls, booleans, doubles, big numbers, and
            // inline commands: one line.
            _ => {}
        }
    }
    Some(at)
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The arguments of a command frame (an array of bulk strings), or the words of an inline one.
fn command_args(frame: &[u8]) -> Vec<Vec<u8>> {
    if frame.first() != Some(&b'*') {
        return frame
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
    }
    let mut args = Vec::new();
    let mut at = match find_crlf(frame) {
        Some(i) => i + 2,
        None => return args,
    };
    while at < frame.len() {
        let Some(end) = find_crlf(&frame[at..]).map(|i| at + i) else {
            break;
        };
        let len: usize = std::str::from_utf8(&frame[at + 1..end])
            .ok()
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let start = end + 2;
        let Some(arg) = frame.get(start..start + len) else {
            break;
        };
        args.push(arg.to_vec());
        at = start + len + 2;
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_frames_are_measured_whole_or_not_at_all() {
        let command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        assert_eq!(frame_len(command), Some(command.len()));
        for cut in 0..command.len() {
            assert_eq!(frame_len(&command[..cut]), None, "cut at {cut}");
        }
        let mut two = command.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(frame_len(&two), Some(command.len()));
        assert_eq!(
            command_args(command),
            vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()]
        );
        // Nested arrays, nulls, integers and errors, as script replies bring them.
        let reply = b"*3\r\n:0\r\n*2\r\n$-1\r\n$2\r\nid\r\n-ERR no\r\n";
        assert_eq!(frame_len(reply), Some(reply.len()));
        assert_eq!(frame_len(b"%1\r\n+a\r\n:1\r\n"), Some(12));
        assert_eq!(frame_len(b"*-1\r\n"), Some(5));
        assert_eq!(command_args(b"PING\r\n"), vec![b"PING".to_vec()]);
    }
}
