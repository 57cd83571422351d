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
    /// A write failed: the error, returned once what the server sent
    /// before it closed has been read for the wire (bounded).
    failed: Option<(io::Error, Pin<Box<tokio::time::Sleep>>)>,
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
        }
    }
}

impl<S: AsyncRead + Unpin> Observed<S> {
    /// After a write failed with `error`: reads what the server sent
    /// before it closed, for the wire only, then returns the error. A
    /// server that exits with requests unread in its socket (a pipeline,
    /// terminated) resets the connection; tokio-postgres then stops at the
    /// failed write without reading the `FATAL` already on its way, which
    /// is what tells the pipelined statements behind it that they never
    /// ran. Waits for it (the read ends at the reset), at most [`DRAIN`].
    fn poll_failed(&mut self, cx: &mut Context<'_>, error: Option<io::Error>) -> Poll<io::Error> {
        if let Some(e) = error {
            self.failed = Some((e, Box::pin(tokio::time::sleep(DRAIN))));
        }
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.reader.feed(buf.filled(), &self.wire);
                }
                Poll::Ready(_) => break,
                Poll::Pending => {
                    let bound = self.failed.as_mut().map(|(_, bound)| bound.as_mut());
                    if bound.is_none_or(|b| b.poll(cx).is_pending()) {
                        return Poll::Pending;
                    }
                    break;
                }
            }
        }
        self.wire.end();
        Poll::Ready(
            self.failed
                .take()
                .map_or_else(|| io::Error::other("write failed"), |(e, _)| e),
        )
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
            return this.poll_failed(cx, None).map(Err);
        }
        match ready!(Pin::new(&mut this.inner).poll_write(cx, data)) {
            Ok(n) => {
                this.writer.feed(&data[..n], &this.wire);
                Poll::Ready(Ok(n))
            }
            Err(e) => this.poll_failed(cx, Some(e)).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed.is_some() {
            return this.poll_failed(cx, None).map(Err);
        }
        match ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => this.poll_failed(cx, Some(e)).map(Err),
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
