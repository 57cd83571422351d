//! Pool-level statements: tokio-postgres `Client`'s statement methods, with
//! the same names and parameters, on the [`Pool`] itself. No closure, so
//! nothing to make `Send` in a handler; each call checks out a connection,
//! runs one statement and hands the connection back.
//!
//! A statement is retried on a fresh connection only when its failure
//! proves it did not run (see the rule in `exec/statement.rs`): reads and
//! writes both survive a rotation, and a write is never applied twice.
//! Otherwise the call fails with [`ErrorKind::OutcomeUnknown`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use deadpool_postgres::ClientWrapper;
use futures_core::Stream;
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage, Statement};

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::exec::statement::Call;
use crate::pool::Pool;

/// The statement for `sql` on this connection: from its statement cache,
/// or prepared afresh in pooler mode (PgBouncer keeps a named statement
/// only within one transaction).
async fn prepare(
    pooler: bool,
    client: &ClientWrapper,
    sql: &str,
) -> Result<Statement, tokio_postgres::Error> {
    if pooler {
        client.prepare(sql).await
    } else {
        client.prepare_cached(sql).await
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// How many statements' parameter types a pool keeps (pooler mode).
const MAX_TYPED: usize = 1000;

/// In pooler mode, the parameter types of each statement the pool ran,
/// learned once: the statement then runs unnamed (`query_typed`), in one
/// round trip, as PgBouncer in transaction mode requires.
#[derive(Debug, Default)]
pub(crate) struct ParamTypes(Mutex<HashMap<String, Arc<[Type]>>>);

impl ParamTypes {
    fn get(&self, sql: &str) -> Option<Arc<[Type]>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sql)
            .cloned()
    }

    fn keep(&self, sql: &str, types: Arc<[Type]>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() < MAX_TYPED {
            map.insert(sql.to_string(), types);
        }
    }
}

/// Learns the parameter types of `sql` through a transaction-mode pooler:
/// prepared and closed inside `BEGIN` … `ROLLBACK`, so all of it happens on
/// one server connection and no named statement is left behind there.
async fn learn_types(
    cache: &ParamTypes,
    slot: &OnceLock<Arc<[Type]>>,
    client: &ClientWrapper,
    sql: &str,
) -> Result<(), tokio_postgres::Error> {
    if slot.get().is_some() {
        return Ok(());
    }
    if let Some(types) = cache.get(sql) {
        let _ = slot.set(types);
        return Ok(());
    }
    client.batch_execute("BEGIN").await?;
    let prepared = client.prepare(sql).await;
    let learned = prepared.map(|stmt| Arc::<[Type]>::from(stmt.params()));
    // The statement's Close went out before this, inside the transaction.
    let ended = client.batch_execute("ROLLBACK").await;
    let types = learned?;
    ended?;
    cache.keep(sql, types.clone());
    let _ = slot.set(types);
    Ok(())
}

/// The parameters with the types learned, when they match in number (when
/// they do not, the named path lets tokio-postgres say so).
fn typed<'a>(
    params: impl ExactSizeIterator<Item = &'a (dyn ToSql + Sync)>,
    types: Option<&Arc<[Type]>>,
) -> Option<Vec<(&'a (dyn ToSql + Sync), Type)>> {
    let types = types?;
    (params.len() == types.len()).then(|| params.zip(types.iter().cloned()).collect())
}

/// What a statement with parameters returns.
#[derive(Clone, Copy)]
enum Rows {
    All,
    One,
    Opt,
    Count,
}

/// The result of a [`Prepared`] call, by [`Rows`].
enum Answer {
    All(Vec<Row>),
    One(Row),
    Opt(Option<Row>),
    Count(u64),
}

/// `query`, `query_one`, `query_opt`, `execute`: a prepared (cached)
/// statement with parameters.
struct Prepared<'a> {
    /// In pooler mode: where the parameter types are learned.
    pooler: Option<&'a ParamTypes>,
    types: OnceLock<Arc<[Type]>>,
    sql: &'a str,
    params: Params<'a>,
    rows: Rows,
}

impl Call for Prepared<'_> {
    type Output = Answer;

    async fn setup(&self, c: &ClientWrapper) -> Result<(), tokio_postgres::Error> {
        match self.pooler {
            Some(cache) => learn_types(cache, &self.types, c, self.sql).await,
            None => Ok(()),
        }
    }

    async fn call(&self, c: &ClientWrapper) -> Result<Answer, tokio_postgres::Error> {
        if let Some(params) = typed(self.params.iter().copied(), self.types.get()) {
            // Pooler mode: unnamed, one round trip.
            let sql = self.sql;
            return Ok(match self.rows {
                Rows::All => Answer::All(c.query_typed(sql, &params).await?),
                Rows::One => Answer::One(c.query_typed_one(sql, &params).await?),
                Rows::Opt => Answer::Opt(c.query_typed_opt(sql, &params).await?),
                Rows::Count => Answer::Count(c.execute_typed(sql, &params).await?),
            });
        }
        let stmt = prepare(self.pooler.is_some(), c, self.sql).await?;
        Ok(match self.rows {
            Rows::All => Answer::All(c.query(&stmt, self.params).await?),
            Rows::One => Answer::One(c.query_one(&stmt, self.params).await?),
            Rows::Opt => Answer::Opt(c.query_opt(&stmt, self.params).await?),
            Rows::Count => Answer::Count(c.execute(&stmt, self.params).await?),
        })
    }
}

/// `simple_query` (`rows`) and `batch_execute`.
struct Simple<'a> {
    sql: &'a str,
    rows: bool,
}

impl Call for Simple<'_> {
    type Output = Vec<SimpleQueryMessage>;

    async fn call(
        &self,
        c: &ClientWrapper,
    ) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        if self.rows {
            c.simple_query(self.sql).await
        } else {
            c.batch_execute(self.sql).await.map(|()| Vec::new())
        }
    }
}

/// `query_typed`.
struct Typed<'a> {
    sql: &'a str,
    params: &'a [(&'a (dyn ToSql + Sync), Type)],
}

impl Call for Typed<'_> {
    type Output = Vec<Row>;

    async fn call(&self, c: &ClientWrapper) -> Result<Vec<Row>, tokio_postgres::Error> {
        c.query_typed(self.sql, self.params).await
    }
}

/// `query_raw`: the parameters collected once, lent to every attempt.
struct Raw<'a, P> {
    pooler: Option<&'a ParamTypes>,
    types: OnceLock<Arc<[Type]>>,
    sql: &'a str,
    params: Vec<P>,
}

impl<P: BorrowToSql + Sync> Call for Raw<'_, P> {
    type Output = tokio_postgres::RowStream;

    async fn setup(&self, c: &ClientWrapper) -> Result<(), tokio_postgres::Error> {
        match self.pooler {
            Some(cache) => learn_types(cache, &self.types, c, self.sql).await,
            None => Ok(()),
        }
    }

    async fn call(
        &self,
        c: &ClientWrapper,
    ) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
        if let Some(types) = self.types.get()
            && types.len() == self.params.len()
        {
            // Pooler mode: unnamed, one round trip.
            let params = self
                .params
                .iter()
                .map(BorrowToSql::borrow_to_sql)
                .zip(types.iter().cloned());
            return c.query_typed_raw(self.sql, params).await;
        }
        let stmt = prepare(self.pooler.is_some(), c, self.sql).await?;
        c.query_raw(&stmt, self.params.iter().map(BorrowToSql::borrow_to_sql))
            .await
    }
}

/// `query_typed_raw`.
struct TypedRaw<'a, P> {
    sql: &'a str,
    params: Vec<(P, Type)>,
}

impl<P: BorrowToSql + Sync> Call for TypedRaw<'_, P> {
    type Output = tokio_postgres::RowStream;

    async fn call(
        &self,
        c: &ClientWrapper,
    ) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
        let typed = self
            .params
            .iter()
            .map(|(p, t)| (p.borrow_to_sql(), t.clone()));
        c.query_typed_raw(self.sql, typed).await
    }
}

/// An answer of the kind asked for (each [`Rows`] gets its own [`Answer`]).
fn unexpected() -> Error {
    Error::new(
        ErrorKind::Query,
        "internal: a statement answered in another form than asked",
    )
}

/// The statements. Each takes the SQL as `&str`: a [`Statement`] belongs
/// to the connection that prepared it, and each call may get another one.
/// The pool prepares each statement once per connection and keeps it in
/// that connection's statement cache (deadpool-postgres's), so a repeated
/// call costs one round trip, as `prepare_cached` + `query` does.
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

    async fn prepared(&self, sql: &str, params: Params<'_>, rows: Rows) -> Result<Answer, Error> {
        let call = Prepared {
            pooler: self.pooler(),
            types: OnceLock::new(),
            sql,
            params,
            rows,
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
        match self.prepared(statement, params, Rows::All).await? {
            Answer::All(rows) => Ok(rows),
            _ => Err(unexpected()),
        }
    }

    /// Runs a statement that returns exactly one row, as
    /// [`tokio_postgres::Client::query_one`]: any other number of rows is
    /// an error of kind [`ErrorKind::Query`].
    pub async fn query_one(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        match self.prepared(statement, params, Rows::One).await? {
            Answer::One(row) => Ok(row),
            _ => Err(unexpected()),
        }
    }

    /// Runs a statement that returns zero or one row, as
    /// [`tokio_postgres::Client::query_opt`].
    pub async fn query_opt(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        match self.prepared(statement, params, Rows::Opt).await? {
            Answer::Opt(row) => Ok(row),
            _ => Err(unexpected()),
        }
    }

    /// Runs a statement and returns the number of rows it affected, as
    /// [`tokio_postgres::Client::execute`]. Returns only once the server
    /// has confirmed the end of the statement's transaction.
    pub async fn execute(
        &self,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        match self.prepared(statement, params, Rows::Count).await? {
            Answer::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
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
        let call = Raw {
            pooler: self.pooler(),
            types: OnceLock::new(),
            sql: statement,
            params: params.into_iter().collect(),
        };
        let (rows, client) = self.statement_streaming(&call).await?;
        Ok(RowStream::new(rows, client))
    }

    /// Runs statements in the simple query protocol, as
    /// [`tokio_postgres::Client::simple_query`]. Several statements in one
    /// string run in one implicit transaction; a failure after one of them
    /// completed is [`ErrorKind::OutcomeUnknown`] (one may have committed
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
        let call = TypedRaw {
            sql: statement,
            params: params.into_iter().collect(),
        };
        let (rows, client) = self.statement_streaming(&call).await?;
        Ok(RowStream::new(rows, client))
    }
}

/// The rows of [`Pool::query_raw`] or [`Pool::query_typed_raw`], as a
/// [`Stream`](futures_core::Stream) of [`Row`]s, holding the connection
/// until the last one.
pub struct RowStream {
    rows: Pin<Box<tokio_postgres::RowStream>>,
    /// Busy while rows are left; handed back at the end.
    client: Option<Client>,
}

impl RowStream {
    fn new(rows: tokio_postgres::RowStream, client: Client) -> RowStream {
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
