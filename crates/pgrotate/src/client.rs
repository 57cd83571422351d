//! [`Client`]: a pooled connection, and the guard that keeps a connection
//! abandoned mid-work out of the pool.

use std::fmt;
use std::ops::{Deref, DerefMut};

use deadpool::managed::Object;

use crate::manager::{Connection, Manager};

/// A pooled connection. Derefs to [`tokio_postgres::Client`]; returns to the
/// pool when dropped (and is closed then if the pool moved to a newer
/// generation meanwhile).
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

    /// Closes this connection instead of returning it to the pool.
    pub fn discard(mut self) {
        if let Some(obj) = self.obj.take() {
            drop(Object::take(obj));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take()
            && (obj.busy || !obj.is_current())
        {
            // Taken out of the pool and dropped: the socket closes and the
            // server rolls back whatever was in flight. A connection of an
            // older generation (or past its lifetime) is closed on return
            // the same way.
            drop(Object::take(obj));
        }
    }
}

impl Deref for Client {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.conn().client
    }
}

impl DerefMut for Client {
    fn deref_mut(&mut self) -> &mut tokio_postgres::Client {
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
