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
}

impl<S> Observed<S> {
    pub(crate) fn new(inner: S, wire: Arc<Wire>) -> Observed<S> {
        wire.observed.store(true, Ordering::Release);
        Observed {
            inner,
            wire,
            reader: Reader::default(),
            writer: Writer::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> Observed<S> {
    /// After a write failed: reads what the server sent before it closed,
    /// for the wire only. A server that exits with requests unread in its
    /// socket (a pipeline, terminated) resets the connection; tokio-postgres
    /// then stops at the failed write without reading the `FATAL` already
    /// received, which is what tells the pipelined statements behind it
    /// that they never ran.
    fn drain_for_the_wire(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut scratch = [0u8; 8192];
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    self.reader.feed(buf.filled(), &self.wire);
                }
                _ => break,
            }
        }
        self.wire.end();
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
        let n = match ready!(Pin::new(&mut this.inner).poll_write(cx, data)) {
            Ok(n) => n,
            Err(e) => {
                this.drain_for_the_wire();
                return Poll::Ready(Err(e));
            }
        };
        this.writer.feed(&data[..n], &this.wire);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        if flushed.is_err() {
            this.drain_for_the_wire();
        }
        Poll::Ready(flushed)
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
