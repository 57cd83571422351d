//! [`Client`]: a pooled connection, and the guard that keeps a connection
//! abandoned mid-work out of the pool.

use std::fmt;
use std::ops::{Deref, DerefMut};

use deadpool::managed::Object;

use crate::manager::{Connection, Manager};
use crate::metrics::Closed;
use crate::wire::TxStatus;

/// A pooled connection, as deadpool-postgres hands one out: it derefs to
/// deadpool-postgres's [`ClientWrapper`](deadpool_postgres::ClientWrapper)
/// (`prepare_cached`, `prepare_typed_cached`, `transaction`,
/// `build_transaction` with the statement cache), which derefs to
/// [`tokio_postgres::Client`]. It returns to the pool when dropped (and is
/// closed then if the pool moved to a newer generation meanwhile).
///
/// The statement cache belongs to the connection, so a statement prepared
/// once is reused by every later caller of that connection; a connection of
/// a new generation starts with an empty one. In pooler mode
/// ([`PoolBuilder::pooler_mode`](crate::PoolBuilder::pooler_mode)) the cache
/// is emptied every time the connection is handed out: PgBouncer in
/// transaction mode keeps a named statement only within one transaction.
///
/// ```no_run
/// # async fn demo(pool: pgrotate::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let client = pool.get().await?;
/// let stmt = client.prepare_cached("select name from users where id = $1").await?;
/// let row = client.query_one(&stmt, &[&7i64]).await?;
/// let name: String = row.get(0);
/// # Ok(()) }
/// ```
///
/// While `Pool::run` or `Pool::transaction` has work in flight on it, the
/// connection is marked busy; if that work's future is dropped (a timeout,
/// a cancelled request), the connection is closed instead of going back to
/// the pool, so the server rolls back and no other caller inherits a
/// transaction or a query in flight.
pub struct Client {
    obj: Option<Object<Manager>>,
}

impl Client {
    pub(crate) fn new(obj: Object<Manager>) -> Client {
        Client { obj: Some(obj) }
    }

    /// Handed to a caller of `get()`, whose requests the pool does not
    /// see finish (`run` and `transaction` do).
    pub(crate) fn lend(mut self) -> Client {
        self.conn_mut().lent = true;
        self
    }

    fn conn(&self) -> &Connection {
        self.obj
            .as_ref()
            .expect("a Client holds its connection until dropped")
    }

    fn conn_mut(&mut self) -> &mut Connection {
        self.obj
            .as_mut()
            .expect("a Client holds its connection until dropped")
    }

    /// The generation of the URL this connection was opened with.
    pub fn generation(&self) -> u64 {
        self.conn().generation
    }

    /// What the server said on this connection (transaction status,
    /// unanswered requests, `in_hot_standby`).
    pub(crate) fn wire(&self) -> std::sync::Arc<crate::wire::Wire> {
        self.conn().wire.clone()
    }

    /// Marks work in flight (`true`) or finished with the connection in a
    /// clean state (`false`).
    pub(crate) fn set_busy(&mut self, busy: bool) {
        self.conn_mut().busy = busy;
    }

    /// Stops the work on the connection and closes it (see
    /// `Connection::stop`): nothing more is written from now on.
    pub(crate) fn stop(&self) {
        self.conn().stop();
    }

    /// Closes this connection instead of returning it to the pool.
    pub fn discard(mut self) {
        if let Some(obj) = self.obj.take() {
            drop(Object::take(obj));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let Some(obj) = self.obj.take() else { return };
        // A transaction left open (or failed) is closed at once, so no lock
        // is held by a connection waiting in the pool. A request still
        // unanswered is left to the next checkout, which waits briefly for
        // its answer (tokio-postgres itself sends one when a statement is
        // dropped) and cancels it if it does not come.
        let in_transaction = matches!(
            obj.wire.tx_status(),
            TxStatus::InTransaction | TxStatus::Failed
        );
        if obj.busy || in_transaction || !obj.is_current() {
            // Taken out of the pool and dropped: the socket closes and the
            // server rolls back whatever was open or in flight. A connection
            // of an older generation (or past its lifetime) is closed on
            // return the same way.
            crate::metrics::connections_closed(
                obj.stale()
                    .filter(|_| !obj.busy && !in_transaction)
                    .unwrap_or(Closed::Broken),
                1,
            );
            drop(Object::take(obj));
            return;
        }
        if obj.wire.unanswered_work().is_some_and(|n| n > 0)
            && tokio::runtime::Handle::try_current().is_ok()
        {
            // A request still unanswered: its caller dropped it (or its
            // answer is a moment behind). Not left running on an idle
            // connection until somebody checks one out: given a moment,
            // then closed with its work stopped (`Connection::stop`).
            tokio::spawn(async move {
                if obj.left_running().await {
                    crate::metrics::connections_closed(Closed::Broken, 1);
                    drop(Object::take(obj));
                }
                // Otherwise answered meanwhile: back to the pool as `obj`
                // drops here.
            });
            return;
        }
        // A `get()` client goes back at once: its caller may have dropped a
        // request future after its first poll, leaving the request queued
        // inside tokio-postgres, not yet written — the next checkout waits
        // for one whole poll of the connection task first (`leave_clean`),
        // so it sees the request and never inherits it unseen.
        drop(obj);
    }
}

impl Deref for Client {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &deadpool_postgres::ClientWrapper {
        &self.conn().client
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut deadpool_postgres::ClientWrapper {
        &mut self.conn_mut().client
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("generation", &self.generation())
            .field("closed", &self.conn().client.is_closed())
            .finish()
    }
}
