//! Which pool-level statements are refused before they are sent, and why:
//! the one table. A pool-level statement carries no session state and
//! holds no connection beyond its own answer, so a statement that would
//! leave state behind, or that needs the connection to itself after its
//! answer, belongs in `Pool::get`, `run` or `transaction`.

use crate::error::{Error, ErrorKind};

/// Whether the statement shares its connection with other callers'
/// statements (pipelined) or has one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shared {
    /// Pipelined with other callers' statements.
    Yes,
    /// On a connection of its own (pipelining off, pooler mode).
    No,
}

/// An error of kind `Query` when `sql` is refused as a pool-level
/// statement (its leading comments skipped): `DISCARD ALL` and
/// `DEALLOCATE` always (they drop the prepared statements the pool keeps
/// on the connection); `COPY … FROM STDIN` / `TO STDOUT` always (its data would
/// need the connection after the answer: tokio-postgres fails with
/// "unexpected message" and the connection is lost, or on a shared one
/// the copy-in swallows other callers' statements); when shared, also what
/// would leave state on the connection every caller shares — a
/// transaction block nobody commits (`BEGIN`, `START TRANSACTION`), or a
/// session setting they would all see (`SET` other than `SET LOCAL`,
/// `RESET`, `LISTEN`, `UNLISTEN`). Other forms (`set_config(…, false)`,
/// a temporary table) are not caught: the docs say what a pool-level
/// statement must not do.
pub(crate) fn refused(sql: &str, shared: Shared) -> Result<(), Error> {
    match why(sql, shared) {
        Some(why) => Err(Error::new(ErrorKind::Query, why)),
        None => Ok(()),
    }
}

/// `sql` after its leading whitespace and comments (`-- …` to the end of
/// the line, `/* … */`, nested as PostgreSQL nests them).
fn without_leading_comments(mut sql: &str) -> &str {
    loop {
        sql = sql.trim_start();
        if let Some(rest) = sql.strip_prefix("--") {
            sql = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if sql.starts_with("/*") {
            let mut depth = 0usize;
            let mut end = sql.len();
            let bytes = sql.as_bytes();
            let mut i = 0;
            while i + 1 < bytes.len() {
                match (bytes[i], bytes[i + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        i += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            sql = &sql[end..];
        } else {
            return sql;
        }
    }
}

fn why(sql: &str, shared: Shared) -> Option<&'static str> {
    let mut words = without_leading_comments(sql)
        .split(|c: char| c.is_whitespace() || c == ';' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase);
    let first = words.next();
    if first.as_deref() == Some("copy") {
        return words.any(|w| w == "stdin" || w == "stdout").then_some(
            "COPY ... FROM STDIN / TO STDOUT is refused as a pool-level statement: its data \
             needs the connection to itself; use Pool::get and the client's copy_in / copy_out",
        );
    }
    let second = words.next();
    let discards = matches!(
        (first.as_deref(), second.as_deref()),
        (Some("deallocate"), _) | (Some("discard"), Some("all"))
    );
    if discards {
        return Some(
            "DISCARD ALL / DEALLOCATE is refused as a pool-level statement: it drops the \
             prepared statements the pool keeps on the connection for every caller; use \
             Pool::get for a session of your own",
        );
    }
    if shared == Shared::No {
        return None;
    }
    match (first.as_deref(), second.as_deref()) {
        (Some("begin"), _) | (Some("start"), Some("transaction")) => Some(
            "a pool-level statement runs in a transaction of its own on a connection shared with \
             other callers: BEGIN / START TRANSACTION is refused; use Pool::transaction",
        ),
        (Some("set"), second) if second != Some("local") => Some(
            "a pool-level statement runs on a connection shared with other callers: a SET would \
             change their session too and is refused; use SET LOCAL inside Pool::transaction, \
             or the after_connect hook for every connection",
        ),
        (Some("reset" | "listen" | "unlisten"), _) => Some(
            "a pool-level statement runs on a connection shared with other callers: session \
             statements (RESET, LISTEN) are refused; use Pool::get for a session of your own",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Shared, why};

    #[test]
    fn a_statement_that_would_leave_state_on_a_shared_connection_is_told_from_the_others() {
        for sql in [
            "BEGIN",
            " begin;",
            "Begin Isolation Level Serializable",
            "START TRANSACTION",
            "set search_path = x",
            "SET SESSION statement_timeout = 1",
            "reset all",
            "LISTEN jobs",
            "unlisten *",
            "/* app=web */ SET application_name = 'x'",
            "-- app=web\nSET application_name = 'x'",
            "/* a /* nested */ comment */\n  begin",
        ] {
            assert!(why(sql, Shared::Yes).is_some(), "{sql}");
            assert!(why(sql, Shared::No).is_none(), "{sql}");
        }
        for sql in [
            "select 1",
            "insert into begin values (1)",
            "start",
            "",
            "commit",
            "set local statement_timeout = 1",
            "update t set x = 1",
            "copy t from '/var/lib/data/stdin.csv'",
            "select 'copy t from stdin'",
        ] {
            assert!(why(sql, Shared::Yes).is_none(), "{sql}");
        }
    }

    #[test]
    fn dropping_the_pools_prepared_statements_is_refused_whether_shared_or_not() {
        for sql in [
            "DISCARD ALL",
            "discard all;",
            "DEALLOCATE ALL",
            "deallocate s1",
            "/* x */ discard all",
        ] {
            for shared in [Shared::Yes, Shared::No] {
                let why = why(sql, shared).unwrap_or_else(|| panic!("{sql} {shared:?}"));
                assert!(why.contains("DISCARD"), "{why}");
            }
        }
        for sql in [
            "discard plans",
            "discard temp",
            "select 'discard all'",
            "-- discard all\nselect 1",
        ] {
            assert!(why(sql, Shared::Yes).is_none(), "{sql}");
        }
    }

    #[test]
    fn leading_comments_are_skipped_to_the_first_word() {
        use super::without_leading_comments as skip;
        assert_eq!(skip("  -- a\n -- b\n select 1"), "select 1");
        assert_eq!(skip("/* a /* b */ c */ select 1"), "select 1");
        assert_eq!(skip("/* never closed"), "");
        assert_eq!(skip("-- only a comment"), "");
        assert_eq!(skip("select /* inner */ 1"), "select /* inner */ 1");
    }

    #[test]
    fn a_copy_with_client_data_is_refused_whether_shared_or_not() {
        for sql in [
            "copy t from stdin",
            "COPY t (k) FROM STDIN WITH (FORMAT csv)",
            "copy (select 1) to stdout",
            "Copy t To Stdout;",
        ] {
            for shared in [Shared::Yes, Shared::No] {
                let why = why(sql, shared).unwrap_or_else(|| panic!("{sql} {shared:?}"));
                assert!(why.contains("copy_in"), "{why}");
            }
        }
    }
}
