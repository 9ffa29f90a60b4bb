//! UDP flows over HTTP/2 streams: the framing, the bounded per-flow queue,
//! and the pump both ends run for one flow.
//!
//! A flow is one pod-side peer address of a UDP listener. Its stream
//! carries datagrams both ways, each as a 2-byte big-endian length then the
//! payload, so a datagram arrives whole or not at all however HTTP/2 cuts
//! the bytes into DATA frames. A length above [`MAX_DATAGRAM`] is a
//! protocol error for the flow (its stream is reset), decided from the two
//! length bytes alone: nothing is allocated for it.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, UdpMeters};
use crate::pump::{send_all, PumpError};
use rpf_proto::tuning::{UDP_QUEUE_BYTES, UDP_QUEUE_DATAGRAMS};
pub use rpf_proto::MAX_DATAGRAM;

/// Size of the buffer a datagram is received into: one more than the
/// largest UDP payload any family carries, so a datagram is never cut.
pub(crate) const RECV_BUF: usize = 65_536;

/// One datagram as it travels on a flow stream: length, then payload.
pub fn encode(datagram: &[u8]) -> Bytes {
    let len = u16::try_from(datagram.len())
        .ok()
        .filter(|n| usize::from(*n) <= MAX_DATAGRAM)
        .expect("datagrams longer than MAX_DATAGRAM are dropped before framing");
    let mut out = BytesMut::with_capacity(2 + datagram.len());
    out.put_u16(len);
    out.put_slice(datagram);
    out.freeze()
}

/// A flow stream that broke the framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("datagram length prefix {0} is larger than the UDP maximum of {MAX_DATAGRAM} bytes")]
pub struct TooLong(pub usize);

/// Splits a flow stream back into datagrams.
///
/// Bounded: once [`FrameDecoder::next_datagram`] has returned `None`, it
/// holds less than one whole frame (`2 + MAX_DATAGRAM` bytes); what a
/// caller adds on top is the chunk it just received.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole datagram, if one has arrived.
    pub fn next_datagram(&mut self) -> Result<Option<Bytes>, TooLong> {
        if self.buf.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len > MAX_DATAGRAM {
            return Err(TooLong(len));
        }
        if self.buf.len() < 2 + len {
            return Ok(None);
        }
        self.buf.advance(2);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes held that do not yet form a whole datagram.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The producing end of a flow's queue: datagrams waiting for the stream.
#[derive(Debug)]
pub(crate) struct QueueTx {
    shared: Arc<Shared>,
}

/// Why a datagram was not queued.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The flow has ended; the datagram is handed back.
    Closed(Bytes),
}

/// The consuming end of a flow's queue.
#[derive(Debug)]
pub(crate) struct QueueRx {
    shared: Arc<Shared>,
}

/// What both ends of a queue share.
#[derive(Debug, Default)]
struct Shared {
    state: std::sync::Mutex<Queued>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Queued {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Live [`QueueTx`] handles: at none, the consumer sees the end.
    senders: usize,
    /// The consumer is gone: the flow has ended.
    closed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A flow's queue, bounded in datagrams and in bytes. Full, it drops the
/// oldest datagram: UDP's users (DNS retries, media, metrics) want the
/// freshest, and what waited longest is the likeliest to be stale.
pub(crate) fn queue() -> (QueueTx, QueueRx) {
    let shared = Arc::new(Shared::default());
    shared.lock().senders = 1;
    (
        QueueTx {
            shared: shared.clone(),
        },
        QueueRx { shared },
    )
}

impl QueueTx {
    /// Queues `datagram`; returns how many older datagrams were dropped to
    /// make room for it, or hands it back if the flow has ended.
    pub(crate) fn push(&self, datagram: Bytes) -> Result<u64, PushError> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err(PushError::Closed(datagram));
        }
        let mut dropped = 0;
        while q.items.len() >= UDP_QUEUE_DATAGRAMS
            || (!q.items.is_empty() && q.bytes + datagram.len() > UDP_QUEUE_BYTES)
        {
            let old = q.items.pop_front().expect("not empty");
            q.bytes -= old.len();
            dropped += 1;
        }
        q.bytes += datagram.len();
        q.items.push_back(datagram);
        drop(q);
        self.shared.ready.notify_one();
        Ok(dropped)
    }

    /// Whether the flow behind this queue has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }
}

impl Clone for QueueTx {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        QueueTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.senders -= 1;
        if q.senders == 0 {
            drop(q);
            self.shared.ready.notify_one();
        }
    }
}

impl QueueRx {
    /// The oldest queued datagram; `None` once it is empty and every
    /// producer is gone.
    async fn recv(&mut self) -> Option<Bytes> {
        loop {
            {
                let mut q = self.shared.lock();
                if let Some(d) = q.items.pop_front() {
                    q.bytes -= d.len();
                    return Some(d);
                }
                if q.senders == 0 {
                    return None;
                }
            }
            // A wake-up sent between the check and here is kept as a
            // permit, so none is lost.
            self.shared.ready.notified().await;
        }
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.closed = true;
        q.items.clear();
        q.bytes = 0;
    }
}

/// Where a flow delivers the datagrams its stream brings.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sink<'a> {
    /// Sidecar: back to the pod peer, from the listener's own socket (so
    /// the reply comes from the address the peer sent to).
    Peer(&'a UdpSocket, SocketAddr),
    /// CLI: to the local target, on the flow's connected socket.
    Target(&'a UdpSocket),
}

impl Sink<'_> {
    async fn deliver(&self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Sink::Peer(socket, peer) => socket.send_to(datagram, *peer).await.map(drop),
            Sink::Target(socket) => socket.send(datagram).await.map(drop),
        }
    }
}

/// How a flow ended without fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowEnd {
    /// No datagram either way for the idle timeout.
    Idle,
    /// The other end ended it (END_STREAM), or our side of it went away.
    Closed,
}

/// How a flow ended with a fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    /// The local target is not there (ICMP port unreachable).
    #[error("the target refused the datagrams (nothing listens on that UDP port)")]
    Refused,
    /// The other end broke the framing.
    #[error("{0}")]
    Protocol(#[from] TooLong),
    /// The HTTP/2 side failed, or the other end refused or reset the flow.
    #[error("{0}")]
    Pump(#[from] PumpError),
    /// A socket error other than a refusal.
    #[error("socket: {0}")]
    Socket(io::Error),
}

impl From<h2::Error> for FlowError {
    fn from(e: h2::Error) -> Self {
        if e.reason() == Some(Reason::CONNECT_ERROR) {
            FlowError::Refused
        } else {
            FlowError::Pump(PumpError::Stream(e))
        }
    }
}

/// Everything one flow needs besides its stream.
pub(crate) struct Flow<'a, S> {
    /// Datagrams to send on the stream.
    pub outbox: QueueRx,
    /// Where datagrams from the stream go.
    pub sink: Sink<'a>,
    /// A task that feeds `outbox` and ends the flow when it fails (the
    /// CLI's reader of the target's replies); `pending()` when the feeder
    /// lives elsewhere (the sidecar's listener).
    pub source: S,
    /// No datagram either way for this long ends the flow.
    pub idle: Duration,
    /// Counters for the queue → stream and stream → sink directions.
    pub out_meters: &'a UdpMeters,
    /// Counters for the stream → sink direction.
    pub in_meters: &'a UdpMeters,
    /// Fires when the session (or channel) ends.
    pub cancel: &'a CancellationToken,
}

/// Carries one flow until it idles out, either end ends it, or it fails.
/// A clean end (idle, END_STREAM from the peer) is an END_STREAM; a fault
/// resets the stream: `CONNECT_ERROR` when the target refused,
/// `PROTOCOL_ERROR` for a bad length prefix, `CANCEL` otherwise.
pub(crate) async fn run_flow<R, S>(
    flow: Flow<'_, S>,
    mut send: SendStream<Bytes>,
    recv: R,
) -> Result<FlowEnd, FlowError>
where
    R: Future<Output = Result<RecvStream, PumpError>>,
    S: Future<Output = FlowError>,
{
    let Flow {
        mut outbox,
        sink,
        source,
        idle,
        out_meters,
        in_meters,
        cancel,
    } = flow;
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(elapsed_ms(start), Ordering::Relaxed);
    let result = {
        let to_stream = async {
            while let Some(d) = outbox.recv().await {
                let len = d.len() as u64;
                send_all(&mut send, encode(&d)).await?;
                out_meters.carried(len);
                touch();
            }
            Ok::<_, FlowError>(FlowEnd::Closed)
        };
        let from_stream = async {
            let mut recv = recv.await?;
            let mut frames = FrameDecoder::default();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk?;
                frames.extend(&chunk);
                while let Some(d) = frames.next_datagram()? {
                    match sink.deliver(&d).await {
                        Ok(()) => {
                            in_meters.carried(d.len() as u64);
                            touch();
                        }
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            if let Sink::Target(_) = sink {
                                return Err(FlowError::Refused);
                            }
                            in_meters.dropped(DropReason::SendFailed);
                        }
                        Err(_) => in_meters.dropped(DropReason::SendFailed),
                    }
                }
                // Only now may the peer send more: memory stays bounded.
                let _ = recv.flow_control().release_capacity(chunk.len());
            }
            Ok::<_, FlowError>(FlowEnd::Closed)
        };
        let idle_out = async {
            loop {
                let quiet = Duration::from_millis(elapsed_ms(start))
                    .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return FlowEnd::Idle;
                }
                tokio::time::sleep(idle - quiet).await;
            }
        };
        tokio::select! {
            r = to_stream => r,
            r = from_stream => r,
            end = idle_out => Ok(end),
            e = source => Err(e),
            _ = cancel.cancelled() => Err(FlowError::Pump(PumpError::Cancelled)),
        }
    };
    match &result {
        Ok(_) => {
            let _ = send.send_data(Bytes::new(), true);
        }
        Err(FlowError::Refused) => send.send_reset(Reason::CONNECT_ERROR),
        Err(FlowError::Protocol(_)) => send.send_reset(Reason::PROTOCOL_ERROR),
        Err(_) => send.send_reset(Reason::CANCEL),
    }
    result
}

fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}

/// Reads what the target sends back on a connected socket into `queue`
/// until the socket fails; a refusal (ICMP port unreachable from an earlier
/// send) is [`FlowError::Refused`]. Holds a receive buffer only while
/// datagrams are waiting, so an idle flow costs no buffer.
pub(crate) async fn read_target(
    socket: &UdpSocket,
    queue: QueueTx,
    meters: &UdpMeters,
) -> FlowError {
    loop {
        // ERROR too: an ICMP port unreachable marks the socket with an
        // error (SO_ERROR) but not as readable.
        let ready = match socket.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(ready) => ready,
            Err(e) => return FlowError::Socket(e),
        };
        if ready.is_error() {
            // Clears the error readiness when there is no error to take,
            // so a spurious one cannot spin this loop.
            let pending = socket.try_io(Interest::ERROR, || match socket.take_error()? {
                Some(e) => Ok(e),
                None => Err(io::ErrorKind::WouldBlock.into()),
            });
            match pending {
                Ok(e) if e.kind() == io::ErrorKind::ConnectionRefused => return FlowError::Refused,
                Ok(e) => return FlowError::Socket(e),
                Err(_) => {}
            }
            if !ready.is_readable() {
                continue;
            }
        }
        let mut buf = BytesMut::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            match socket.try_recv_buf(&mut buf) {
                Ok(n) if n > MAX_DATAGRAM => meters.dropped(DropReason::TooLarge),
                Ok(_) => match queue.push(Bytes::copy_from_slice(&buf)) {
                    Ok(dropped) => meters.dropped_n(DropReason::QueueFull, dropped),
                    Err(PushError::Closed(_)) => return FlowError::Pump(PumpError::Cancelled),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return FlowError::Refused
                }
                Err(e) => return FlowError::Socket(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_however_the_bytes_are_cut() {
        let sizes = [0usize, 1, 2, 100, 1400, 65_507, 3, 65_000];
        let datagrams: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let wire: Vec<u8> = datagrams.iter().flat_map(|d| encode(d).to_vec()).collect();
        for cut in [1usize, 2, 3, 1000, 16_384, 70_000, wire.len()] {
            let mut dec = FrameDecoder::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                dec.extend(chunk);
                while let Some(d) = dec.next_datagram().unwrap() {
                    got.push(d.to_vec());
                }
                // Bounded: between chunks, less than one whole frame waits.
                assert!(dec.pending() < 2 + MAX_DATAGRAM, "cut {cut}");
            }
            assert_eq!(got, datagrams, "cut {cut}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_from_its_two_bytes() {
        for len in [MAX_DATAGRAM + 1, 65_535] {
            let mut dec = FrameDecoder::default();
            dec.extend(&(len as u16).to_be_bytes());
            assert_eq!(dec.next_datagram(), Err(TooLong(len)));
            // Nothing was reserved for the announced payload.
            assert!(dec.buf.capacity() < 1024, "{}", dec.buf.capacity());
        }
        // One byte of a prefix is not yet a datagram.
        let mut dec = FrameDecoder::default();
        dec.extend(&[0xff]);
        assert_eq!(dec.next_datagram(), Ok(None));
    }

    #[test]
    #[should_panic(expected = "dropped before framing")]
    fn encoding_an_oversized_datagram_is_a_bug() {
        encode(&vec![0u8; MAX_DATAGRAM + 1]);
    }

    #[tokio::test]
    async fn the_queue_drops_the_oldest_beyond_its_bounds() {
        let (tx, mut rx) = queue();
        let mut dropped = 0;
        for i in 0..UDP_QUEUE_DATAGRAMS as u64 + 10 {
            match tx.push(Bytes::from(i.to_be_bytes().to_vec())) {
                Ok(n) => dropped += n,
                Err(PushError::Closed(_)) => panic!("open"),
            }
        }
        assert_eq!(dropped, 10);
        // The ten oldest went; the rest come out in order.
        assert_eq!(rx.recv().await.as_deref(), Some(&10u64.to_be_bytes()[..]));
        let (tx2, mut rx2) = queue();
        let big = Bytes::from(vec![0u8; MAX_DATAGRAM]);
        let fit = UDP_QUEUE_BYTES / MAX_DATAGRAM;
        for _ in 0..fit {
            assert_eq!(tx2.push(big.clone()).unwrap(), 0);
        }
        // One more of the largest does not fit in the bytes: the oldest goes.
        assert_eq!(tx2.push(big.clone()).unwrap(), 1);
        for _ in 0..fit {
            assert_eq!(rx2.recv().await.map(|d| d.len()), Some(MAX_DATAGRAM));
        }
        // Every producer gone: the consumer sees the end.
        drop(tx2);
        assert_eq!(rx2.recv().await, None);
        drop(rx);
        assert!(tx.is_closed());
        assert!(matches!(
            tx.push(Bytes::from_static(b"y")),
            Err(PushError::Closed(_))
        ));
    }
}
