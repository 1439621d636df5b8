//! The response body: chunks as the producer writes them, then the error that cut it short,
//! if one could not be written into the document itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::Error;

/// How a run ended: [`Body::outcome`], once the body has been read to its end.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Outcome {
    /// Rows written (for a writer's statement without result columns, the rows it affected).
    pub rows: u64,
    /// The error that ended the document early, as written into it; `None` when every row was
    /// written (and, for a writer, the transaction committed).
    pub error: Option<String>,
    /// From the start of the run to its end.
    pub elapsed: std::time::Duration,
}

/// What the producer says at the end.
pub(crate) enum End {
    Finished(Outcome),
    Failed(Error),
}

/// The bytes of the result, in order. Dropping it cancels the query on the server.
///
/// Most errors after streaming began are written into the document in its format (a JSON
/// `error` member, a CSV `#error` record). Only when that is impossible — the reader was too
/// slow for the deadline — does the stream end with an `Err`, after which an HTTP server should
/// abort the response rather than end it cleanly.
pub struct Body {
    chunks: mpsc::Receiver<Bytes>,
    end: Option<oneshot::Receiver<End>>,
    outcome: Option<Outcome>,
}

impl Body {
    pub(crate) fn new(chunks: mpsc::Receiver<Bytes>, end: oneshot::Receiver<End>) -> Self {
        Self {
            chunks,
            end: Some(end),
            outcome: None,
        }
    }

    /// How the run ended, once the stream has ended without an `Err`: the rows written and the
    /// error written into the document, if any. `None` before that. A job runner that keeps no
    /// rows reads it instead of parsing the document.
    ///
    /// ```
    /// # async fn demo(pool: sqlx::PgPool) -> sqlpass::Result<()> {
    /// use futures_util::StreamExt;
    ///
    /// let sql = "select 1 / (n - 2) from generate_series(1, 3) n"; // fails on its second row
    /// let mut body = sqlpass::run(&pool, sql, sqlpass::Options::default()).await?.body;
    /// while let Some(chunk) = body.next().await {
    ///     chunk?;
    /// }
    /// assert_eq!(body.outcome().and_then(|o| o.error.as_deref()), Some("division by zero"));
    /// # Ok(()) }
    /// ```
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
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
                        match result {
                            Ok(End::Failed(e)) => Poll::Ready(Some(Err(e))),
                            Ok(End::Finished(outcome)) => {
                                self.outcome = Some(outcome);
                                Poll::Ready(None)
                            }
                            Err(_) => Poll::Ready(None),
                        }
                    }
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Ready(None),
            },
        }
    }
}

use std::future::Future as _;
