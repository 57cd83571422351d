//! Pool-level statements: tokio-postgres `Client`'s statement methods, with
//! the same names and parameters, on the [`Pool`] itself. No closure, so
//! nothing to make `Send` in a handler. `query`, `query_one`, `query_opt`,
//! `execute` and `query_typed` are pipelined on connections shared with
//! other callers (`crate::pipeline`); the others, and every call in pooler
//! mode or with a pipeline depth of 1, check out a connection of their own.
//!
//! A statement is retried on a fresh connection only when its failure
//! proves it did not run (the rules in `exec/statement.rs` and
//! `pipeline/lane.rs`): reads and writes both survive a rotation, and a
//! write is never applied twice. Otherwise the call fails with
//! [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown).

mod calls;
mod rows;

use std::marker::PhantomData;
use std::sync::OnceLock;

use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage};

use crate::error::Error;
use crate::exec::Statement;
use crate::pool::Pool;
use calls::{All, Count, One, Opt, Prepared, Raw, Simple, Typed, TypedRaw};
pub(crate) use calls::{ParamTypes, Params, Rows};
pub use rows::RowStream;

/// The statements. Each takes the SQL as `&str`: a [`Statement`](tokio_postgres::Statement) belongs
/// to the connection that prepared it, and each call may get another one.
/// The pool prepares each statement once per connection and keeps it in
/// that connection's statement cache (deadpool-postgres's), so a repeated
/// call costs one round trip, as `prepare_cached` + `query` does.
/// `COPY … FROM STDIN` / `TO STDOUT` is refused with
/// [`ErrorKind::Query`](crate::ErrorKind::Query) before it is sent (its
/// data needs the connection after the answer): use [`Pool::get`] and the
/// client's `copy_in` / `copy_out`. So are `DISCARD ALL` and `DEALLOCATE`
/// (they drop the statements the pool prepared on the connection), and,
/// pipelined, what would leave session state for the callers sharing it
/// (`BEGIN`, `SET`, `RESET`, `LISTEN`: see the crate docs).
///
/// ```no_run
/// # async fn demo(pool: pgrotate::Pool) -> Result<(), pgrotate::Error> {
/// let row = pool.query_one("select name from users where id = $1", &[&7i64]).await?;
/// let name: String = row.get(0);
/// let inserted = pool
///     .execute("insert into audit (what) values ($1)", &[&"login"])
///     .await?;
/// match pool.execute("update accounts set balance = balance - 1 where id = 1", &[]).await {
///     Ok(_) => {}
///     // The connection was lost after the statement was sent: it may have run.
///     Err(e) if e.is_outcome_unknown() => { /* look before doing it again */ }
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
impl Pool {
    /// In pooler mode, the pool's cache of parameter types.
    fn pooler(&self) -> Option<&ParamTypes> {
        self.inner
            .pooler_query_timeout
            .is_some()
            .then_some(&self.inner.param_types)
    }

    /// A statement with parameters: pipelined on a shared connection, or
    /// (pipelining off, pooler mode) on a connection of its own.
    async fn with_params<R: Rows>(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<R::Output, Error> {
        if self.inner.lanes.enabled() {
            let stmt = Statement {
                sql,
                types: &[],
                params,
            };
            return self.pipelined::<R>(stmt).await;
        }
        let call = Prepared::<R> {
            pooler: self.pooler(),
            types: OnceLock::new(),
            sql,
            params,
            rows: PhantomData,
        };
        self.statement(&call).await
    }

    /// Runs a statement and returns its rows, as
    /// [`tokio_postgres::Client::query`].
    pub async fn query(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.with_params::<All>(statement, params).await
    }

    /// Runs a statement that returns exactly one row, as
    /// [`tokio_postgres::Client::query_one`]: any other number of rows is
    /// an error of kind [`ErrorKind::Query`](crate::ErrorKind::Query).
    pub async fn query_one(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        self.with_params::<One>(statement, params).await
    }

    /// Runs a statement that returns zero or one row, as
    /// [`tokio_postgres::Client::query_opt`].
    pub async fn query_opt(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        self.with_params::<Opt>(statement, params).await
    }

    /// Runs a statement and returns the number of rows it affected, as
    /// [`tokio_postgres::Client::execute`]. Returns only once the server
    /// has confirmed the end of the statement's transaction.
    pub async fn execute(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        self.with_params::<Count>(statement, params).await
    }

    /// Runs a statement and returns its rows as a stream, as
    /// [`tokio_postgres::Client::query_raw`]. The connection stays with the
    /// stream and goes back to the pool when the stream has been read to
    /// its end (dropped earlier, it is closed: the server stops the
    /// statement). Retried only before the first row, under the same rule
    /// as the other statements.
    pub async fn query_raw<P, I>(&self, statement: &str, params: I) -> Result<RowStream, Error>
    where
        P: BorrowToSql + Sync,
        I: IntoIterator<Item = P>,
        I::IntoIter: ExactSizeIterator,
    {
        let params: Vec<P> = params.into_iter().collect();
        let call = Raw {
            pooler: self.pooler(),
            types: OnceLock::new(),
            sql: statement,
            params: &params,
        };
        let (rows, client) = self.statement_streaming(&call).await?;
        Ok(RowStream::new(rows, client))
    }

    /// Runs statements in the simple query protocol, as
    /// [`tokio_postgres::Client::simple_query`]. Several statements in one
    /// string run in one implicit transaction; a failure after one of them
    /// completed is [`ErrorKind::OutcomeUnknown`](crate::ErrorKind::OutcomeUnknown) (one may have committed
    /// itself), never retried.
    pub async fn simple_query(&self, query: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.statement(&Simple {
            sql: query,
            rows: true,
        })
        .await
    }

    /// Runs statements in the simple query protocol, returning no rows, as
    /// [`tokio_postgres::Client::batch_execute`].
    pub async fn batch_execute(&self, query: &str) -> Result<(), Error> {
        self.statement(&Simple {
            sql: query,
            rows: false,
        })
        .await
        .map(drop)
    }

    /// Runs an unnamed statement with parameters of the given types, as
    /// [`tokio_postgres::Client::query_typed`]: one round trip, no prepared
    /// statement (works through PgBouncer in transaction mode).
    pub async fn query_typed(
        &self,
        statement: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        if self.inner.lanes.enabled() {
            // Shared connections run prepared statements only (each sent
            // whole in one poll, so its place on the connection is known):
            // prepared once per connection with the types given, cached.
            let (values, types): (Vec<&(dyn ToSql + Sync)>, Vec<Type>) =
                params.iter().cloned().unzip();
            let stmt = Statement {
                sql: statement,
                types: &types,
                params: &values,
            };
            return self.pipelined::<All>(stmt).await;
        }
        self.statement(&Typed {
            sql: statement,
            params,
        })
        .await
    }

    /// [`Pool::query_typed`] with the rows as a stream, as
    /// [`tokio_postgres::Client::query_typed_raw`]; the connection stays
    /// with the stream as for [`Pool::query_raw`].
    pub async fn query_typed_raw<P, I>(
        &self,
        statement: &str,
        params: I,
    ) -> Result<RowStream, Error>
    where
        P: BorrowToSql + Sync,
        I: IntoIterator<Item = (P, Type)>,
    {
        let (params, types): (Vec<P>, Vec<Type>) = params.into_iter().unzip();
        let call = TypedRaw {
            sql: statement,
            params: &params,
            types: &types,
        };
        let (rows, client) = self.statement_streaming(&call).await?;
        Ok(RowStream::new(rows, client))
    }
}
