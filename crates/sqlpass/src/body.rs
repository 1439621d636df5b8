//! The response body: chunks as the producer writes them, then the error that cut it short,
//! if one could not be written into the document itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// The bytes of the result, in order. Dropping it cancels the query on the server.
///
/// Most errors after streaming began are written into the document in its format (a JSON
/// `error` member, a CSV `#error` record). Only when that is impossible — the reader was too
/// slow for the deadline — does the stream end with an `Err`, after which an HTTP server should
/// abort the response rather than end it cleanly.
pub struct Body {
    chunks: mpsc::Receiver<Bytes>,
    end: Option<oneshot::Receiver<Error>>,
}

impl Body {
    pub(crate) fn new(chunks: mpsc::Receiver<Bytes>, end: oneshot::Receiver<Error>) -> Self {
        Self {
            chunks,
            end: Some(end),
        }
    }
}

impl Stream for Body {
    type Item = Result<Bytes, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.chunks.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(chunk))),
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => match self.end.as_mut() {
                Some(end) => match Pin::new(end).poll(cx) {
                    Poll::Ready(result) => {
                        self.end = None;
                        Poll::Ready(result.ok().map(Err))
                    }
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Ready(None),
            },
        }
    }
}

use std::future::Future as _;
