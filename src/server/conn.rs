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
}

impl GuardedStream {
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
