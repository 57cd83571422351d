//! Reading the Platform API's answer: the status code and what it means,
//! `Retry-After`, `RateLimit-Remaining`, and the config var in the body.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use serde_json::Value;

use super::{HerokuApi, LOW_REMAINING, TARGET};
use crate::source::{SourceError, SourceErrorKind};
use crate::time::fmt_duration;
use crate::url::DatabaseUrl;

/// How many `*_URL` names an error about a missing var lists at most.
const MAX_NAMES_LISTED: usize = 30;

impl HerokuApi {
    /// Reads the rate-limit headers, remembers `RateLimit-Remaining` and
    /// warns when it is low.
    pub(super) fn note_rate_limit(&self, headers: &HeaderMap) -> Option<u64> {
        let remaining = header_u64(headers, "ratelimit-remaining");
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if remaining.is_some() {
            memo.remaining = remaining;
        }
        if let Some(r) = remaining
            && r < LOW_REMAINING
        {
            tracing::warn!(target: TARGET, app = %self.app, remaining = r, refill = %fmt_duration(self.current_budget(Some(r)).refill()), "the account's Platform API budget is nearly spent (RateLimit-Remaining); refilling this pool's budget half as fast");
        }
        remaining
    }

    fn missing_var(&self, vars: &serde_json::Map<String, Value>, null: bool) -> SourceError {
        let mut names: Vec<&str> = vars
            .iter()
            .filter(|(k, v)| k.ends_with("_URL") && !v.is_null())
            .map(|(k, _)| k.as_str())
            .collect();
        names.sort_unstable();
        let listed = if names.is_empty() {
            "it has no *_URL config vars".to_string()
        } else {
            let more = names.len().saturating_sub(MAX_NAMES_LISTED);
            let mut s = format!(
                "its *_URL config vars are: {}",
                names[..names.len().min(MAX_NAMES_LISTED)].join(", ")
            );
            if more > 0 {
                s.push_str(&format!(" and {more} more"));
            }
            s
        };
        let what = if null {
            "is null (unset)"
        } else {
            "is not set"
        };
        SourceError::new(
            SourceErrorKind::NotFound,
            format!(
                "config var {} of app {} {what}; {listed}",
                self.var, self.app
            ),
        )
    }

    pub(super) fn read_var(&self, body: &[u8]) -> Result<DatabaseUrl, SourceError> {
        // Never echo the body nor serde_json's message: both may quote the
        // app's other config vars, which are secrets.
        let vars: serde_json::Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
            let why = if e.is_data() {
                "is JSON but not an object of config vars".to_string()
            } else {
                format!(
                    "is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            };
            SourceError::new(
                SourceErrorKind::Malformed,
                format!("the config-vars answer for app {} {why}", self.app),
            )
        })?;
        match vars.get(&self.var) {
            None => Err(self.missing_var(&vars, false)),
            Some(Value::Null) => Err(self.missing_var(&vars, true)),
            Some(Value::String(text)) => DatabaseUrl::parse(text).map_err(|e| {
                SourceError::new(
                    SourceErrorKind::Malformed,
                    format!(
                        "config var {} of app {} is not a usable PostgreSQL URL: {e}",
                        self.var, self.app
                    ),
                )
            }),
            Some(_) => Err(SourceError::new(
                SourceErrorKind::Malformed,
                format!(
                    "config var {} of app {} is not a string in the config-vars answer",
                    self.var, self.app
                ),
            )),
        }
    }

    /// The error for a non-success status, with the `Retry-After` to honour.
    pub(super) fn status_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> SourceError {
        let retry_after = header_u64(headers, header::RETRY_AFTER.as_str())
            .map(|s| crate::time::stretched(Duration::from_secs(s.min(3600)), 0.2));
        // Heroku's error bodies are `{"id":"unauthorized","message":"..."}`;
        // the id is a fixed word and safe to show.
        let id = error_id(body);
        let id = id.map(|id| format!(", id {id:?}")).unwrap_or_default();
        let code = status.as_u16();
        let err = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::new(
                SourceErrorKind::Unauthorized,
                format!(
                    "the Platform API refused the token (HTTP {code}{id}): the token is wrong, \
                     expired, or has no access to app {}",
                    self.app
                ),
            ),
            StatusCode::NOT_FOUND => SourceError::new(
                SourceErrorKind::NotFound,
                format!(
                    "no app named {} (HTTP 404{id}; or this token's account cannot see it)",
                    self.app
                ),
            ),
            StatusCode::TOO_MANY_REQUESTS => {
                let after = retry_after
                    .unwrap_or_else(|| crate::time::stretched(self.budget.refill(), 0.2))
                    .min(crate::source::MAX_RETRY_AFTER);
                // This answer's own header only: an earlier answer's count
                // says nothing about now.
                let left = header_u64(headers, "ratelimit-remaining")
                    .map(|r| format!(", RateLimit-Remaining {r}"))
                    .unwrap_or_default();
                return SourceError::new(
                    SourceErrorKind::RateLimited,
                    format!(
                        "the Platform API is rate-limiting this account (HTTP 429{id}{left}); \
                         not asking again for {}",
                        fmt_duration(after)
                    ),
                )
                .with_retry_after(after);
            }
            s if s.is_server_error() => SourceError::new(
                SourceErrorKind::Unavailable,
                format!("the Platform API failed (HTTP {code}{id})"),
            ),
            _ => SourceError::new(
                SourceErrorKind::Other,
                format!("the Platform API answered HTTP {code}{id}, which pgrotate cannot use"),
            ),
        };
        match retry_after {
            Some(after) => err.with_retry_after(after),
            None => err,
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The `id` of a Heroku error body, when it is a short word.
fn error_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let id = value.get("id")?.as_str()?;
    (id.len() <= 40 && id.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn source() -> HerokuApi {
        HerokuApi::new("my-app", "tok-123-secret")
    }

    #[test]
    fn bodies_are_never_echoed() {
        let s = source();
        let body = br#"{"DATABASE_URL": 5, "OTHER": "postgres://u:topsecret@h/d"}"#;
        let e = s.read_var(body).unwrap_err();
        assert_eq!(e.kind(), SourceErrorKind::Malformed);
        let body = br#"["postgres://u:topsecret@h/d"]"#;
        let e2 = s.read_var(body).unwrap_err();
        assert!(format!("{e2:#}").contains("not an object"), "{e2}");
        let body = br#"{"DATABASE_URL": "postgres://u:topsecret@h/d?sslmode=bogus"#;
        let e3 = s.read_var(body).unwrap_err();
        assert!(format!("{e3:#}").contains("not valid JSON"), "{e3}");
        let body = br#"{"DATABASE_URL": "mysql://u:topsecret@h/d"}"#;
        let e4 = s.read_var(body).unwrap_err();
        assert!(
            format!("{e4:#}").contains("not a usable PostgreSQL URL"),
            "{e4}"
        );
        for e in [e, e2, e3, e4] {
            assert!(!format!("{e} {e:?}").contains("topsecret"), "{e}");
        }
    }

    #[test]
    fn a_missing_var_lists_url_names_only() {
        let s = source().var("HEROKU_POSTGRESQL_VIOLET_URL");
        let body = br#"{"DATABASE_URL": "postgres://u:topsecret@h/d", "REDIS_URL": "redis://:pw2@r", "GONE_URL": null, "SECRET_KEY": "k"}"#;
        let e = s.read_var(body).unwrap_err();
        assert_eq!(e.kind(), SourceErrorKind::NotFound);
        assert_eq!(
            format!("{e:#}"),
            "config var HEROKU_POSTGRESQL_VIOLET_URL of app my-app is not set; its *_URL config \
             vars are: DATABASE_URL, REDIS_URL"
        );
    }

    #[test]
    fn statuses_map_to_kinds_with_retry_after() {
        let s = source();
        let mut h = HeaderMap::new();
        let e = s.status_error(StatusCode::UNAUTHORIZED, &h, br#"{"id":"unauthorized"}"#);
        assert_eq!(e.kind(), SourceErrorKind::Unauthorized);
        assert!(format!("{e:#}").contains("app my-app"), "{e}");
        assert!(format!("{e:#}").contains("\"unauthorized\""), "{e}");
        let e = s.status_error(StatusCode::NOT_FOUND, &h, b"");
        assert_eq!(e.kind(), SourceErrorKind::NotFound);
        let e = s.status_error(StatusCode::BAD_GATEWAY, &h, b"<html>");
        assert_eq!(e.kind(), SourceErrorKind::Unavailable);
        assert_eq!(e.retry_after(), None);
        let e = s.status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"");
        let after = e.retry_after().unwrap();
        assert!(after >= Duration::from_secs(80) && after <= Duration::from_secs(96));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        let e = s.status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"");
        assert_eq!(e.kind(), SourceErrorKind::RateLimited);
        let after = e.retry_after().unwrap();
        assert!(after >= Duration::from_secs(3) && after <= Duration::from_millis(3600));
        let e = s.status_error(StatusCode::SERVICE_UNAVAILABLE, &h, b"");
        assert!(e.retry_after().unwrap() >= Duration::from_secs(3));
    }

    #[test]
    fn a_huge_retry_after_is_capped_and_the_message_says_the_wait_held() {
        let s = source();
        let mut h = HeaderMap::new();
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("18446744073709551615"),
        );
        let e = s.status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3600)));
        assert!(
            format!("{e:#}").contains("not asking again for 3600.0 s"),
            "{e}"
        );
        assert!(
            !format!("{e:#}").contains("RateLimit-Remaining"),
            "no header, no count: {e}"
        );
        assert_eq!(crate::time::stretched(Duration::MAX, 0.2), Duration::MAX);
    }
}
