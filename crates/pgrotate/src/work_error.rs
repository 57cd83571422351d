//! The error a `run` or `transaction` closure returns: tokio-postgres's,
//! pgrotate's, or the application's own ([`WorkError`]), and what the call
//! returns for each.

use crate::error::Error;

/// An application's own error type, returned from the closures of
/// [`Pool::run`](crate::Pool::run) and
/// [`Pool::transaction`](crate::Pool::transaction) (as sqlx asks
/// `E: From<sqlx::Error>`).
///
/// - `From<pgrotate::Error>`: how a failure of the pool itself (no
///   connection in time, the retries spent, a commit of unknown outcome)
///   reaches the caller in this type.
/// - [`WorkError::as_postgres`]: the database error inside, if there is
///   one, so the pool's fault table can tell a lost connection (retried on
///   a fresh connection) from the caller's own error (returned as it is,
///   the transaction rolled back, never retried).
///
/// An error of this type comes back from the call unchanged.
///
/// ```
/// #[derive(Debug)]
/// enum AppError {
///     Db(pgrotate::Error),
///     Refused(&'static str),
/// }
/// impl From<pgrotate::Error> for AppError {
///     fn from(e: pgrotate::Error) -> AppError {
///         AppError::Db(e)
///     }
/// }
/// // So that `?` on a tokio-postgres call works inside the closure.
/// impl From<tokio_postgres::Error> for AppError {
///     fn from(e: tokio_postgres::Error) -> AppError {
///         AppError::Db(e.into())
///     }
/// }
/// impl pgrotate::WorkError for AppError {
///     fn as_postgres(&self) -> Option<&tokio_postgres::Error> {
///         match self {
///             AppError::Db(e) => e.as_postgres(),
///             AppError::Refused(_) => None,
///         }
///     }
/// }
///
/// # async fn transfer(pool: pgrotate::Pool) -> Result<(), AppError> {
/// pool.transaction(async move |tx| {
///     let row = tx
///         .query_one("update accounts set balance = balance - 10 where id = 1 returning balance", &[])
///         .await?;
///     if row.get::<_, i64>(0) < 0 {
///         // Rolled back, returned as it is, never retried.
///         return Err(AppError::Refused("insufficient funds"));
///     }
///     Ok(())
/// })
/// .await
/// # }
/// ```
pub trait WorkError: From<Error> {
    /// The tokio-postgres error this error holds, if any.
    fn as_postgres(&self) -> Option<&tokio_postgres::Error>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio_postgres::Error {}
    impl Sealed for crate::Error {}
    impl<E: crate::WorkError> Sealed for E {}
    impl Sealed for super::NoWork {}
}

/// The "closure error" of a pool-level statement, which has no closure:
/// its failures are the pool's alone, so the retry loops of statements and
/// of `run`/`transaction` end the same way.
pub(crate) enum NoWork {}

impl ClosureError for NoWork {
    type Returned = Error;

    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match *self {}
    }

    fn returned(self, _: Error) -> Error {
        match self {}
    }

    fn from_pool(e: Error) -> Error {
        e
    }
}

/// What a `run` or `transaction` closure may fail with, and what the call
/// then returns ([`ClosureError::Returned`]):
///
/// | the closure's error       | the call returns                           |
/// |---------------------------|--------------------------------------------|
/// | `tokio_postgres::Error`   | [`pgrotate::Error`](crate::Error)          |
/// | [`pgrotate::Error`](crate::Error) | [`pgrotate::Error`](crate::Error) |
/// | any `E:` [`WorkError`]    | `E`                                        |
///
/// Implemented for exactly these; implement [`WorkError`] for an error
/// type of your own.
pub trait ClosureError: sealed::Sealed + Sized {
    /// The error type of the call.
    type Returned;

    /// The tokio-postgres error inside, for the fault table.
    #[doc(hidden)]
    fn postgres(&self) -> Option<&tokio_postgres::Error>;

    /// This error as the call returns it. `verdict` is the pool's reading
    /// of it: kind, fault and attempts, in pgrotate's words.
    #[doc(hidden)]
    fn returned(self, verdict: Error) -> Self::Returned;

    /// A failure of the pool itself, as the call returns it.
    #[doc(hidden)]
    fn from_pool(e: Error) -> Self::Returned;
}

impl ClosureError for tokio_postgres::Error {
    type Returned = Error;

    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        Some(self)
    }

    fn returned(self, verdict: Error) -> Error {
        verdict.with_cause(self)
    }

    fn from_pool(e: Error) -> Error {
        e
    }
}

impl ClosureError for Error {
    type Returned = Error;

    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        self.as_postgres()
    }

    fn returned(self, verdict: Error) -> Error {
        // A database error converted with `?` is read again by the pool (a
        // lost connection is not the caller's error); any other error of
        // the pool's comes back as the closure returned it.
        if self.as_postgres().is_some() {
            verdict.with_cause_of(self)
        } else {
            self
        }
    }

    fn from_pool(e: Error) -> Error {
        e
    }
}

impl<E: WorkError> ClosureError for E {
    type Returned = E;

    fn postgres(&self) -> Option<&tokio_postgres::Error> {
        self.as_postgres()
    }

    fn returned(self, _verdict: Error) -> E {
        self
    }

    fn from_pool(e: Error) -> E {
        E::from(e)
    }
}
