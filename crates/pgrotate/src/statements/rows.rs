//! [`RowStream`]: the rows of a pool-level `query_raw`, holding their
//! connection until the last one.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio_postgres::Row;

use crate::client::Client;
use crate::error::{Error, ErrorKind};

/// The rows of [`Pool::query_raw`](crate::Pool::query_raw) or [`Pool::query_typed_raw`](crate::Pool::query_typed_raw), as a
/// [`Stream`](futures_core::Stream) of [`Row`]s, holding the connection
/// until the last one.
pub struct RowStream {
    rows: Pin<Box<tokio_postgres::RowStream>>,
    /// Busy while rows are left; handed back at the end.
    client: Option<Client>,
}

impl RowStream {
    pub(super) fn new(rows: tokio_postgres::RowStream, client: Client) -> RowStream {
        RowStream {
            rows: Box::pin(rows),
            client: Some(client),
        }
    }

    /// The number of rows the statement affected, once the stream has
    /// ended (as [`tokio_postgres::RowStream::rows_affected`]).
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows.rows_affected()
    }
}

impl Stream for RowStream {
    type Item = Result<Row, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.rows.as_mut().poll_next(cx);
        match next {
            Poll::Ready(None) => {
                // Every row read: the connection is clean again.
                if let Some(mut client) = self.client.take() {
                    client.set_busy(false);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // Not retried: rows may have been handed out already. The
                // connection stays busy and is closed with the stream.
                let e = Error::from(e);
                let e = if e.kind() == ErrorKind::Query {
                    e
                } else {
                    e.with_detail_prefix("while reading the rows")
                };
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(row))) => Poll::Ready(Some(Ok(row))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for RowStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("rows_affected", &self.rows_affected())
            .finish()
    }
}
