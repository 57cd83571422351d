//! A local stand-in for the Heroku Platform API's config-vars endpoint, on
//! 127.0.0.1: `GET /apps/{app}/config-vars` with the checks the real one
//! makes (the v3 `Accept` header, the bearer token, the app name), `ETag` /
//! `If-None-Match`, `RateLimit-Remaining`, and scripted answers (a status,
//! headers, a body, a delay) served before the normal ones. Every request is
//! recorded.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pgrotate::Pool;
use pgrotate::source::HerokuApi;
use pgrotate_testing::{Cluster, TestRole};
use tokio::net::TcpListener;
use tokio::sync::Notify;

const V3: &str = "application/vnd.heroku+json; version=3";

/// One request the server saw, and what it answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub accept: Option<String>,
    pub user_agent: Option<String>,
    /// Whether an `Authorization` header was sent (its value is checked by
    /// the server, never kept).
    pub has_authorization: bool,
    pub if_none_match: Option<String>,
    pub status: u16,
    pub etag: Option<String>,
    pub at: Instant,
}

/// An answer served instead of the normal one, once, in order.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Waits this long before answering.
    pub delay: Duration,
}

impl Scripted {
    pub fn status(status: u16) -> Scripted {
        Scripted {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn body(status: u16, body: impl Into<String>) -> Scripted {
        Scripted {
            body: body.into(),
            ..Scripted::status(status)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Scripted {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Scripted {
        self.delay = d;
        self
    }

    /// The Platform API's 429: the account's rate limit reached,
    /// `Retry-After: 1`, `RateLimit-Remaining: 0`.
    pub fn rate_limited() -> Scripted {
        Scripted::body(
            429,
            r#"{"id":"rate_limit","message":"Your account reached the API rate limit"}"#,
        )
        .header("Retry-After", "1")
        .header("RateLimit-Remaining", "0")
    }

    /// The Platform API's 500.
    pub fn server_error() -> Scripted {
        Scripted::body(500, r#"{"id":"internal_server_error"}"#)
    }
}

/// A role of its own on `cluster` and the stand-in for `app` serving its
/// URL as `DATABASE_URL`.
pub async fn role_and_server(
    cluster: &Cluster,
    prefix: &str,
    app: &str,
    token: &str,
) -> (TestRole, ApiServer) {
    let role = cluster.create_role(prefix).await.unwrap();
    let server = ApiServer::start(app, token, &cluster.url(&role)).await;
    (role, server)
}

/// A pool of at most `max_size` connections on `source`, built.
pub async fn pool_of(source: HerokuApi, max_size: usize) -> Pool {
    Pool::builder(source)
        .max_size(max_size)
        .build()
        .await
        .unwrap()
}

/// `heroku pg:credentials:rotate` as the platform does it: a new password,
/// the config var updated, the old sessions reset.
pub async fn rotate(cluster: &Cluster, role: &TestRole, server: &ApiServer) -> TestRole {
    let new = cluster.rotate_password(role).await.unwrap();
    server.set_var("DATABASE_URL", Some(&cluster.url(&new)));
    cluster.terminate_backends(&role.name).await.unwrap();
    new
}

struct State {
    app: String,
    token: String,
    vars: BTreeMap<String, Option<String>>,
    version: u64,
    remaining: u64,
    /// Normal answers wait this long.
    delay: Duration,
    script: VecDeque<Scripted>,
    seen: Vec<Seen>,
}

/// The server. Stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    seen_changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Serves app `app` to bearer token `token`, with `DATABASE_URL` set to
    /// `database_url`.
    pub async fn start(app: &str, token: &str, database_url: &str) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            app: app.into(),
            token: token.into(),
            vars: BTreeMap::from([("DATABASE_URL".to_string(), Some(database_url.to_string()))]),
            version: 1,
            remaining: 4400,
            delay: Duration::ZERO,
            script: VecDeque::new(),
            seen: Vec::new(),
        }));
        let seen_changed = Arc::new(Notify::new());
        let (st, notify) = (state.clone(), seen_changed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (st, notify) = (st.clone(), notify.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (st, notify) = (st.clone(), notify.clone());
                        async move { Ok::<_, Infallible>(answer(&st, &notify, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiServer {
            addr,
            state,
            seen_changed,
            task,
        }
    }

    /// The base URL to hand to `HerokuApi::base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets (or with `None`, nulls) a config var; the ETag changes.
    pub fn set_var(&self, name: &str, value: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        st.vars.insert(name.into(), value.map(String::from));
        st.version += 1;
    }

    /// Removes a config var; the ETag changes.
    pub fn remove_var(&self, name: &str) {
        let mut st = self.state.lock().unwrap();
        st.vars.remove(name);
        st.version += 1;
    }

    /// Queues an answer served once, before the normal ones.
    pub fn script(&self, answer: Scripted) {
        self.state.lock().unwrap().script.push_back(answer);
    }

    /// The `RateLimit-Remaining` normal answers carry.
    pub fn set_remaining(&self, n: u64) {
        self.state.lock().unwrap().remaining = n;
    }

    /// Normal answers wait this long.
    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Waits until the server has answered at least `n` requests.
    pub async fn wait_for_requests(&self, n: usize) -> Vec<Seen> {
        loop {
            let notified = self.seen_changed.notified();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            notified.await;
        }
    }
}

async fn answer(
    state: &Mutex<State>,
    notify: &Notify,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let mut seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        accept: header("accept"),
        user_agent: header("user-agent"),
        has_authorization: req.headers().contains_key("authorization"),
        if_none_match: header("if-none-match"),
        status: 0,
        etag: None,
        at: Instant::now(),
    };
    let (scripted, delay) = {
        let mut st = state.lock().unwrap();
        let scripted = st.script.pop_front();
        let delay = scripted.as_ref().map_or(st.delay, |s| s.delay);
        (scripted, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut builder = Response::builder();
    let (status, body) = match scripted {
        Some(s) => {
            for (k, v) in &s.headers {
                builder = builder.header(k, v);
            }
            (s.status, s.body)
        }
        None => {
            let st = state.lock().unwrap();
            builder = builder.header("RateLimit-Remaining", st.remaining.to_string());
            let authorized = header("authorization") == Some(format!("Bearer {}", st.token));
            let etag = format!("\"v{}\"", st.version);
            if seen.accept.as_deref() != Some(V3) {
                (
                    406,
                    r#"{"id":"not_acceptable","message":"Accept header must name version 3"}"#
                        .into(),
                )
            } else if !authorized {
                (
                    401,
                    r#"{"id":"unauthorized","message":"Invalid credentials provided."}"#.into(),
                )
            } else if seen.method != "GET" || seen.path != format!("/apps/{}/config-vars", st.app) {
                (
                    404,
                    r#"{"id":"not_found","message":"Couldn't find that app."}"#.into(),
                )
            } else if seen.if_none_match.as_deref() == Some(etag.as_str()) {
                builder = builder.header("ETag", &etag);
                seen.etag = Some(etag);
                (304, String::new())
            } else {
                builder = builder.header("ETag", &etag);
                seen.etag = Some(etag);
                (200, serde_json::to_string(&st.vars).unwrap())
            }
        }
    };
    seen.status = status;
    {
        let mut st = state.lock().unwrap();
        st.seen.push(seen);
    }
    notify.notify_waiters();
    builder
        .status(StatusCode::from_u16(status).unwrap())
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}
