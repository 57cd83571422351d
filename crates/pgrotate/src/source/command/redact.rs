//! Redacting a failing program's stderr: every secret it may carry hidden,
//! its own words kept.

use crate::url::redact;

/// What a hidden value is replaced with.
const HIDDEN: &str = "[redacted]";

/// A name holding one of these (ignoring case) names a secret: a header
/// (`Authorization`, `Set-Cookie`, `X-Vault-Token`, `X-Api-Key`), a JSON
/// key (`"client_secret"`), a variable (`PGPASSWORD`), an option
/// (`--password`). `pass` covers password, passwd and passphrase.
const SENSITIVE: &[&str] = &[
    "pass",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "cookie",
    "session",
    "signature",
];

/// Words after which an opaque word is a credential (`Bearer …`).
const SCHEMES: &[&str] = &["bearer", "basic", "token"];

/// How long an opaque word after a scheme word must be to be hidden.
const SCHEME_TOKEN_MIN: usize = 16;

/// How long an opaque word standing alone must be to be hidden (with a
/// digit, a letter and a stretch of 16 without `/`, `.` or `=`: a token,
/// a UUID, a JWT, a hash; not a path, a host name or `key=host`).
const OPAQUE_TOKEN_MIN: usize = 32;

/// Hides what a failing program's stderr may carry besides URLs
/// (`curl -v`, `set -x`, a secret tool's JSON): the values of sensitive
/// headers, JSON keys, assignments and options (see [`SENSITIVE`]), the
/// credential after `Bearer`/`Basic`/`Token`, and any long opaque token.
/// Every URL's password is hidden first by [`redact`]. The program's own
/// words stay: it errs on the side of hiding a value, never a whole text.
pub(super) fn redact_stderr(text: &str) -> String {
    let text = redact(text);
    let b = text.as_bytes();
    let mut hidden = named_values(b);
    hidden.extend(scheme_tokens(b));
    hidden.extend(prose_values(b));
    hidden.extend(opaque_tokens(b));
    hidden.sort_by_key(|r| r.start);
    // Every range starts and ends next to an ASCII byte or at an end of
    // the text, so slicing at them stays on char boundaries.
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in hidden {
        if r.end <= at {
            continue;
        }
        if r.start >= at {
            out.push_str(&text[at..r.start]);
            out.push_str(HIDDEN);
        }
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Header, variable, JSON key and option name characters.
fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Base64, base64url, hex and JWT characters.
fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'_' | b'-' | b'.' | b'~')
}

fn is_sensitive(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SENSITIVE.iter().any(|w| lower.contains(w))
}

/// The first maximal run of bytes `is` accepts at or after `from`.
fn run_at(b: &[u8], from: usize, is: fn(u8) -> bool) -> Option<std::ops::Range<usize>> {
    let start = from + b.get(from..)?.iter().position(|&c| is(c))?;
    let len = b[start..].iter().take_while(|&&c| is(c)).count();
    Some(start..start + len)
}

fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// Where a bare value ends.
#[derive(Clone, Copy)]
enum Stop {
    /// `Header: value …` or `key: value` (YAML): the end of the line, or a
    /// quote (`-H 'Authorization: Bearer …'` in a traced command line).
    EndOfLine,
    /// A JSON number or literal: `,`, `}`, `]`, white space.
    JsonScalar,
    /// `key=value`, `--option value`: white space, `&`, `;`, `,`, a quote.
    Word,
}

impl Stop {
    fn stops(self, c: u8) -> bool {
        match self {
            Stop::EndOfLine => matches!(c, b'\n' | b'\r' | b'\'' | b'"'),
            Stop::JsonScalar => c.is_ascii_whitespace() || matches!(c, b',' | b'}' | b']' | b'"'),
            Stop::Word => c.is_ascii_whitespace() || matches!(c, b'&' | b';' | b',' | b'\'' | b'"'),
        }
    }
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n' || c == b'\r')
        .map_or(b.len(), |p| from + p)
}

/// The value starting at `start`: the inside of a quoted string (`"…"`
/// with backslash escapes, `\"…\"` in escaped JSON, `'…'`), a whole
/// `{…}`/`[…]`, or a bare value up to `stop`. An unclosed quote hides to
/// the end of the line, an unclosed bracket to the end of the text.
fn value_at(b: &[u8], start: usize, stop: Stop) -> Option<std::ops::Range<usize>> {
    let first = *b.get(start)?;
    let range = if first == b'\\' && b.get(start + 1) == Some(&b'"') {
        let from = start + 2;
        let end = b[from..]
            .windows(2)
            .position(|w| w == b"\\\"")
            .map_or_else(|| line_end(b, from), |p| from + p);
        from..end
    } else if first == b'"' || first == b'\'' {
        let from = start + 1;
        let mut i = from;
        let end = loop {
            match b.get(i) {
                None | Some(b'\n' | b'\r') => break i,
                Some(&c) if c == first => break i,
                Some(b'\\') if first == b'"' => i += 2,
                Some(_) => i += 1,
            }
        };
        from..end.min(b.len())
    } else if first == b'{' || first == b'[' {
        start..balanced_end(b, start)
    } else {
        let len = b[start..].iter().take_while(|&&c| !stop.stops(c)).count();
        start..start + len
    };
    (!range.is_empty()).then_some(range)
}

/// Just past the bracket closing the one at `start` (strings skipped, and
/// escaped quotes of escaped JSON taken as plain characters), or the end.
fn balanced_end(b: &[u8], start: usize) -> usize {
    let (mut depth, mut in_string, mut i) = (0usize, false, start);
    while i < b.len() {
        match (b[i], in_string) {
            (b'\\', _) => i += 1,
            (b'"', _) => in_string = !in_string,
            (b'{' | b'[', false) => depth += 1,
            (b'}' | b']', false) => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// The values of sensitive names: `Name: value`, `"name": value`,
/// `name=value`, `--name value`, and the `user:password` of `-u`/`--user`.
fn named_values(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut hidden = Vec::new();
    let mut from = 0;
    while let Some(run) = run_at(b, from, is_name_byte) {
        from = run.end;
        // Name bytes are ASCII.
        let name = std::str::from_utf8(&b[run.clone()]).unwrap_or_default();
        let bare = name.trim_start_matches('-');
        let option = bare.len() < name.len();
        let user_option = name == "-u" || name == "--user";
        if !user_option && !is_sensitive(bare) {
            continue;
        }
        // `"name":` or `'name':` (also `\"name\":`): a JSON or dict key.
        let mut j = run.end;
        let quoted_key = run.start > 0 && {
            let open = b[run.start - 1];
            let close = match b.get(j) {
                Some(b'\\') if b.get(j + 1) == Some(&b'"') => Some((b'"', 2)),
                Some(&c @ (b'"' | b'\'')) => Some((c, 1)),
                _ => None,
            };
            match close {
                Some((c, len)) if c == open => {
                    j += len;
                    true
                }
                _ => false,
            }
        };
        j = skip_blanks(b, j);
        let value = match b.get(j) {
            Some(b':') if !b[j + 1..].starts_with(b"//") => {
                let stop = if quoted_key {
                    Stop::JsonScalar
                } else {
                    Stop::EndOfLine
                };
                value_at(b, skip_blanks(b, j + 1), stop)
            }
            Some(b'=') => value_at(b, skip_blanks(b, j + 1), Stop::Word),
            Some(&c) if (option || user_option) && j > run.end && c != b'-' => {
                value_at(b, j, Stop::Word)
            }
            _ => None,
        };
        if let Some(v) = value {
            // What is hidden needs no more looking at (and the scan stays
            // linear).
            from = from.max(v.end);
            hidden.push(v);
        }
    }
    hidden
}

/// The opaque word after `Bearer`, `Basic` or `Token`, when long enough.
fn scheme_tokens(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut hidden = Vec::new();
    let mut from = 0;
    while let Some(run) = run_at(b, from, is_name_byte) {
        from = run.end;
        if !SCHEMES
            .iter()
            .any(|s| b[run.clone()].eq_ignore_ascii_case(s.as_bytes()))
        {
            continue;
        }
        let start = skip_blanks(b, run.end);
        if start == run.end {
            continue;
        }
        let len = b[start..].iter().take_while(|&&c| is_token_byte(c)).count();
        if len >= SCHEME_TOKEN_MIN {
            hidden.push(start..start + len);
            from = start + len;
        }
    }
    hidden
}

/// Nouns after which, in prose, the next word may be the secret itself
/// ("connecting with password Sekret0021").
const PROSE_NOUNS: &[&str] = &["password", "passwd", "passphrase", "pwd", "secret", "token"];

/// The word after a [`PROSE_NOUNS`] noun (and an optional `is`), when it
/// looks like a value rather than English: it has a digit, a capital after
/// its first letter, or a symbol. "password authentication failed for
/// user app" keeps every word; "password Sekret0021" and "password is
/// hunter2" do not.
fn prose_values(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let is_word = |c: u8| !c.is_ascii_whitespace() && !matches!(c, b'"' | b'\'' | b',' | b';');
    let mut hidden = Vec::new();
    let mut from = 0;
    while let Some(run) = run_at(b, from, |c| c.is_ascii_alphabetic()) {
        from = run.end;
        if !PROSE_NOUNS
            .iter()
            .any(|n| b[run.clone()].eq_ignore_ascii_case(n.as_bytes()))
        {
            continue;
        }
        let mut start = skip_blanks(b, run.end);
        if start == run.end {
            continue;
        }
        if b[start..].starts_with(b"is ") {
            start = skip_blanks(b, start + 2);
        }
        let len = b[start..].iter().take_while(|&&c| is_word(c)).count();
        let word = &b[start..start + len];
        let looks_like_value = word.iter().any(u8::is_ascii_digit)
            || word.iter().skip(1).any(u8::is_ascii_uppercase)
            || word
                .iter()
                .any(|c| !c.is_ascii_alphanumeric() && !matches!(c, b'.' | b':' | b'-'));
        if len > 0 && looks_like_value {
            hidden.push(start..start + len);
            from = start + len;
        }
    }
    hidden
}

/// Prefixes of well-known credentials (GitHub, GitLab, Slack, AWS, Vault,
/// Stripe, OpenAI-style keys): a word starting with one is hidden whatever
/// its length.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "AKIA",
    "ASIA",
    "hvs.",
    "hvb.",
    "sk_live_",
    "rk_live_",
    "sk-",
];

/// A word after `-p` glued to it (`mysql -pS3cret`): the password option of
/// several CLIs. A port (`psql -p5432`, all digits) stays.
fn glued_password(word: &[u8]) -> bool {
    word.len() > 2 && word.starts_with(b"-p") && !word[2..].iter().all(u8::is_ascii_digit)
}

/// Long opaque words anywhere (see [`OPAQUE_TOKEN_MIN`]), words with a
/// known credential prefix, and `-p<password>`.
fn opaque_tokens(b: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut hidden = Vec::new();
    let mut from = 0;
    while let Some(run) = run_at(b, from, is_token_byte) {
        from = run.end;
        let word = &b[run.clone()];
        if glued_password(word) {
            hidden.push(run.start + 2..run.end);
            continue;
        }
        if word.len() >= 8
            && TOKEN_PREFIXES
                .iter()
                .any(|p| word.starts_with(p.as_bytes()))
        {
            hidden.push(run);
            continue;
        }
        if word.len() >= OPAQUE_TOKEN_MIN
            && word.iter().any(u8::is_ascii_digit)
            && word.iter().any(u8::is_ascii_alphabetic)
            && word
                .split(|&c| matches!(c, b'/' | b'.' | b'='))
                .any(|part| part.len() >= 16)
        {
            hidden.push(run);
        }
    }
    hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redacts `text` and checks that no `secret` is left in it.
    #[track_caller]
    fn hides(text: &str, secrets: &[&str]) -> String {
        let out = redact_stderr(text);
        for s in secrets {
            assert!(!out.contains(s), "{s:?} left in {out:?}");
        }
        out
    }

    #[test]
    fn hides_a_password_written_out_in_prose_and_keeps_english() {
        let out = hides(
            "connecting with password Sekret0021\nthe password is hunter2; token: x\n",
            &["Sekret0021", "hunter2"],
        );
        assert!(out.contains("connecting with password [redacted]"), "{out}");
        let kept = redact_stderr("FATAL: password authentication failed for user \"app\"");
        assert_eq!(
            kept,
            "FATAL: password authentication failed for user \"app\""
        );
    }

    #[test]
    fn hides_sensitive_header_values() {
        let out = hides(
            "> GET /v1/secret/data/db HTTP/1.1\n\
             > Authorization: Bearer abc.DEF-ghi_123\n\
             > Proxy-Authorization: Basic dXNlcjpodW50ZXIy\n\
             > Cookie: sid=c00kie1; theme=dark\n\
             < Set-Cookie: session=c00kie2; Path=/; HttpOnly\n\
             > X-Vault-Token: hvs.vaulttok\n\
             > X-Api-Key: apikey9\n\
             > X-Auth-Thing: authval\n\
             > Private-Key-Id: keyid7\n\
             < Content-Type: application/json\n",
            &[
                "abc.DEF-ghi_123",
                "dXNlcjpodW50ZXIy",
                "c00kie1",
                "theme=dark",
                "c00kie2",
                "hvs.vaulttok",
                "apikey9",
                "authval",
                "keyid7",
            ],
        );
        // The header names and harmless headers stay.
        for kept in [
            "> GET /v1/secret/data/db HTTP/1.1\n",
            "> Authorization: ",
            "< Set-Cookie: ",
            "> X-Vault-Token: ",
            "< Content-Type: application/json",
        ] {
            assert!(out.contains(kept), "{kept:?} lost from {out:?}");
        }
    }

    #[test]
    fn hides_headers_in_traced_command_lines() {
        let out = hides(
            "+ curl -sf -H 'Authorization: Bearer tr4cedtoken' -H \"X-Vault-Token: tr4cedvault\" https://vault.internal/v1/db",
            &["tr4cedtoken", "tr4cedvault"],
        );
        assert!(out.starts_with("+ curl -sf -H 'Authorization: "), "{out}");
        assert!(out.ends_with("https://vault.internal/v1/db"), "{out}");
    }

    #[test]
    fn hides_json_values_of_secret_keys() {
        let out = hides(
            r#"{"user": "app", "password": "jsonpw1", "Token":"jsontok2", "client_secret": 314159, "api_key": "with \"escaped\" quote", "db_credentials": {"u": "x", "p": "nested3"}, "passwd": ["arr4"], "pwd": null}"#,
            &[
                "jsonpw1", "jsontok2", "314159", "escaped", "quote", "nested3", "arr4",
            ],
        );
        assert!(out.contains(r#""user": "app""#), "{out}");
        assert!(out.contains(r#""password": ""#), "{out}");
        // Escaped JSON inside a log line, and single-quoted (Python) dicts.
        hides(
            r#"msg="{\"auth\":{\"client_token\":\"esc5\"},\"lease\":1}" data={'secret_key': 'py6'}"#,
            &["esc5", "py6"],
        );
        // Pretty-printed, over several lines.
        hides(
            "{\n  \"auth\": {\n    \"client_token\": \"multi7\",\n    \"accessor\": \"multi8\"\n  }\n}",
            &["multi7", "multi8"],
        );
    }

    #[test]
    fn hides_assignments_and_option_values() {
        let out = hides(
            "+ PGPASSWORD=assign1 psql -h db.internal\n\
             + export API_TOKEN=\"assign 2\" SECRET_KEY='assign 3'\n\
             + token=assign4; access_key=assign5&x=1\n\
             spring.datasource.password=assign6\n\
             password: yaml7\n\
             + vault login --password cli8 --token=cli9 -secret cli10 --no-password -h db\n\
             + curl -u app:cli11 https://api.internal\n",
            &[
                "assign1", "assign 2", "assign 3", "assign4", "assign5", "assign6", "yaml7",
                "cli8", "cli9", "cli10", "cli11",
            ],
        );
        for kept in [
            " psql -h db.internal\n",
            "&x=1",
            "--no-password -h db\n",
            " https://api.internal",
        ] {
            assert!(out.contains(kept), "{kept:?} lost from {out:?}");
        }
    }

    #[test]
    fn hides_long_opaque_tokens() {
        let out = hides(
            "curl: (22) The requested URL returned error: 401 (Bearer Zm9vYmFyYmF6cXV4MTIzNDU2)\n\
             WWW-Authenticate was ignored; retrying with basic 0123456789abcdefABCDEF==\n\
             hvs.CAESIJ3kZ9pQ2xLm8vTn4RbW1sYc7uHe5jKa0gFd6oPiNqX\n\
             lease 3f2b8c1e-9d4a-4e7b-a1c6-5f0e2d9b7a48 expired\n\
             eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhcHAifQ.c2lnbmF0dXJlMTIzNDU2Nzg5MA\n",
            &[
                "Zm9vYmFyYmF6cXV4MTIzNDU2",
                "0123456789abcdefABCDEF",
                "CAESIJ3kZ9pQ2xLm8vTn4RbW1sYc7uHe5jKa0gFd6oPiNqX",
                "3f2b8c1e-9d4a-4e7b-a1c6-5f0e2d9b7a48",
                "eyJhbGciOiJIUzI1NiJ9",
            ],
        );
        assert!(
            out.starts_with("curl: (22) The requested URL returned error: 401 (Bearer "),
            "{out}"
        );
        assert!(out.contains("\nlease "), "{out}");
        assert!(out.contains(" expired\n"), "{out}");
    }

    #[test]
    fn still_hides_urls_passwords() {
        hides(
            "cannot use postgres://app:urlpw1@db.internal:5432/app?password=urlpw2&sslmode=require",
            &["urlpw1", "urlpw2"],
        );
    }

    #[test]
    fn hides_known_token_prefixes_and_glued_passwords() {
        let out = hides(
            "token ghp_abcdefghij1234567890 and mysql -u app -pS3cr3tPw9 -p5432",
            &["ghp_abcdefghij1234567890", "S3cr3tPw9"],
        );
        assert!(out.contains("-p5432"), "{out}");
        assert!(out.contains("mysql -u"), "{out}");
    }

    #[test]
    fn keeps_the_programs_own_words() {
        for text in [
            "psql: error: connection to server at \"db.internal\" (10.0.0.7), port 5432 failed: Connection refused",
            "FATAL:  password authentication failed for user \"app\"",
            " ▸    Couldn't find that app.\n ▸    Error ID: not_found",
            "Error: Missing required flag:\n -a, --app APP  app to run command against",
            "vault: permission denied; token expired, run `vault login` again",
            "Press any key to open up the browser to login or q to exit",
            "*   Trying 10.0.0.1:443...\n* Connected to api.heroku.com (10.0.0.1) port 443\n< HTTP/1.1 401 Unauthorized\n< Content-Type: application/json",
            "curl: (7) Failed to connect to 127.0.0.1 port 5432 after 0 ms: Couldn't connect to server",
            "    at Object.run (/usr/lib/heroku/node_modules/@oclif/core/lib/main.js:42:10)",
            "HEROKU_POSTGRESQL_VIOLET_URL is not set on app my-app-1234; DATABASE_CONNECTION_POOL_URL neither",
            "2024-05-01T12:00:00.123456Z request_id=1a2b3c4d host=ec2-52-1-2-3.compute-1.amazonaws.com",
            "exit status: 1",
            "",
        ] {
            assert_eq!(redact_stderr(text), text);
        }
    }
}
