//! One attempt of `Pool::run`: the caller's closure on one connection.

use tracing::Instrument;

use deadpool_postgres::ClientWrapper;

use super::{
    Attempts, Failure, Outcome, abandoned, call_span, kind_after_work, read_only_or_standby, until,
};
use crate::classify::{Fault, classify};
use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::work_error::ClosureError;

impl Pool {
    /// The whole call: attempts on fresh connections within the policy.
    pub(crate) async fn run_loop<T, E, F>(
        &self,
        policy: &RetryPolicy,
        mut work: F,
    ) -> Result<T, E::Returned>
    where
        E: ClosureError,
        F: AsyncFnMut(&ClientWrapper) -> Result<T, E>,
    {
        let span = call_span("run");
        async move {
            let mut attempts = Attempts::new(policy).map_err(E::from_pool)?;
            loop {
                let client = match self.next_client(&mut attempts).await {
                    Ok(Some(client)) => client,
                    Ok(None) => continue,
                    Err(e) => return Err(E::from_pool(e)),
                };
                let outcome = self.run_once(policy, &attempts, &mut work, client).await;
                if let Some(result) = self.after_attempt(&attempts, outcome).await {
                    return result;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn run_once<T, E, F>(
        &self,
        policy: &RetryPolicy,
        attempts: &Attempts,
        work: &mut F,
        mut client: Client,
    ) -> Outcome<T, E>
    where
        E: ClosureError,
        F: AsyncFnMut(&ClientWrapper) -> Result<T, E>,
    {
        let (timeout, deadline) = self.attempt_bound(policy);
        let generation = client.generation();
        client.set_busy(true);
        let e = match until(deadline, work(&client)).await {
            Err(()) => return Outcome::Retry(Failure::pool(abandoned(timeout))),
            Ok(Ok(v)) => {
                client.set_busy(false);
                return Outcome::Done(v);
            }
            Ok(Err(e)) => e,
        };
        let Some(pg) = e.postgres() else {
            // The closure's own error, no database error inside.
            client.set_busy(false);
            let verdict = Error::new(ErrorKind::Query, "the closure returned an error of its own");
            return Outcome::Fail(Failure::work(verdict, e));
        };
        let mut fault = classify(pg);
        if fault == Fault::ReadOnly {
            fault = read_only_or_standby(&client).await;
        }
        if !fault.is_connection_level() {
            // The caller's own error: never retried by `run`.
            client.set_busy(false);
            let verdict = Error::verdict(ErrorKind::Query, fault, pg);
            return Outcome::Fail(Failure::work(verdict, e));
        }
        let verdict = Error::verdict(kind_after_work(fault), fault, pg);
        drop(client);
        self.after_fault(attempts, generation, fault).await;
        Outcome::Retry(Failure::work(verdict, e))
    }
}
