//! The message framing: the backend's messages ([`Reader`]) and the
//! frontend's ([`Writer`]) followed byte by byte, each one told to the
//! [`Wire`].

use std::sync::atomic::Ordering;

use super::{Expect, Wire};

/// The longest body the reader keeps to look at (`ReadyForQuery`,
/// `ParameterStatus`); longer ones are skipped.
const KEEP_BODY: usize = 256;

/// Follows the backend's messages: one type byte, a length, a body.
#[derive(Debug, Default)]
pub(super) struct Reader {
    header: [u8; 5],
    have: usize,
    /// Body bytes still to come of the current message.
    left: usize,
    kind: u8,
    /// Whether the current message's body is kept ([`kept`]).
    keep: bool,
    body: Vec<u8>,
}

impl Reader {
    pub(super) fn feed(&mut self, mut bytes: &[u8], wire: &Wire) {
        while !bytes.is_empty() {
            if self.have == 0
                && let Some((kind, body, rest)) = whole_message(bytes)
            {
                // The common case: a whole message in this read, looked
                // at where it lies.
                let kept = if kept(kind, body.len()) {
                    &body[..body.len().min(KEEP_BODY)]
                } else {
                    &[]
                };
                message(kind, kept, wire);
                bytes = rest;
                continue;
            }
            if self.have < 5 {
                let take = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < 5 {
                    return;
                }
                self.kind = self.header[0];
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                self.left = len.saturating_sub(4);
                self.keep = kept(self.kind, self.left);
                self.body.clear();
                if self.left == 0 {
                    self.message(wire);
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            if self.keep {
                let room = KEEP_BODY.saturating_sub(self.body.len()).min(take);
                self.body.extend_from_slice(&bytes[..room]);
            }
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.message(wire);
            }
        }
    }

    /// The message followed across reads is complete.
    fn message(&mut self, wire: &Wire) {
        message(self.kind, &self.body, wire);
        self.have = 0;
        self.body.clear();
    }
}

/// Whether a message's body is kept to look at: a `ReadyForQuery`, a
/// `ParameterStatus` or a `CommandComplete` of at most [`KEEP_BODY`] bytes
/// (a longer one is none the pool looks for), and the beginning of an
/// `ErrorResponse` (its severity and SQLSTATE come in its first fields).
fn kept(kind: u8, body_len: usize) -> bool {
    match kind {
        b'E' => true,
        b'Z' | b'S' | b'C' => body_len <= KEEP_BODY,
        _ => false,
    }
}

/// A whole message at the start of `bytes`: its type, its body, and what
/// follows it.
fn whole_message(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&[kind, a, b, c, d], after) = bytes.split_first_chunk::<5>()?;
    let body_len = (u32::from_be_bytes([a, b, c, d]) as usize).saturating_sub(4);
    (after.len() >= body_len).then(|| {
        let (body, rest) = after.split_at(body_len);
        (kind, body, rest)
    })
}

/// What one backend message tells the wire (`body`: as much of it as is
/// kept).
fn message(kind: u8, body: &[u8], wire: &Wire) {
    match kind {
        b'Z' => {
            if let Some(&status) = body.first() {
                wire.ready_for_query(status);
            }
        }
        b'S' => {
            let mut parts = body.split(|b| *b == 0);
            if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
                wire.parameter(name, value);
            }
        }
        b'C' => wire.command_complete(body),
        b'E' => wire.error(field(body, b'V', b'S'), field(body, b'C', b'C')),
        b'G' => wire.copy_in(),
        _ => {}
    }
}

/// A field of an `ErrorResponse` body: `kind`, else `fallback` — the
/// severity is `V` (never localized, PostgreSQL 9.6+), else `S`; the
/// SQLSTATE is `C`.
fn field(body: &[u8], kind: u8, fallback: u8) -> &[u8] {
    let mut second: &[u8] = b"";
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((k, v)) if *k == kind => return v,
            Some((k, v)) if *k == fallback && second.is_empty() => second = v,
            _ => {}
        }
    }
    second
}

/// Follows the frontend's messages: first the startup message (a length,
/// no type byte), then typed ones.
#[derive(Debug, Default)]
pub(super) struct Writer {
    started: bool,
    header: [u8; 5],
    have: usize,
    left: usize,
    /// The type of the last message sent.
    last: u8,
    /// A `Parse`, `Bind` or `Execute` was sent since the last `Sync`.
    work_since_sync: bool,
}

impl Writer {
    pub(super) fn feed(&mut self, mut bytes: &[u8], wire: &Wire) {
        while !bytes.is_empty() {
            if self.started
                && self.have == 0
                && let Some((kind, _, rest)) = whole_message(bytes)
            {
                // The common case: a whole message in this write.
                self.sent(kind, wire);
                bytes = rest;
                continue;
            }
            let header_len = if self.started { 5 } else { 4 };
            if self.have < header_len {
                let take = (header_len - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < header_len {
                    return;
                }
                let len_at = header_len - 4;
                let len = u32::from_be_bytes([
                    self.header[len_at],
                    self.header[len_at + 1],
                    self.header[len_at + 2],
                    self.header[len_at + 3],
                ]) as usize;
                self.left = len.saturating_sub(4);
                if self.started {
                    self.sent(self.header[0], wire);
                }
                if self.left == 0 {
                    self.started = true;
                    self.have = 0;
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.started = true;
                self.have = 0;
            }
        }
    }

    /// A frontend message of type `kind` goes out (after the startup).
    fn sent(&mut self, kind: u8, wire: &Wire) {
        if matches!(kind, b'Q' | b'E' | b'F') {
            wire.runs_sent.fetch_add(1, Ordering::AcqRel);
        }
        match kind {
            b'Q' => wire.expect(Expect::Query),
            b'S' => wire.expect(Expect::Sync {
                after_execute: self.last == b'E',
                closes_only: !std::mem::take(&mut self.work_since_sync),
            }),
            b'F' => wire.expect(Expect::FunctionCall),
            b'P' | b'B' | b'E' => self.work_since_sync = true,
            _ => {}
        }
        self.last = kind;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::wire::{LastEnd, TxStatus};

    fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn startup() -> Vec<u8> {
        let body = b"\x00\x03\x00\x00user\x00app\x00\x00";
        let mut m = (body.len() as u32 + 4).to_be_bytes().to_vec();
        m.extend_from_slice(body);
        m
    }

    fn observed() -> (Arc<Wire>, Reader, Writer) {
        let wire = Arc::new(Wire::default());
        wire.observed.store(true, Ordering::Release);
        (wire, Reader::default(), Writer::default())
    }

    #[test]
    fn the_status_of_every_ready_for_query_is_kept_byte_by_byte() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        let mut server = msg(b'R', &[0, 0, 0, 0]);
        server.extend(msg(b'S', b"in_hot_standby\0off\0"));
        server.extend(msg(b'K', &[0; 8]));
        server.extend(msg(b'Z', b"I"));
        // Split at every byte: framing survives any read size.
        for b in &server {
            r.feed(std::slice::from_ref(b), &wire);
        }
        assert_eq!(wire.tx_status(), TxStatus::Idle);
        assert_eq!(wire.unanswered(), Some(0));
        assert_eq!(wire.in_hot_standby(), Some(false));

        let mut client = msg(b'Q', b"BEGIN; INSERT INTO t VALUES (42)\0");
        client.extend(msg(b'P', b"\0select 1\0\0\0"));
        client.extend(msg(b'B', &[0; 10]));
        client.extend(msg(b'E', &[0; 5]));
        client.extend(msg(b'S', b""));
        w.feed(&client[..7], &wire);
        w.feed(&client[7..], &wire);
        assert_eq!(wire.unanswered(), Some(2), "a Query and a Sync in flight");
        let mut answers = msg(b'C', b"INSERT 0 1\0");
        answers.extend(msg(b'Z', b"T"));
        r.feed(&answers, &wire);
        assert_eq!(wire.tx_status(), TxStatus::InTransaction);
        assert_eq!(wire.unanswered(), Some(1));
        let mut answers = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
        answers.extend(msg(b'Z', b"E"));
        r.feed(&answers, &wire);
        assert_eq!(wire.tx_status(), TxStatus::Failed);
        assert_eq!(wire.unanswered(), Some(0));
        // A promotion is reported as a parameter change.
        r.feed(&msg(b'S', b"in_hot_standby\0on\0"), &wire);
        assert_eq!(wire.in_hot_standby(), Some(true));
    }

    #[test]
    fn a_copy_in_ignores_the_sync_after_its_execute() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        // tokio-postgres's copy_in: Bind, Execute, Sync; CopyData, CopyDone, Sync.
        let mut client = msg(b'B', &[0; 10]);
        client.extend(msg(b'E', &[0; 5]));
        client.extend(msg(b'S', b""));
        w.feed(&client, &wire);
        r.feed(&msg(b'G', &[0, 0, 0]), &wire);
        let mut client = msg(b'd', b"1\n");
        client.extend(msg(b'c', b""));
        client.extend(msg(b'S', b""));
        w.feed(&client, &wire);
        let mut answers = msg(b'C', b"COPY 1\0");
        answers.extend(msg(b'Z', b"I"));
        r.feed(&answers, &wire);
        assert_eq!(wire.unanswered(), Some(0), "two Syncs, one answer");
        // A simple-query COPY: one Query, one answer.
        w.feed(&msg(b'Q', b"copy t from stdin\0"), &wire);
        r.feed(&msg(b'G', &[0, 0, 0]), &wire);
        w.feed(&msg(b'c', b""), &wire);
        assert_eq!(wire.unanswered(), Some(1));
        let mut answers = msg(b'C', b"COPY 0\0");
        answers.extend(msg(b'Z', b"I"));
        r.feed(&answers, &wire);
        assert_eq!(wire.unanswered(), Some(0));
    }

    #[test]
    fn a_statement_close_in_flight_is_no_work_a_bind_and_execute_are() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        // tokio-postgres closing a statement it dropped: Close, Sync.
        let mut close = msg(b'C', b"Ss1\0");
        close.extend(msg(b'S', b""));
        w.feed(&close, &wire);
        assert_eq!(
            (wire.unanswered(), wire.unanswered_work()),
            (Some(1), Some(0))
        );
        let mut run = msg(b'B', &[0; 10]);
        run.extend(msg(b'E', &[0; 5]));
        run.extend(msg(b'S', b""));
        w.feed(&run, &wire);
        assert_eq!(
            (wire.unanswered(), wire.unanswered_work()),
            (Some(2), Some(1))
        );
        // A Sync of its own after the statement's: no work either.
        w.feed(&msg(b'S', b""), &wire);
        assert_eq!(
            (wire.unanswered(), wire.unanswered_work()),
            (Some(3), Some(1))
        );
        let mut answers = msg(b'3', b"");
        answers.extend(msg(b'Z', b"I"));
        answers.extend(msg(b'2', b""));
        answers.extend(msg(b'C', b"SELECT 1\0"));
        answers.extend(msg(b'Z', b"I"));
        r.feed(&answers, &wire);
        assert_eq!(
            (wire.unanswered(), wire.unanswered_work()),
            (Some(1), Some(0))
        );
    }

    /// Three pipelined statements (Bind, Execute, Sync each) after the
    /// startup, then the server's answers `answers`.
    fn three_in_flight(answers: &[u8]) -> Arc<Wire> {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        for _ in 0..3 {
            let mut client = msg(b'B', &[0; 10]);
            client.extend(msg(b'E', &[0; 5]));
            client.extend(msg(b'S', b""));
            w.feed(&client, &wire);
        }
        for b in answers {
            r.feed(std::slice::from_ref(b), &wire);
        }
        wire
    }

    const FATAL: &[u8] =
        b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";

    #[test]
    fn a_fatal_error_tells_each_statement_in_flight_whether_it_ran() {
        // The first answered, the second terminated while it ran.
        let mut answers = msg(b'2', b"");
        answers.extend(msg(b'C', b"INSERT 0 1\0"));
        answers.extend(msg(b'Z', b"I"));
        answers.extend(msg(b'E', FATAL));
        let wire = three_in_flight(&answers);
        assert_eq!(wire.requests(), Some((3, 1)));
        assert_eq!(
            wire.fatal(),
            Some(crate::wire::Fatal {
                at: 2,
                after_complete: false
            })
        );
        // The second never completed, the third was never reached; the
        // first had its answer (a failure of it would be unknown).
        assert!(wire.proves_not_run(2, 2, false));
        assert!(wire.proves_not_run(3, 3, false));
        assert!(!wire.proves_not_run(1, 1, false));
    }

    /// The first statement's answers `first`, then the `FATAL` `fatal`:
    /// where it came, and whether the first may have committed.
    fn fatal_after(first: &[&[u8]], fatal: &[u8]) -> Arc<Wire> {
        let mut answers = Vec::new();
        for m in first {
            answers.extend_from_slice(m);
        }
        answers.extend(msg(b'E', fatal));
        three_in_flight(&answers)
    }

    #[test]
    fn a_data_statement_terminated_after_it_completed_and_before_its_sync_did_not_commit() {
        // 57P01 is raised where the backend checks for interrupts: after
        // reading the Sync, before the commit (which holds them off).
        for tag in [
            &b"INSERT 0 1\0"[..],
            b"UPDATE 3\0",
            b"DELETE 0\0",
            b"SELECT 1\0",
            b"MERGE 2\0",
        ] {
            let wire = fatal_after(&[&msg(b'2', b""), &msg(b'C', tag)], FATAL);
            assert_eq!(
                wire.fatal().map(|f| (f.at, f.after_complete)),
                Some((1, false)),
                "{tag:?}"
            );
            assert!(wire.proves_not_run(1, 1, false), "{tag:?}");
            assert!(wire.proves_not_run(2, 2, false) && wire.proves_not_run(3, 3, false));
        }
    }

    #[test]
    fn a_statement_that_completed_before_another_fatal_error_may_have_committed() {
        let complete = msg(b'C', b"INSERT 0 1\0");
        // A statement that commits at its Execute (VACUUM, CREATE
        // DATABASE …), or a FATAL raised anywhere (57P02: the server
        // crashed, its SIGQUIT handler writes it at once).
        let crash: &[u8] = b"SFATAL\0VFATAL\0C57P02\0Mterminating connection because of crash\0\0";
        for wire in [
            fatal_after(&[&msg(b'2', b""), &msg(b'C', b"VACUUM\0")], FATAL),
            fatal_after(&[&msg(b'2', b""), &complete], crash),
        ] {
            assert_eq!(
                wire.fatal().map(|f| (f.at, f.after_complete)),
                Some((1, true))
            );
            assert!(
                !wire.proves_not_run(1, 1, false),
                "completed: its commit may have happened"
            );
            assert!(wire.proves_not_run(2, 2, false) && wire.proves_not_run(3, 3, false));
        }
    }

    #[test]
    fn a_simple_query_that_completed_before_the_fatal_error_may_have_committed() {
        // The simple protocol commits a statement before its
        // CommandComplete.
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        w.feed(&msg(b'Q', b"insert into t values (1)\0"), &wire);
        let mut answers = msg(b'C', b"INSERT 0 1\0");
        answers.extend(msg(b'E', FATAL));
        r.feed(&answers, &wire);
        assert_eq!(
            wire.fatal().map(|f| (f.at, f.after_complete)),
            Some((1, true))
        );
    }

    #[test]
    fn without_a_fatal_error_only_a_statement_never_written_or_refused_proves_it() {
        // The connection ends with no word from the server.
        let wire = three_in_flight(&[]);
        assert_eq!(wire.fatal(), None);
        assert!(
            !wire.proves_not_run(3, 3, false),
            "written: it may have run"
        );
        assert!(wire.proves_not_run(4, 4, false), "never written");
        assert!(
            wire.proves_not_run(2, 2, true),
            "its own error before CommandComplete"
        );
        assert!(!Wire::unobserved().proves_not_run(9, 9, false));
    }

    #[test]
    fn the_last_command_tag_says_how_a_transaction_ended() {
        let (wire, mut r, _) = observed();
        r.feed(&msg(b'C', b"ROLLBACK\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Rollback);
        r.feed(&msg(b'C', b"COMMIT\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Commit);
        r.feed(&msg(b'C', b"INSERT 0 1\0"), &wire);
        assert_eq!(wire.last_end(), LastEnd::Other);
    }

    #[test]
    fn long_bodies_are_skipped_without_losing_the_framing() {
        let (wire, mut r, _) = observed();
        let big = vec![7u8; 100_000];
        let mut bytes = msg(b'D', &big);
        bytes.extend(msg(b'S', &[b'x'; 1000]));
        bytes.extend(msg(b'Z', b"I"));
        for chunk in bytes.chunks(4096) {
            r.feed(chunk, &wire);
        }
        assert_eq!(wire.tx_status(), TxStatus::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_the_last_answer_within_its_bound() {
        let (wire, mut r, mut w) = observed();
        w.feed(&startup(), &wire);
        r.feed(&msg(b'Z', b"I"), &wire);
        assert!(wire.settled(Duration::ZERO).await);
        w.feed(&msg(b'Q', b"select pg_sleep(5)\0"), &wire);
        assert!(!wire.settled(Duration::from_millis(50)).await);
        let answer = {
            let wire = wire.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Reader::default().feed(&msg(b'Z', b"I"), &wire);
            })
        };
        assert!(wire.settled(Duration::from_secs(1)).await);
        answer.await.unwrap();
    }

    /// What a wire says after it has seen a stream.
    fn seen(wire: &Wire) -> impl PartialEq + std::fmt::Debug {
        (
            wire.tx_status(),
            wire.unanswered(),
            wire.unanswered_work(),
            wire.requests(),
            wire.progress(),
            wire.fatal(),
            wire.in_hot_standby(),
            wire.last_end(),
        )
    }

    #[test]
    fn whole_messages_and_messages_split_anywhere_tell_the_same() {
        // Both ways of reading: whole messages looked at where they lie,
        // and messages followed across reads of any size.
        let long_tag = [b"SELECT ".as_slice(), &[b'9'; 300], b"\0"].concat();
        let long_error = [
            b"SERROR\0VERROR\0C22012\0M".as_slice(),
            &[b'x'; 400],
            b"\0\0",
        ]
        .concat();
        let mut client = startup();
        let mut server = msg(b'R', &[0, 0, 0, 0]);
        server.extend(msg(b'S', b"in_hot_standby\0off\0"));
        server.extend(msg(b'Z', b"I"));
        for i in 0..40 {
            client.extend(msg(b'P', b"\0select 1\0\0\0"));
            client.extend(msg(b'B', &[0; 10]));
            client.extend(msg(b'E', &[0; 5]));
            client.extend(msg(b'S', b""));
            server.extend(msg(b'1', b""));
            server.extend(msg(b'2', b""));
            server.extend(msg(b'D', &[0, 1, 0, 0, 0, 1, b'1']));
            match i % 4 {
                0 => server.extend(msg(b'C', &long_tag)),
                1 => server.extend(msg(b'E', &long_error)),
                2 => server.extend(msg(b'C', b"BEGIN\0")),
                _ => server.extend(msg(b'C', b"COMMIT\0")),
            }
            server.extend(msg(b'Z', if i % 4 == 2 { b"T" } else { b"I" }));
        }
        server.extend(msg(b'E', FATAL));
        let (whole, mut r, mut w) = observed();
        w.feed(&client, &whole);
        r.feed(&server, &whole);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50 {
            let (split, mut r, mut w) = observed();
            for (bytes, feed) in [
                (&client, &mut |b: &[u8]| w.feed(b, &split) as _),
                (&server, &mut |b: &[u8]| r.feed(b, &split) as _),
            ] as [(&Vec<u8>, &mut dyn FnMut(&[u8])); 2]
            {
                let mut at = 0;
                while at < bytes.len() {
                    let n = rng.usize(1..=600).min(bytes.len() - at);
                    feed(&bytes[at..at + n]);
                    at += n;
                }
            }
            assert_eq!(seen(&split), seen(&whole));
        }
        assert_eq!(whole.unanswered(), Some(0));
        assert_eq!(whole.fatal().map(|f| f.at), Some(41));
    }

    #[test]
    fn a_long_command_tag_is_skipped_however_it_is_split() {
        // Over KEEP_BODY: none of it is kept, whole or in pieces, so what
        // the wire makes of the completion does not depend on the reads.
        let tag = [b"SELECT ".as_slice(), &[b'1'; 300], b"\0"].concat();
        let message = msg(b'C', &tag);
        for cuts in [vec![], vec![105], vec![105, 305], vec![6, 200, 250]] {
            let (wire, mut r, _) = observed();
            let mut at = 0;
            for cut in cuts.iter().copied().chain([message.len()]) {
                r.feed(&message[at..cut], &wire);
                at = cut;
            }
            assert!(r.body.is_empty() && !r.keep, "{cuts:?}");
            assert_eq!(
                wire.head_completed.load(Ordering::Acquire),
                1,
                "{cuts:?}: an unknown tag, not a data statement's"
            );
        }
    }
}
