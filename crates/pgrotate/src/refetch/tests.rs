//! The refresh coordinator without a database: scripted sources and tokio's
//! paused clock (time moves only when every task waits on a timer), so
//! every timing below is exact and no test sleeps in real time.

use std::collections::VecDeque;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::budget::Budget;
use crate::generation::{Probe, RefreshConfig};
use crate::source::{SourceError, SourceErrorKind, UrlSource};
use crate::stats::Counters;
use crate::target::Settings;
use crate::url::DatabaseUrl;

const OLD: &str = "postgres://app:old-pw@127.0.0.1:1/app";
const NEW: &str = "postgres://app:new-pw@127.0.0.1:1/app";
const S: Duration = Duration::from_secs(1);

/// One scripted answer.
enum Answer {
    Fail(SourceError),
    /// Never answers (until the fetch is dropped).
    Hang,
    /// A bug in the user's source.
    Panic,
    /// Answers the URL current when asked, after this long.
    Slow(Duration),
}

/// A source that answers from a script, then the current URL.
struct Script {
    url: StdMutex<&'static str>,
    queue: StdMutex<VecDeque<Answer>>,
    fetches: AtomicU32,
    /// Fetch futures dropped before they answered.
    abandoned: Arc<AtomicU32>,
    budget: Budget,
}

struct CountDrop(Arc<AtomicU32>, bool);

impl Drop for CountDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Script {
    fn new(budget: Budget) -> Arc<Script> {
        Arc::new(Script {
            url: StdMutex::new(OLD),
            queue: StdMutex::new(VecDeque::new()),
            fetches: AtomicU32::new(0),
            abandoned: Arc::new(AtomicU32::new(0)),
            budget,
        })
    }
    fn set(&self, url: &'static str) {
        *self.url.lock().unwrap() = url;
    }
    fn then(&self, a: Answer) {
        self.queue.lock().unwrap().push_back(a);
    }
    fn fetches(&self) -> u32 {
        self.fetches.load(Ordering::SeqCst)
    }
}

struct Shared(Arc<Script>);

impl UrlSource for Shared {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        let s = &self.0;
        s.fetches.fetch_add(1, Ordering::SeqCst);
        let next = s.queue.lock().unwrap().pop_front();
        let mut guard = CountDrop(s.abandoned.clone(), false);
        let r = match next {
            Some(Answer::Fail(e)) => Err(e),
            Some(Answer::Hang) => std::future::pending().await,
            Some(Answer::Panic) => panic!("a bug in the user's source"),
            Some(Answer::Slow(d)) => {
                let url = *s.url.lock().unwrap();
                tokio::time::sleep(d).await;
                Ok(DatabaseUrl::parse(url).unwrap())
            }
            None => Ok(DatabaseUrl::parse(*s.url.lock().unwrap()).unwrap()),
        };
        guard.1 = true;
        r
    }
    fn describe(&self) -> String {
        "scripted source".into()
    }
    fn budget(&self) -> Budget {
        self.0.budget
    }
}

fn ok_probe() -> Probe {
    Arc::new(|_| Box::pin(async { Ok(()) }))
}

async fn refresher(script: &Arc<Script>, config: RefreshConfig) -> Arc<Refresher> {
    Refresher::start(
        Arc::new(Shared(script.clone())),
        Settings::default(),
        config,
        ok_probe(),
        Arc::new(Counters::default()),
    )
    .await
    .unwrap()
}

async fn failure(
    r: &Refresher,
    failed: u64,
    within: Duration,
) -> Result<Arc<Generation>, RefreshFailed> {
    r.refresh_after(
        failed,
        Trigger::Failure,
        "credentials rejected",
        Wait::Deadline,
        Instant::now() + within,
    )
    .await
}

/// The source rotates to `url`, then generation `failed` fails: the
/// failure is answered with generation `failed + 1` at once (`why`).
async fn rotation_refetched_at_once(
    script: &Script,
    r: &Refresher,
    url: &'static str,
    failed: u64,
    why: &str,
) {
    script.set(url);
    let t = Instant::now();
    assert_eq!(failure(r, failed, 30 * S).await.unwrap().id, failed + 1);
    assert_eq!(t.elapsed(), Duration::ZERO, "{why}");
}

/// Yields until the script has seen `n` fetches.
async fn fetches_reach(script: &Script, n: u32) {
    while script.fetches() < n {
        tokio::task::yield_now().await;
    }
}

/// A refresher watching every `S`, left idle for 200 s, then
/// a watch poll on its way whose fetch answers `answer`.
async fn poll_under_way(script: &Arc<Script>, answer: Answer) -> Arc<Refresher> {
    let config = RefreshConfig {
        watch: Some(S),
        ..RefreshConfig::default()
    };
    let r = refresher(script, config).await;
    tokio::time::sleep(Duration::from_secs(200)).await;
    script.then(answer);
    r.poll_for_change();
    fetches_reach(script, 2).await;
    r
}

fn rate_limited(after: Duration) -> SourceError {
    SourceError::new(SourceErrorKind::RateLimited, "HTTP 429").with_retry_after(after)
}

#[tokio::test(start_paused = true)]
async fn sixty_four_callers_failing_at_once_cause_one_fetch() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.set(NEW);
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let r = r.clone();
        callers.spawn(async move { failure(&r, 1, 30 * S).await.map(|g| g.id) });
    }
    let ids: Vec<_> = callers
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ids, vec![2; 64]);
    assert_eq!(script.fetches(), 2, "the build's fetch and one refetch");
}

#[tokio::test(start_paused = true)]
async fn a_rotation_right_after_the_build_fetch_refetches_at_once() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    tokio::time::sleep(S).await;
    rotation_refetched_at_once(&script, &r, NEW, 1, "no spacing after the build's fetch").await;
    // And a second rotation right after the first.
    rotation_refetched_at_once(&script, &r, OLD, 2, "no spacing after a refetch").await;
    assert_eq!(script.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_watch_poll_under_way_never_delays_a_failure() {
    let script = Script::new(Budget::heroku());
    let r = poll_under_way(&script, Answer::Slow(S)).await;
    // The rotation lands while the poll is on its way (it would bring the
    // old URL): the failure does not wait for it, it fetches at once.
    tokio::time::sleep(S / 2).await;
    rotation_refetched_at_once(&script, &r, NEW, 1, "the poll did not delay the failure").await;
    assert_eq!(script.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_books_nothing_ahead() {
    // Two tokens, one per 80 s, none reserved: the build spends one, a
    // fruitless refetch the other.
    let script = Script::new(Budget::new(2, 80 * S).reserve(0));
    let r = refresher(&script, RefreshConfig::default()).await;
    let e = failure(&r, 1, 30 * S).await.unwrap_err();
    assert!(
        e.note.contains("still returns the URL that failed")
            && e.note.contains("allows the next request in 80.0 s"),
        "{}",
        e.note
    );
    assert_eq!(script.fetches(), 2);
    // Callers that wait for the budget and give up (their own timeout, a
    // dropped request future) ...
    for _ in 0..5 {
        let gave_up = tokio::time::timeout(10 * S, failure(&r, 1, 300 * S)).await;
        assert!(gave_up.is_err());
    }
    let asked = Instant::now();
    // ... leave the schedule as it was: the next token is still due 80 s
    // after the refetch, not pushed further.
    script.set(NEW);
    assert_eq!(failure(&r, 1, 300 * S).await.unwrap().id, 2);
    assert_eq!(
        asked.elapsed(),
        30 * S,
        "80 s after the refetch, 50 s of them waited above"
    );
    assert_eq!(script.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_that_never_answers_is_bounded_and_recovery_follows() {
    let script = Script::new(Budget::heroku());
    let config = RefreshConfig {
        fetch_timeout: 2 * S,
        ..RefreshConfig::default()
    };
    let r = refresher(&script, config).await;
    script.then(Answer::Hang);
    script.set(NEW);
    let t = Instant::now();
    assert_eq!(failure(&r, 1, 30 * S).await.unwrap().id, 2);
    let took = t.elapsed();
    assert!(
        took >= 2 * S + Duration::from_millis(250) && took <= 2 * S + Duration::from_millis(500),
        "the fetch timeout, then one backoff step: {took:?}"
    );
    assert_eq!(script.abandoned.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn drain_and_close_never_wait_for_a_fetch_and_close_ends_it() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.then(Answer::Hang);
    let waiter = {
        let r = r.clone();
        tokio::spawn(async move { failure(&r, 1, 30 * S).await })
    };
    fetches_reach(&script, 2).await;
    let t = Instant::now();
    assert_eq!(r.bump().id, 2, "drain does not wait for the fetch");
    r.close();
    assert!(
        waiter.await.unwrap().unwrap_err().closed,
        "the waiter is told at once"
    );
    assert_eq!(t.elapsed(), Duration::ZERO);
    tokio::task::yield_now().await;
    assert_eq!(
        script.abandoned.load(Ordering::SeqCst),
        1,
        "close dropped the fetch"
    );
    assert!(failure(&r, 2, S).await.unwrap_err().closed);
}

#[tokio::test(start_paused = true)]
async fn rejected_credentials_are_retried_until_the_deadline_then_say_when() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    let t = Instant::now();
    let e = failure(&r, 1, 10 * S).await.unwrap_err();
    assert!(t.elapsed() <= 10 * S, "{:?}", t.elapsed());
    assert!(
        e.note
            .contains("scripted source still returns the URL that failed"),
        "{}",
        e.note
    );
    assert!(e.note.contains("after this call's deadline"), "{}", e.note);
    // 0, then jittered backoff steps of [0.25, 0.5], [0.5, 1], [1, 2],
    // [2, 4], then at the 5 s cap [2.5, 5] s: at least 4 within 10 s, at
    // most 7 (0.25 + 0.5 + 1 + 2 + 2.5 + 2.5 = 8.75).
    let refetches = script.fetches() - 1;
    assert!((4..=7).contains(&refetches), "{refetches} refetches");
    let status = r.budget_status();
    assert_eq!(status.tokens, 8 - 1 - refetches);
    assert!(status.next_refetch_in.is_some());
    assert!(
        r.explain()
            .unwrap()
            .contains("still returns the URL that failed")
    );
}

#[tokio::test(start_paused = true)]
async fn a_url_published_five_seconds_late_is_picked_up_within_the_burst() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    let publisher = {
        let script = script.clone();
        tokio::spawn(async move {
            tokio::time::sleep(5 * S).await;
            script.set(NEW);
        })
    };
    let t = Instant::now();
    assert_eq!(failure(&r, 1, 30 * S).await.unwrap().id, 2);
    let took = t.elapsed();
    assert!(took >= 5 * S && took <= 12 * S, "{took:?}");
    assert!(
        script.fetches() <= 8,
        "within the burst: {}",
        script.fetches()
    );
    publisher.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_then_the_new_url_taken() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    for _ in 0..3 {
        script.then(Answer::Fail(rate_limited(3 * S)));
    }
    for _ in 0..3 {
        script.then(Answer::Fail(SourceError::new(
            SourceErrorKind::Unavailable,
            "HTTP 500",
        )));
    }
    script.set(NEW);
    let t = Instant::now();
    assert_eq!(failure(&r, 1, 30 * S).await.unwrap().id, 2);
    let took = t.elapsed();
    assert!(
        took >= 9 * S && took <= 16 * S,
        "three Retry-After waits, three backoffs: {took:?}"
    );
    assert_eq!(
        script.fetches(),
        8,
        "the build, 6 failures, the success: no hot loop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_comes_back_at_once() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.then(Answer::Fail(SourceError::new(
        SourceErrorKind::Unauthorized,
        "HTTP 401",
    )));
    let t = Instant::now();
    let e = failure(&r, 1, 30 * S).await.unwrap_err();
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert!(e.fetch_failed);
    assert!(e.note.contains("HTTP 401"), "{}", e.note);
}

#[tokio::test(start_paused = true)]
async fn an_outage_within_its_grace_spends_nothing_and_never_waits() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    let outage = async |r: &Refresher| {
        r.refresh_after(
            1,
            Trigger::Outage,
            "connection lost",
            Wait::OnceNow,
            Instant::now() + 30 * S,
        )
        .await
        .unwrap()
        .id
    };
    let t = Instant::now();
    assert_eq!(outage(&r).await, 1);
    tokio::time::sleep(5 * S).await;
    assert_eq!(outage(&r).await, 1);
    assert_eq!(script.fetches(), 1, "a restart costs no request");
    assert_eq!(t.elapsed(), 5 * S, "and no caller waited");
    // Past the grace (a failover lasts longer), one refetch goes out.
    tokio::time::sleep(5 * S).await;
    script.set(NEW);
    assert_eq!(outage(&r).await, 2);
    assert_eq!(script.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn refresh_now_waits_for_retry_after_within_its_bound() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.then(Answer::Fail(rate_limited(2 * S)));
    let e = r.refresh_now(Instant::now() + 30 * S).await.unwrap_err();
    assert!(format!("{e:#}").contains("HTTP 429"), "{e}");
    script.set(NEW);
    let t = Instant::now();
    assert_eq!(r.refresh_now(Instant::now() + 30 * S).await.unwrap().id, 2);
    let took = t.elapsed();
    assert!(took >= 2 * S && took <= 3 * S, "{took:?}");
    // A bound shorter than the wait: an error that says when.
    script.then(Answer::Fail(rate_limited(20 * S)));
    let _ = r.refresh_now(Instant::now() + 30 * S).await;
    let e = r.refresh_now(Instant::now() + S).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(
        format!("{e:#}").contains("allows the next request in"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_source_that_panics_fails_that_fetch_and_the_next_one_goes_out() {
    let script = Script::new(Budget::heroku());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.then(Answer::Panic);
    script.set(NEW);
    let e = r.refresh_now(Instant::now() + 30 * S).await.unwrap_err();
    assert!(format!("{e:#}").contains("the source panicked"), "{e}");
    assert_eq!(r.refresh_now(Instant::now() + 30 * S).await.unwrap().id, 2);
    assert_eq!(script.fetches(), 3);
    assert!(r.last_error().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_hung_watch_poll_never_holds_a_failure_back() {
    let script = Script::new(Budget::heroku());
    let r = poll_under_way(&script, Answer::Hang).await;
    rotation_refetched_at_once(&script, &r, NEW, 1, "the failure sent its own request").await;
    tokio::task::yield_now().await;
    assert_eq!(
        script.abandoned.load(Ordering::SeqCst),
        1,
        "the hung poll was dropped"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_never_waits_for_someone_elses_fetch() {
    let script = Script::new(Budget::local());
    let r = refresher(&script, RefreshConfig::default()).await;
    script.then(Answer::Slow(10 * S));
    let slow = {
        let r = r.clone();
        tokio::spawn(async move { r.refresh_now(Instant::now() + 30 * S).await.map(|g| g.id) })
    };
    fetches_reach(&script, 2).await;
    let t = Instant::now();
    let g = r
        .refresh_after(
            1,
            Trigger::Outage,
            "connection lost",
            Wait::OnceNow,
            Instant::now() + 30 * S,
        )
        .await
        .unwrap();
    assert_eq!((g.id, t.elapsed()), (1, Duration::ZERO));
    assert_eq!(slow.await.unwrap().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_a_caller_waiting_for_the_budget() {
    let script = Script::new(Budget::new(1, 80 * S).reserve(0));
    let r = refresher(&script, RefreshConfig::default()).await;
    let waiting = {
        let r = r.clone();
        tokio::spawn(async move { failure(&r, 1, 300 * S).await })
    };
    tokio::time::sleep(S).await;
    let t = Instant::now();
    r.close();
    assert!(waiting.await.unwrap().unwrap_err().closed);
    assert_eq!(t.elapsed(), Duration::ZERO);
}
