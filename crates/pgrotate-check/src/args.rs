//! The command line, parsed by hand: one source, a few options. No message
//! here ever repeats a value given on the command line (a URL or a token
//! passed by mistake would be printed otherwise); only option names.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use pgrotate::SslMode;

pub(crate) const USAGE: &str = "usage: pgrotate-check [--heroku-app APP [--heroku-var VAR] [--heroku-api-url URL] | --heroku-cli APP [--heroku-var VAR] | --file PATH | --env VAR | --command PROGRAM [ARGS...]] [--sslmode MODE] [--root-cert PATH] [--timeout SECS]";

pub(crate) const HELP: &str = "\
Fetches the database URL through one pgrotate source, connects with the
pool's TLS rules (sslmode=require unless told more) and prints one
`key: value` line per finding. Never prints a password or a token.

Sources (one; default --env DATABASE_URL):
  --heroku-app APP     the Heroku Platform API (token from HEROKU_API_KEY)
  --heroku-cli APP     `heroku config:get VAR -a APP`
  --heroku-var VAR     the config var of either (default DATABASE_URL)
  --heroku-api-url URL the Platform API's base URL for --heroku-app (default
                       https://api.heroku.com): a proxy, or a local stand-in
  --file PATH          a file holding the URL (a mounted secret)
  --env VAR            an environment variable
  --command PROGRAM [ARGS...]
                       a program that prints the URL (takes every argument after it)
Options:
  --sslmode MODE       the least TLS to accept: disable, allow, prefer, require,
                       verify-ca, verify-full (a URL may ask for more)
  --root-cert PATH     PEM root certificates for verify-ca / verify-full
  --timeout SECS       how long to wait for the URL and a connection (default 10)

Exit status: 0 when every check passed, 1 when one failed (the pool's
error on stderr), 2 for bad arguments.";

/// Where the URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    HerokuApi {
        app: String,
        var: Option<String>,
        /// The Platform API's base URL; `None`: Heroku's.
        api_url: Option<String>,
    },
    HerokuCli {
        app: String,
        var: Option<String>,
    },
    File(PathBuf),
    Env(String),
    Command {
        program: OsString,
        args: Vec<OsString>,
    },
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Args {
    pub(crate) source: Source,
    pub(crate) sslmode: Option<SslMode>,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) timeout: Duration,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Check(Args),
    Help,
}

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses the arguments after the program name. The error names what is
/// wrong, never a value.
pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let mut args = args.into_iter();
    let mut source: Option<Source> = None;
    let mut heroku_var: Option<String> = None;
    let mut api_url: Option<String> = None;
    let mut sslmode = None;
    let mut root_cert = None;
    let mut timeout = None;

    while let Some(arg) = args.next() {
        let Some(name) = arg.to_str() else {
            return Err("an argument is not valid UTF-8".into());
        };
        match name {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--heroku-app" => {
                let app = text_value(&mut args, name)?;
                set_source(
                    Source::HerokuApi {
                        app,
                        var: None,
                        api_url: None,
                    },
                    &mut source,
                )?;
            }
            "--heroku-cli" => {
                let app = text_value(&mut args, name)?;
                set_source(Source::HerokuCli { app, var: None }, &mut source)?;
            }
            "--heroku-var" => {
                if heroku_var.is_some() {
                    return Err("--heroku-var given twice".into());
                }
                heroku_var = Some(text_value(&mut args, name)?);
            }
            "--heroku-api-url" => {
                if api_url.is_some() {
                    return Err("--heroku-api-url given twice".into());
                }
                api_url = Some(text_value(&mut args, name)?);
            }
            "--file" => {
                let path = value(&mut args, name)?;
                set_source(Source::File(path.into()), &mut source)?;
            }
            "--env" => {
                let var = text_value(&mut args, name)?;
                set_source(Source::Env(var), &mut source)?;
            }
            "--command" => {
                let program = value(&mut args, name)?;
                let rest = args.by_ref().collect();
                set_source(
                    Source::Command {
                        program,
                        args: rest,
                    },
                    &mut source,
                )?;
            }
            "--sslmode" => {
                let mode = text_value(&mut args, name)?;
                let mode = mode.parse::<SslMode>().map_err(|_| {
                    "--sslmode takes disable, allow, prefer, require, verify-ca or verify-full"
                        .to_string()
                })?;
                if sslmode.replace(mode).is_some() {
                    return Err("--sslmode given twice".into());
                }
            }
            "--root-cert" => {
                let path = value(&mut args, name)?;
                if root_cert.replace(PathBuf::from(path)).is_some() {
                    return Err("--root-cert given twice".into());
                }
            }
            "--timeout" => {
                let secs = text_value(&mut args, name)?;
                let secs = secs
                    .parse::<u64>()
                    .ok()
                    .filter(|s| (1..=3600).contains(s))
                    .ok_or("--timeout takes a whole number of seconds from 1 to 3600")?;
                if timeout.replace(Duration::from_secs(secs)).is_some() {
                    return Err("--timeout given twice".into());
                }
            }
            other => {
                // An option's name is safe to repeat; anything else (a URL
                // pasted in the wrong place, a `--token=…`) is not shown.
                let safe = other.starts_with("--")
                    && other.len() <= 40
                    && other[2..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-');
                return Err(if safe {
                    format!("unknown option {other}")
                } else {
                    "unexpected argument (not shown: it may hold a secret)".into()
                });
            }
        }
    }

    let mut source = source.unwrap_or_else(|| Source::Env("DATABASE_URL".into()));
    match (&mut source, heroku_var) {
        (Source::HerokuApi { var, .. } | Source::HerokuCli { var, .. }, Some(v)) => *var = Some(v),
        (_, Some(_)) => return Err("--heroku-var needs --heroku-app or --heroku-cli".into()),
        (_, None) => {}
    }
    match (&mut source, api_url) {
        (Source::HerokuApi { api_url, .. }, Some(u)) => *api_url = Some(u),
        (_, Some(_)) => return Err("--heroku-api-url needs --heroku-app".into()),
        (_, None) => {}
    }
    Ok(Parsed::Check(Args {
        source,
        sslmode,
        root_cert,
        timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
    }))
}

fn set_source(s: Source, source: &mut Option<Source>) -> Result<(), String> {
    if source.is_some() {
        return Err("give one source only".into());
    }
    *source = Some(s);
    Ok(())
}

fn value(args: &mut impl Iterator<Item = OsString>, name: &str) -> Result<OsString, String> {
    match args.next() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{name} needs a value")),
    }
}

fn text_value(args: &mut impl Iterator<Item = OsString>, name: &str) -> Result<String, String> {
    value(args, name)?
        .into_string()
        .map_err(|_| format!("the value of {name} is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(OsString::from))
    }

    fn check(args: &[&str]) -> Args {
        match parse_strs(args) {
            Ok(Parsed::Check(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_argument_reads_database_url() {
        let a = check(&[]);
        assert_eq!(a.source, Source::Env("DATABASE_URL".into()));
        assert_eq!(a.timeout, DEFAULT_TIMEOUT);
        assert_eq!((a.sslmode, a.root_cert), (None, None));
    }

    #[test]
    fn every_source_and_option() {
        let a = check(&[
            "--heroku-var",
            "HEROKU_POSTGRESQL_VIOLET_URL",
            "--heroku-app",
            "my-app",
            "--sslmode",
            "verify-full",
            "--root-cert",
            "/ca.pem",
            "--timeout",
            "3",
        ]);
        assert_eq!(
            a.source,
            Source::HerokuApi {
                app: "my-app".into(),
                var: Some("HEROKU_POSTGRESQL_VIOLET_URL".into()),
                api_url: None,
            }
        );
        assert_eq!(
            check(&[
                "--heroku-api-url",
                "http://127.0.0.1:9",
                "--heroku-app",
                "a"
            ])
            .source,
            Source::HerokuApi {
                app: "a".into(),
                var: None,
                api_url: Some("http://127.0.0.1:9".into()),
            }
        );
        assert_eq!(a.sslmode, Some(SslMode::VerifyFull));
        assert_eq!(a.root_cert, Some("/ca.pem".into()));
        assert_eq!(a.timeout, Duration::from_secs(3));
        assert_eq!(
            check(&["--heroku-cli", "x"]).source,
            Source::HerokuCli {
                app: "x".into(),
                var: None
            }
        );
        assert_eq!(check(&["--file", "/f"]).source, Source::File("/f".into()));
        assert_eq!(
            check(&[
                "--timeout",
                "5",
                "--command",
                "vault",
                "read",
                "--timeout",
                "x"
            ]),
            Args {
                source: Source::Command {
                    program: "vault".into(),
                    args: ["read", "--timeout", "x"].map(OsString::from).to_vec(),
                },
                sslmode: None,
                root_cert: None,
                timeout: Duration::from_secs(5),
            }
        );
        assert_eq!(parse_strs(&["--file", "f", "-h"]), Ok(Parsed::Help));
    }

    #[test]
    fn bad_arguments_are_named_and_values_never_repeated() {
        for (args, says) in [
            (&["--file"][..], "--file needs a value"),
            (&["--file", "a", "--env", "B"], "one source"),
            (&["--heroku-var", "V"], "--heroku-var needs"),
            (
                &[
                    "--heroku-cli",
                    "a",
                    "--heroku-api-url",
                    "http://u:hunter2@h",
                ],
                "--heroku-api-url needs --heroku-app",
            ),
            (&["--timeout", "0"], "--timeout takes"),
            (&["--sslmode", "hunter2"], "--sslmode takes"),
            (&["--frobnicate"], "unknown option --frobnicate"),
            (&["postgres://u:hunter2@h/d"], "not shown"),
            (&["--token=hunter2"], "not shown"),
        ] {
            let e = parse_strs(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
