//! [`Pool::from_env`]: the source picked by the environment variables set.

use crate::error::{Error, ErrorKind};
use crate::source::{Env, SourceError, UrlSource};
use crate::url::DatabaseUrl;
use crate::{Pool, PoolBuilder};

/// The variables [`source_from_vars`] looks at, in the order it does.
const APP_VARS: [&str; 2] = ["HEROKU_APP_NAME", "HEROKU_APP"];
const TOKEN_VAR: &str = "HEROKU_API_KEY";
const URL_VAR: &str = "DATABASE_URL";

impl Pool {
    /// A pool with every default, its source picked by the environment:
    ///
    /// 1. `HEROKU_APP_NAME` (or `HEROKU_APP`) and `HEROKU_API_KEY` set:
    ///    `DATABASE_URL` of that app from the Heroku Platform API
    ///    ([`source::HerokuApi`](crate::source), feature `heroku`), fetched
    ///    again after every rotation. The token is redacted everywhere.
    /// 2. Else `DATABASE_URL` set: that variable ([`source::Env`](Env)),
    ///    read again on every fetch.
    /// 3. Else an [`ErrorKind::Build`] error naming the variables looked for.
    ///
    /// Same as `Pool::builder_from_env()?.build().await`: it fetches the URL
    /// once, so a wrong token or app name fails here.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pgrotate::Error> {
    /// // HEROKU_APP_NAME=my-app HEROKU_API_KEY=$(heroku auth:token) my-service
    /// let pool = pgrotate::Pool::from_env().await?;
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Pool, Error> {
        Pool::builder_from_env()?.build().await
    }

    /// A [`PoolBuilder`] whose source is picked as [`Pool::from_env`] does,
    /// for a pool with other settings. Reads the variables now; fetches
    /// nothing until `build()`.
    pub fn builder_from_env() -> Result<PoolBuilder, Error> {
        let source = source_from_vars(|name| std::env::var(name).ok())?;
        Ok(Pool::builder(source))
    }
}

/// The source the environment asks for.
pub(crate) enum EnvSource {
    #[cfg(feature = "heroku")]
    Heroku(Box<crate::source::HerokuApi>),
    Env(Env),
}

impl UrlSource for EnvSource {
    async fn fetch(&self) -> Result<DatabaseUrl, SourceError> {
        match self {
            #[cfg(feature = "heroku")]
            EnvSource::Heroku(s) => s.as_ref().fetch().await,
            EnvSource::Env(s) => s.fetch().await,
        }
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "heroku")]
            EnvSource::Heroku(s) => UrlSource::describe(s.as_ref()),
            EnvSource::Env(s) => s.describe(),
        }
    }

    fn budget(&self) -> crate::source::Budget {
        match self {
            #[cfg(feature = "heroku")]
            EnvSource::Heroku(s) => UrlSource::budget(s.as_ref()),
            EnvSource::Env(s) => s.budget(),
        }
    }
}

/// Picks the source from variables read through `get` (the process
/// environment, or a table in tests). A variable that is empty or only
/// white space counts as unset. Messages name variables, never values.
pub(crate) fn source_from_vars(get: impl Fn(&str) -> Option<String>) -> Result<EnvSource, Error> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    #[cfg(feature = "heroku")]
    {
        let app = APP_VARS
            .iter()
            .find_map(|name| get(name).map(|v| v.trim().to_string()));
        if let (Some(app), Some(token)) = (app, get(TOKEN_VAR)) {
            return Ok(EnvSource::Heroku(Box::new(crate::source::HerokuApi::new(
                app, token,
            ))));
        }
    }
    if get(URL_VAR).is_some() {
        return Ok(EnvSource::Env(Env::new(URL_VAR)));
    }
    let mut found: Vec<&str> = APP_VARS
        .iter()
        .copied()
        .chain([TOKEN_VAR])
        .filter(|name| get(name).is_some())
        .collect();
    let found = if found.is_empty() {
        "none of them is set".to_string()
    } else {
        let n = found.len();
        let list = std::mem::take(&mut found).join(" and ");
        format!("only {list} {}", if n == 1 { "is set" } else { "are set" })
    };
    let heroku_note = if cfg!(feature = "heroku") {
        ""
    } else {
        " (pgrotate was built without its `heroku` feature, so only DATABASE_URL can be used)"
    };
    Err(Error::new(
        ErrorKind::Build,
        format!(
            "no database URL source in the environment: looked for HEROKU_APP_NAME (or \
             HEROKU_APP) with HEROKU_API_KEY, to fetch DATABASE_URL from the Heroku Platform \
             API, then for DATABASE_URL; {found}{heroku_note}"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(vars: &[(&str, &str)]) -> Result<EnvSource, Error> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        source_from_vars(move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[cfg(feature = "heroku")]
    #[test]
    fn heroku_app_and_key_pick_the_platform_api() {
        let s = pick(&[
            ("HEROKU_APP_NAME", "my-app"),
            ("HEROKU_API_KEY", "key-secret-1"),
            ("DATABASE_URL", "postgres://u:p@h/d"),
        ])
        .unwrap();
        assert_eq!(s.describe(), "Heroku API app my-app var DATABASE_URL");
        assert_eq!(s.budget(), crate::source::Budget::heroku());
        let s = pick(&[("HEROKU_APP", "other"), ("HEROKU_API_KEY", "key-secret-1")]).unwrap();
        assert_eq!(s.describe(), "Heroku API app other var DATABASE_URL");
        let EnvSource::Heroku(api) = s else {
            panic!("not the API source")
        };
        assert!(!format!("{api:?}").contains("key-secret-1"));
    }

    #[test]
    fn database_url_is_the_fallback() {
        let s = pick(&[("DATABASE_URL", "postgres://u:p@h/d")]).unwrap();
        assert_eq!(s.describe(), "environment variable DATABASE_URL");
        // An app without a key (or a key without an app) is not enough for
        // the API.
        let s = pick(&[
            ("HEROKU_API_KEY", "key-secret-1"),
            ("HEROKU_APP_NAME", "  "),
            ("DATABASE_URL", "postgres://u:p@h/d"),
        ])
        .unwrap();
        assert_eq!(s.describe(), "environment variable DATABASE_URL");
    }

    #[test]
    fn nothing_set_names_what_was_looked_for() {
        let e = pick(&[]).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Build);
        let msg = format!("{e:#}");
        for name in [
            "HEROKU_APP_NAME",
            "HEROKU_APP",
            "HEROKU_API_KEY",
            "DATABASE_URL",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
        assert!(msg.contains("none of them is set"), "{msg}");
        let e = pick(&[("HEROKU_API_KEY", "key-secret-1")]).err().unwrap();
        let msg = format!("{e} {e:?}");
        assert!(msg.contains("only HEROKU_API_KEY is set"), "{msg}");
        assert!(!msg.contains("key-secret-1"), "{msg}");
    }
}
