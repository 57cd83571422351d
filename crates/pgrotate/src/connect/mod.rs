//! One connect: the target's bound (the connect timeout per host, never
//! past the caller's deadline), TLS through the observing connector or a
//! plaintext socket of the pool's own, the watch's test connection, and
//! what a failed connect means; closing a connection with work still on
//! it in `stop`.

use std::sync::Arc;
use std::time::Duration;

use crate::classify::{Fault, classify};
use crate::error::{Error, ErrorKind, describe_postgres};
use crate::generation::Generation;
use crate::target::Target;
use crate::wire::{Observed, Wire};

mod pulse;
mod stop;

pub(crate) use pulse::Pulse;
pub(crate) use stop::stop_in_background;

const TARGET: &str = "pgrotate::connect";

/// What a cancel request for one connection needs.
#[derive(Clone)]
pub(crate) enum Canceller {
    Tls(crate::wire::ObservingTls),
    Plain,
}

/// Opens one connection with `generation`'s target within its bound: each
/// host gets its connect timeout (tokio-postgres bounds the TCP connect to
/// each; the whole, TLS and authentication included, gets that much per
/// host), and never past `deadline`.
pub(crate) async fn open_bounded(
    generation: &Generation,
    deadline: tokio::time::Instant,
) -> Result<Opened, ConnectFailed> {
    let bound = bound(&generation.target)
        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    tokio::time::timeout(bound, open(generation))
        .await
        .map_err(|_| ConnectFailed::TimedOut(bound))?
        .map_err(ConnectFailed::Postgres)
}

/// A connect's bound: the connect timeout for each host of the URL.
fn bound(target: &Target) -> Duration {
    let hosts = target.config.get_hosts().len().max(1) as u32;
    target
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10))
        .saturating_mul(hosts)
}

/// A test connection with `target`: connect and one empty query, within
/// the connect timeout.
pub(crate) async fn probe(target: &Target) -> Result<(), Error> {
    let bound = bound(target);
    let attempt = async {
        let (client, connection) = target.config.connect(target.tls.clone()).await?;
        let task = tokio::spawn(connection);
        let r = client.simple_query("").await.map(|_| ());
        drop(client);
        let _ = task.await;
        r
    };
    let failed = match tokio::time::timeout(bound, attempt).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => ConnectFailed::Postgres(e),
        Err(_) => ConnectFailed::TimedOut(bound),
    };
    Err(failed.into_error(ErrorKind::Connect))
}

/// Why one connect failed.
pub(crate) enum ConnectFailed {
    Postgres(tokio_postgres::Error),
    /// TCP, TLS, authentication and (in pooler mode) the check round trip
    /// together took longer than the connect timeout. tokio-postgres's own
    /// `connect_timeout` bounds only the TCP connect; a partition after it
    /// (a TLS handshake that never answers) would hang forever.
    TimedOut(Duration),
    /// The caller's `after_connect` hook failed (its error says how).
    Hook(Error),
}

impl ConnectFailed {
    pub(crate) fn fault(&self) -> Fault {
        match self {
            ConnectFailed::Postgres(e) => crate::classify::classify_connect(e),
            ConnectFailed::TimedOut(_) => Fault::Unreachable,
            // Returned as it is: no refetch, no outage.
            ConnectFailed::Hook(_) => Fault::CallersError,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            ConnectFailed::Postgres(e) => describe_postgres(e),
            ConnectFailed::TimedOut(d) => format!(
                "no answer within the connect timeout of {}",
                crate::time::fmt_duration(*d)
            ),
            ConnectFailed::Hook(e) => e.to_string(),
        }
    }

    /// No server answered: refused, no answer in time, shutting down or
    /// starting. Not a TLS failure (a server answered, and the same
    /// settings will fail again).
    pub(crate) fn is_outage(&self) -> bool {
        match self {
            ConnectFailed::TimedOut(_) => true,
            ConnectFailed::Hook(_) => false,
            ConnectFailed::Postgres(e) => {
                classify(e).worth_one_refetch() && crate::tls::describe_failure(e).is_none()
            }
        }
    }

    pub(crate) fn into_error(self, kind: ErrorKind) -> Error {
        let fault = self.fault();
        let outage = self.is_outage();
        let e = match self {
            ConnectFailed::Postgres(e) => Error::postgres(kind, fault, e),
            ConnectFailed::TimedOut(_) => Error::new(kind, self.describe()),
            ConnectFailed::Hook(e) => return e,
        };
        if outage { e.into_outage() } else { e }
    }
}

/// A connection just opened.
pub(crate) struct Opened {
    pub(crate) client: tokio_postgres::Client,
    pub(crate) wire: Arc<Wire>,
    pub(crate) canceller: Canceller,
    /// Its connection task, to end at once a connection closed with work
    /// still running on it (the task would otherwise read that work's
    /// answer to its end, however long it takes).
    pub(crate) task: tokio::task::AbortHandle,
    /// How far the connection task has come: see [`Pulse::flushed`].
    pub(crate) pulse: Arc<Pulse>,
}

/// Opens one connection with `generation`'s target, its protocol observed
/// (TLS: through the connector; plaintext: on a socket the pool opens).
async fn open(generation: &Generation) -> Result<Opened, tokio_postgres::Error> {
    let target = &generation.target;
    let id = generation.id;
    let opened = match target.sslmode {
        crate::tls::SslMode::Disable => open_plain(&target.config, id).await?,
        crate::tls::SslMode::Prefer => {
            // TLS if the server offers it, else plaintext — each on a stream
            // the pool observes (tokio-postgres's own fallback would hide
            // the plaintext one).
            let mut tls_only = target.config.clone();
            tls_only.ssl_mode(tokio_postgres::config::SslMode::Require);
            match open_tls(&tls_only, target, id).await {
                Err(e) if crate::tls::refused_tls(&e) => {
                    let mut plain = target.config.clone();
                    plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
                    open_plain(&plain, id).await?
                }
                other => other?,
            }
        }
        _ => open_tls(&target.config, target, id).await?,
    };
    if target.pooler {
        // Through PgBouncer a connect succeeds even while its logins to
        // the server fail: only a round trip proves the connection.
        opened.client.simple_query("select 1").await?;
    }
    Ok(opened)
}

fn spawn_connection<S, T>(
    connection: tokio_postgres::Connection<S, T>,
    id: u64,
) -> (tokio::task::AbortHandle, Arc<Pulse>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use std::future::Future;
    let pulse = Arc::new(Pulse::default());
    let beat = pulse.clone();
    let mut connection = Box::pin(connection);
    let noting = std::task::Waker::from(beat.clone());
    let task = tokio::spawn(async move {
        let ended = std::future::poll_fn(|cx| {
            beat.before_poll(cx.waker());
            let seen = beat.asked.load(std::sync::atomic::Ordering::Acquire);
            let r = connection
                .as_mut()
                .poll(&mut std::task::Context::from_waker(&noting));
            beat.after_poll(seen, r.is_ready());
            r
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(target: TARGET, generation = id, error = %describe_postgres(&e), "connection ended");
        }
    })
    .abort_handle();
    (task, pulse)
}

/// The startup and login on a plaintext stream of the pool's own.
async fn startup<S>(
    config: &tokio_postgres::Config,
    stream: S,
    id: u64,
) -> Result<
    (
        tokio_postgres::Client,
        (tokio::task::AbortHandle, Arc<Pulse>),
    ),
    tokio_postgres::Error,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await?;
    Ok((client, spawn_connection(connection, id)))
}

/// A TLS connect, observed through the connector.
async fn open_tls(
    config: &tokio_postgres::Config,
    target: &Target,
    id: u64,
) -> Result<Opened, tokio_postgres::Error> {
    let tls = target.tls.clone();
    let slot = tls.wire_slot();
    let (client, connection) = config.connect(tls).await?;
    let (task, pulse) = spawn_connection(connection, id);
    let wire = slot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .unwrap_or_else(Wire::unobserved);
    Ok(Opened {
        client,
        wire,
        canceller: Canceller::Tls(target.tls.clone()),
        task,
        pulse,
    })
}

/// A plaintext connect on a socket of the pool's own, so its protocol can
/// be observed: each host of the URL in turn (TCP or a Unix socket
/// directory), the next one when a host cannot be reached or refuses the
/// login, and — as tokio-postgres does — the next one when
/// `target_session_attrs=read-write` and the server is read-only.
async fn open_plain(
    config: &tokio_postgres::Config,
    id: u64,
) -> Result<Opened, tokio_postgres::Error> {
    use tokio_postgres::config::{Host, TargetSessionAttrs};
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let per_host = config
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(10));
    let mut last: Option<tokio_postgres::Error> = None;
    for (i, host) in hosts.iter().enumerate() {
        let port = ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432);
        let wire = Arc::new(Wire::default());
        let connected = match host {
            Host::Tcp(name) => {
                let tcp = tokio::time::timeout(
                    per_host,
                    tokio::net::TcpStream::connect((name.as_str(), port)),
                );
                let Ok(Ok(stream)) = tcp.await else { continue };
                let _ = stream.set_nodelay(true);
                if config.get_keepalives() {
                    let keepalive =
                        socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                }
                startup(config, Observed::new(stream, wire.clone()), id).await
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let unix = tokio::time::timeout(per_host, tokio::net::UnixStream::connect(&path));
                let Ok(Ok(stream)) = unix.await else { continue };
                startup(config, Observed::new(stream, wire.clone()), id).await
            }
        };
        let (client, (task, pulse)) = match connected {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
            let read_only = client
                .simple_query("SHOW transaction_read_only")
                .await?
                .into_iter()
                .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("on")));
            if read_only {
                continue;
            }
        }
        return Ok(Opened {
            client,
            wire,
            canceller: Canceller::Plain,
            task,
            pulse,
        });
    }
    if let Some(e) = last {
        return Err(e);
    }
    // No host could be reached (or none was read-write): tokio-postgres's
    // own connect makes the error it would have made.
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let (task, pulse) = spawn_connection(connection, id);
    Ok(Opened {
        client,
        wire: Wire::unobserved(),
        canceller: Canceller::Plain,
        task,
        pulse,
    })
}
