//! The pool-level statements as plain data, one [`Call`] each: what runs
//! on the connection an attempt got, and in pooler mode the parameter types
//! learned once so the statement can run unnamed.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use deadpool_postgres::ClientWrapper;
use tokio_postgres::types::{BorrowToSql, ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage, Statement};

use crate::exec::statement::Call;

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

pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

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
fn typed<'t, I: ExactSizeIterator + 't>(
    params: I,
    types: Option<&'t Arc<[Type]>>,
) -> Option<impl ExactSizeIterator<Item = (I::Item, Type)> + 't> {
    let types = types?;
    (params.len() == types.len()).then(|| params.zip(types.iter().cloned()))
}

/// What a statement with parameters returns: one type per method, each
/// running the statement its way (as a prepared statement, or unnamed with
/// its parameter types given).
pub(crate) trait Rows: Send + Sync + 'static {
    type Output: Send;

    /// Runs the prepared `stmt`.
    fn prepared<'a>(
        c: &'a ClientWrapper,
        stmt: Statement,
        params: Params<'a>,
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;

    /// Runs `sql` unnamed, its parameters' types given (one round trip).
    fn typed<'a>(
        c: &'a ClientWrapper,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;
}

/// `query`: every row.
pub(crate) struct All;
/// `query_one`: exactly one row.
pub(crate) struct One;
/// `query_opt`: zero or one row.
pub(crate) struct Opt;
/// `execute`: the number of rows affected.
pub(crate) struct Count;

impl Rows for All {
    type Output = Vec<Row>;
    async fn prepared(
        c: &ClientWrapper,
        stmt: Statement,
        params: Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        c.query(&stmt, params).await
    }
    async fn typed(
        c: &ClientWrapper,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        c.query_typed(sql, params).await
    }
}

impl Rows for One {
    type Output = Row;
    async fn prepared(
        c: &ClientWrapper,
        stmt: Statement,
        params: Params<'_>,
    ) -> Result<Row, tokio_postgres::Error> {
        c.query_one(&stmt, params).await
    }
    async fn typed(
        c: &ClientWrapper,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Row, tokio_postgres::Error> {
        c.query_typed_one(sql, params).await
    }
}

impl Rows for Opt {
    type Output = Option<Row>;
    async fn prepared(
        c: &ClientWrapper,
        stmt: Statement,
        params: Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        c.query_opt(&stmt, params).await
    }
    async fn typed(
        c: &ClientWrapper,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        c.query_typed_opt(sql, params).await
    }
}

impl Rows for Count {
    type Output = u64;
    async fn prepared(
        c: &ClientWrapper,
        stmt: Statement,
        params: Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        c.execute(&stmt, params).await
    }
    async fn typed(
        c: &ClientWrapper,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, tokio_postgres::Error> {
        c.execute_typed(sql, params).await
    }
}

/// `query`, `query_one`, `query_opt`, `execute` on a connection of their
/// own: a prepared (cached) statement with parameters.
pub(super) struct Prepared<'a, R> {
    /// In pooler mode: where the parameter types are learned.
    pub(super) pooler: Option<&'a ParamTypes>,
    pub(super) types: OnceLock<Arc<[Type]>>,
    pub(super) sql: &'a str,
    pub(super) params: Params<'a>,
    pub(super) rows: PhantomData<R>,
}

impl<R: Rows> Call for Prepared<'_, R> {
    type Output = R::Output;

    fn sql(&self) -> &str {
        self.sql
    }

    async fn setup(&self, c: &ClientWrapper) -> Result<(), tokio_postgres::Error> {
        match self.pooler {
            Some(cache) => learn_types(cache, &self.types, c, self.sql).await,
            None => Ok(()),
        }
    }

    async fn call(&self, c: &ClientWrapper) -> Result<R::Output, tokio_postgres::Error> {
        if let Some(params) = typed(self.params.iter().copied(), self.types.get()) {
            // Pooler mode: unnamed, one round trip.
            let params: Vec<_> = params.collect();
            return R::typed(c, self.sql, &params).await;
        }
        let stmt = prepare(self.pooler.is_some(), c, self.sql).await?;
        R::prepared(c, stmt, self.params).await
    }
}

/// `simple_query` (`rows`) and `batch_execute`.
pub(super) struct Simple<'a> {
    pub(super) sql: &'a str,
    pub(super) rows: bool,
}

impl Call for Simple<'_> {
    type Output = Vec<SimpleQueryMessage>;

    fn sql(&self) -> &str {
        self.sql
    }

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
pub(super) struct Typed<'a> {
    pub(super) sql: &'a str,
    pub(super) params: &'a [(&'a (dyn ToSql + Sync), Type)],
}

impl Call for Typed<'_> {
    type Output = Vec<Row>;

    fn sql(&self) -> &str {
        self.sql
    }

    async fn call(&self, c: &ClientWrapper) -> Result<Vec<Row>, tokio_postgres::Error> {
        c.query_typed(self.sql, self.params).await
    }
}

/// The parameters of `query_raw` / `query_typed_raw`, collected once and
/// lent to every attempt, behind a trait object: a call generic over the
/// parameter type would make the caller's future not `Send` when the
/// parameters borrow locals (`&x as &(dyn ToSql + Sync)`), which the
/// compiler cannot prove for every lifetime.
pub(super) trait RawParams: Sync {
    fn each(&self) -> Box<dyn ExactSizeIterator<Item = &dyn ToSql> + Send + '_>;
}

impl<P: BorrowToSql + Sync> RawParams for Vec<P> {
    fn each(&self) -> Box<dyn ExactSizeIterator<Item = &dyn ToSql> + Send + '_> {
        Box::new(self.iter().map(BorrowToSql::borrow_to_sql))
    }
}

/// `query_raw`.
pub(super) struct Raw<'a> {
    pub(super) pooler: Option<&'a ParamTypes>,
    pub(super) types: OnceLock<Arc<[Type]>>,
    pub(super) sql: &'a str,
    pub(super) params: &'a dyn RawParams,
}

impl Call for Raw<'_> {
    type Output = tokio_postgres::RowStream;

    fn sql(&self) -> &str {
        self.sql
    }

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
        if let Some(params) = typed(self.params.each(), self.types.get()) {
            // Pooler mode: unnamed, one round trip.
            return c.query_typed_raw(self.sql, params).await;
        }
        let stmt = prepare(self.pooler.is_some(), c, self.sql).await?;
        c.query_raw(&stmt, self.params.each()).await
    }
}

/// `query_typed_raw`: the parameters as for `query_raw`, with their types.
pub(super) struct TypedRaw<'a> {
    pub(super) sql: &'a str,
    pub(super) params: &'a dyn RawParams,
    pub(super) types: &'a [Type],
}

impl Call for TypedRaw<'_> {
    type Output = tokio_postgres::RowStream;

    fn sql(&self) -> &str {
        self.sql
    }

    async fn call(
        &self,
        c: &ClientWrapper,
    ) -> Result<tokio_postgres::RowStream, tokio_postgres::Error> {
        let typed = self.params.each().zip(self.types.iter().cloned());
        c.query_typed_raw(self.sql, typed).await
    }
}
