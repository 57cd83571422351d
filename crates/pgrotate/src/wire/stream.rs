//! The observed stream: an `AsyncRead`/`AsyncWrite` wrapper that feeds
//! the framing as bytes go by, and the TLS connector that wraps each
//! connection it makes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::Wire;
use super::parse::{Reader, Writer};

/// A stream whose protocol is observed.
pub(crate) struct Observed<S> {
    inner: S,
    wire: Arc<Wire>,
    reader: Reader,
    writer: Writer,
    /// A write failed: see [`Observed::poll_failed`].
    failed: Option<Failed>,
    /// The read side has ended (end of stream, or an error).
    read_ended: bool,
}

/// A failed write's error, held back until the server's last answers are
/// read, at most until `bound`.
struct Failed {
    error: Option<io::Error>,
    bound: Pin<Box<tokio::time::Sleep>>,
}

/// How long a failed write waits for the rest of what the server sent.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl<S> Observed<S> {
    pub(crate) fn new(inner: S, wire: Arc<Wire>) -> Observed<S> {
        wire.observed.store(true, Ordering::Release);
        Observed {
            inner,
            wire,
            reader: Reader::default(),
            writer: Writer::default(),
            failed: None,
            read_ended: false,
        }
    }
}

impl<S> Drop for Observed<S> {
    /// The connection's task ended or was aborted: nothing more will be
    /// read, so whoever waits for an answer stops waiting.
    fn drop(&mut self) {
        self.wire.end();
    }
}

impl<S: AsyncRead + Unpin> Observed<S> {
    /// A write failed (`error`, the first time): the error is held back
    /// while the read side goes on, so tokio-postgres reads what the server
    /// sent before it closed — the answers of statements it ran, and the
    /// `FATAL` that tells the pipelined statements behind it that they
    /// never ran. A server that exits with requests unread in its socket (a
    /// pipeline, terminated) resets the connection, and the first failed
    /// write may come before the last answers are read: returned at once,
    /// the error would end the connection with those answers unread, their
    /// callers told "connection closed" about statements that ran. The
    /// error is returned once the read side has ended, or after [`DRAIN`]
    /// (what is left to read then is read for the wire only).
    fn poll_failed<T>(
        &mut self,
        cx: &mut Context<'_>,
        error: Option<io::Error>,
    ) -> Poll<io::Result<T>> {
        if let Some(error) = error {
            self.failed = Some(Failed {
                error: Some(error),
                bound: Box::pin(tokio::time::sleep(DRAIN)),
            });
        }
        let Some(failed) = self.failed.as_mut() else {
            return Poll::Ready(Err(io::Error::other("write failed")));
        };
        if !self.read_ended && failed.bound.as_mut().poll(cx).is_pending() {
            // The read side holds the task's waker for the server's bytes;
            // the bound holds it for the deadline.
            return Poll::Pending;
        }
        let error = failed.error.take();
        if !self.read_ended {
            self.read_for_the_wire(cx);
        }
        self.wire.end();
        Poll::Ready(Err(
            error.unwrap_or_else(|| io::Error::other("write failed"))
        ))
    }

    /// Reads what is there to read, for the wire only.
    fn read_for_the_wire(&mut self, cx: &mut Context<'_>) {
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.reader.feed(buf.filled(), &self.wire);
                }
                _ => return,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Observed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
        let got = buf.filled().len() - before;
        if read.is_err() || (got == 0 && buf.remaining() > 0) {
            this.read_ended = true;
            this.wire.end();
        }
        read?;
        this.reader.feed(&buf.filled()[before..], &this.wire);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Observed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.poll_failed(cx, None);
        }
        let written = {
            let sealed = this.wire.write_gate();
            if *sealed {
                // The pool is closing this connection (`Wire::seal`):
                // nothing more goes out. The task is woken by what it
                // reads, and aborted once the server has answered.
                return Poll::Pending;
            }
            let written = ready!(Pin::new(&mut this.inner).poll_write(cx, data));
            if let Ok(n) = written {
                this.writer.feed(&data[..n], &this.wire);
            }
            written
        };
        match written {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => this.poll_failed(cx, Some(e)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.poll_failed(cx, None);
        }
        match ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => this.poll_failed(cx, Some(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: TlsStream + Unpin> TlsStream for Observed<S> {
    fn channel_binding(&self) -> ChannelBinding {
        self.inner.channel_binding()
    }
}

type Inner = MakeRustlsConnect;
type InnerConnect = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::TlsConnect;
type InnerStream = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The TLS connector of a generation, observing each connection it makes.
/// A clone has a slot of its own, so concurrent connects never mix up
/// their wires.
pub(crate) struct ObservingTls {
    inner: Inner,
    slot: Arc<Mutex<Option<Arc<Wire>>>>,
}

impl Clone for ObservingTls {
    fn clone(&self) -> ObservingTls {
        ObservingTls::new(self.inner.clone())
    }
}

impl ObservingTls {
    pub(crate) fn new(inner: Inner) -> ObservingTls {
        ObservingTls {
            inner,
            slot: Arc::default(),
        }
    }

    /// The wire of the last TLS connection this connector made (the one
    /// that succeeded: with several hosts, each try replaces it).
    pub(crate) fn wire_slot(&self) -> Arc<Mutex<Option<Arc<Wire>>>> {
        self.slot.clone()
    }
}

impl MakeTlsConnect<tokio_postgres::Socket> for ObservingTls {
    type Stream = Observed<InnerStream>;
    type TlsConnect = ObservingConnect;
    type Error = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<ObservingConnect, Self::Error> {
        let inner = <Inner as MakeTlsConnect<tokio_postgres::Socket>>::make_tls_connect(
            &mut self.inner,
            domain,
        )?;
        let wire = Arc::new(Wire::default());
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(wire.clone());
        Ok(ObservingConnect { inner, wire })
    }
}

/// One TLS connect, handing back an observed stream.
pub(crate) struct ObservingConnect {
    inner: InnerConnect,
    wire: Arc<Wire>,
}

impl TlsConnect<tokio_postgres::Socket> for ObservingConnect {
    type Stream = Observed<InnerStream>;
    type Error = io::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = io::Result<Observed<InnerStream>>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        let wire = self.wire;
        let connecting =
            <InnerConnect as TlsConnect<tokio_postgres::Socket>>::connect(self.inner, stream);
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(Observed::new(stream, wire))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::{DRAIN, Observed};
    use crate::wire::Wire;

    /// A connection the server has closed: what it sent before is still to
    /// be read (then the end, if `ends`); every write fails.
    struct Closed {
        unread: VecDeque<Vec<u8>>,
        ends: bool,
    }

    impl AsyncRead for Closed {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            match this.unread.pop_front() {
                Some(bytes) => {
                    buf.put_slice(&bytes);
                    Poll::Ready(Ok(()))
                }
                None if this.ends => Poll::Ready(Ok(())),
                None => Poll::Pending,
            }
        }
    }

    impl AsyncWrite for Closed {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn observed(unread: &[&[u8]], ends: bool) -> Observed<Closed> {
        let closed = Closed {
            unread: unread.iter().map(|b| b.to_vec()).collect(),
            ends,
        };
        Observed::new(closed, Arc::new(Wire::default()))
    }

    fn write(s: &mut Observed<Closed>) -> Poll<io::Result<usize>> {
        Pin::new(s).poll_write(&mut Context::from_waker(Waker::noop()), b"Q")
    }

    fn read(s: &mut Observed<Closed>) -> Poll<io::Result<Vec<u8>>> {
        let mut bytes = [0u8; 64];
        let mut buf = ReadBuf::new(&mut bytes);
        Pin::new(s)
            .poll_read(&mut Context::from_waker(Waker::noop()), &mut buf)
            .map_ok(|()| buf.filled().to_vec())
    }

    #[tokio::test]
    async fn a_failed_write_waits_until_what_the_server_sent_before_it_closed_is_read() {
        // Two answers (ReadyForQuery) the server sent before it closed.
        let (one, two): (&[u8], &[u8]) = (b"Z\0\0\0\x05I", b"Z\0\0\0\x05I");
        let mut s = observed(&[one, two], true);
        // The write failed, but the answers are not read yet: the error
        // waits, so the connection reads them first.
        assert!(write(&mut s).is_pending());
        assert!(matches!(read(&mut s), Poll::Ready(Ok(b)) if b == one));
        assert!(write(&mut s).is_pending());
        assert!(matches!(read(&mut s), Poll::Ready(Ok(b)) if b == two));
        // The end of the stream: now the write's error.
        assert!(matches!(read(&mut s), Poll::Ready(Ok(b)) if b.is_empty()));
        let e = match write(&mut s) {
            Poll::Ready(Err(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_on_a_connection_that_never_ends_fails_after_the_drain() {
        let mut s = observed(&[], false);
        assert!(write(&mut s).is_pending());
        tokio::time::advance(DRAIN - std::time::Duration::from_millis(1)).await;
        assert!(write(&mut s).is_pending());
        tokio::time::advance(std::time::Duration::from_millis(1)).await;
        assert!(
            matches!(write(&mut s), Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe)
        );
        // And a flush after it fails too, without waiting again.
        let flushed = Pin::new(&mut s).poll_flush(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(flushed, Poll::Ready(Err(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_with_its_connection_task_ends_every_wait_for_an_answer() {
        let s = observed(&[], false);
        let wire = s.wire.clone();
        let waiting = tokio::spawn({
            let wire = wire.clone();
            async move { wire.answered(1, std::time::Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!wire.is_answered(1));
        // The task was aborted (a lane killed): no answer will be read.
        drop(s);
        assert_eq!(waiting.await.unwrap(), crate::wire::Answers::Ended);
        assert!(wire.is_answered(1), "nothing left to wait for");
    }
}
