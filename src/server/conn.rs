//! Connections that a response's deadline can cut: a client that stops reading cannot hold a
//! connection (nor the rows queued for it) past the deadline of the response being written.
//!
//! hyper stops polling a response body while a write to the socket is pending, so a body cannot
//! end itself when its reader stalls: the cut is made here, at the socket. A handler arms the
//! connection's [`Cut`] with its response's deadline (through [`Peer`], the connect info); a
//! write that is still pending when that instant passes fails, the connection is reset
//! (`SO_LINGER` 0: what the kernel still holds for the client is dropped), and hyper closes it.
//! A write that makes progress is never cut, so a client that keeps up reads the whole
//! response, its end included.
//!
//! hyper also answers a request head it cannot read by itself, before any handler runs: 414 for
//! a URI over its 64 KiB limit, 431 for headers beyond its buffer or count, 400 for a malformed
//! head, each with an empty body. The stream replaces that answer with the same status in
//! CARTO's error shape, with CORS headers, as every other refusal.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A TCP listener whose connections set `TCP_NODELAY` (a streamed response's small writes
/// then leave at once instead of waiting on Nagle's algorithm and the client's delayed ACK,
/// about 40 ms per request on a kept-alive connection) and can be cut at a response's
/// deadline. Serve it with [`Peer`] as connect info:
///
/// ```no_run
/// # async fn demo(router: axum::Router) -> std::io::Result<()> {
/// use geostack::server::{GuardedListener, Peer};
///
/// let listener = GuardedListener::bind("127.0.0.1:8080").await?;
/// axum::serve(listener, router.into_make_service_with_connect_info::<Peer>()).await
/// # }
/// ```
#[derive(Debug)]
pub struct GuardedListener {
    tcp: TcpListener,
}

impl GuardedListener {
    /// Wraps a bound listener.
    pub fn new(tcp: TcpListener) -> Self {
        Self { tcp }
    }

    /// Binds `addr`.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> io::Result<Self> {
        Ok(Self::new(TcpListener::bind(addr).await?))
    }
}

impl Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // TcpListener's own accept loop, which waits out transient errors.
        let (mut tcp, addr) = Listener::accept(&mut self.tcp).await;
        super::set_nodelay(&mut tcp);
        (
            GuardedStream {
                tcp,
                cut: Cut::default(),
                timer: None,
                replacing: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An accepted connection of a [`GuardedListener`].
#[derive(Debug)]
pub struct GuardedStream {
    tcp: TcpStream,
    cut: Cut,
    timer: Option<Pin<Box<Sleep>>>,
    /// hyper's own refusal being replaced: what is left to write of ours, and the length of
    /// hyper's to report written.
    replacing: Option<(Vec<u8>, usize)>,
}

impl GuardedStream {
    /// Writes the rest of a replaced refusal; done, reports hyper's bytes as written.
    fn poll_replace(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let Some((rest, reported)) = &mut self.replacing else {
                return Poll::Ready(Ok(0));
            };
            if rest.is_empty() {
                let reported = *reported;
                self.replacing = None;
                return Poll::Ready(Ok(reported));
            }
            match Pin::new(&mut self.tcp).poll_write(cx, rest) {
                Poll::Ready(Ok(n)) => {
                    rest.drain(..n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return self.pending(cx),
            }
        }
    }

    /// `Pending`, or the cut when the armed deadline has passed (then the socket is reset).
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(deadline) = self.cut.deadline() else {
            self.timer = None;
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Err(e) =
            socket2::SockRef::from(&self.tcp).set_linger(Some(std::time::Duration::ZERO))
        {
            tracing::debug!(error = %e, "could not set SO_LINGER");
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the response before its deadline",
        )))
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let Some(ours) = carto_refusal(buf)
        {
            self.replacing = Some((ours, buf.len()));
        }
        if self.replacing.is_some() {
            return self.poll_replace(cx);
        }
        match Pin::new(&mut self.tcp).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.replacing.is_none()
            && let [head, rest @ ..] = bufs
            && rest.iter().all(|b| b.is_empty())
            && let Some(ours) = carto_refusal(head)
        {
            self.replacing = Some((ours, head.len()));
        }
        if self.replacing.is_some() {
            return self.poll_replace(cx);
        }
        match Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.tcp).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// CARTO's shape of the answer hyper writes by itself to a request head it cannot read: a
/// whole response head of one of its parse-error statuses, with an empty body.
fn carto_refusal(written: &[u8]) -> Option<Vec<u8>> {
    const REFUSALS: [(&[u8], &str); 3] = [
        (
            b"HTTP/1.1 400 Bad Request\r\n",
            "the request could not be read as HTTP",
        ),
        (
            b"HTTP/1.1 414 URI Too Long\r\n",
            "the request URI is longer than 65534 bytes: send the parameters in a POST body",
        ),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
            "the request headers are larger than the server reads",
        ),
    ];
    if written.len() > 512 || !written.ends_with(b"\r\n\r\n") {
        return None;
    }
    let (head, message) = REFUSALS
        .iter()
        .find(|(head, _)| written.starts_with(head))?;
    if !written
        .windows(b"\r\ncontent-length: 0\r\n".len())
        .any(|w| w == b"\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let body = serde_json::json!({ "error": [message] }).to_string();
    let mut ours = head.to_vec();
    ours.extend_from_slice(
        format!(
            "content-type: application/json; charset=utf-8\r\n\
             access-control-allow-origin: *\r\n\
             connection: close\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    Some(ours)
}

/// The deadline a connection's pending writes must meet, shared by the connection and the
/// handler of the request it serves.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cut(Arc<Mutex<Option<Instant>>>);

impl Cut {
    fn deadline(&self) -> Option<Instant> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, deadline: Option<Instant>) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = deadline;
    }

    /// Arms the cut at `deadline` until the returned guard (held by the response body) drops.
    pub(crate) fn arm(&self, deadline: Instant) -> Armed {
        self.set(Some(deadline));
        Armed(self.clone())
    }
}

/// Disarms its [`Cut`] when the response it was armed for has been written (or dropped).
#[derive(Debug)]
pub(crate) struct Armed(Cut);

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.set(None);
    }
}

/// The connect info of a [`GuardedListener`]'s connections: the client's address (anonymous
/// callers are rate-limited by it) and the connection's cut.
#[derive(Clone, Debug)]
pub struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) cut: Cut,
}

impl Peer {
    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Connected<IncomingStream<'_, GuardedListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, GuardedListener>) -> Self {
        Self {
            addr: *stream.remote_addr(),
            cut: stream.io().cut.clone(),
        }
    }
}
