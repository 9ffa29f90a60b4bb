//! Byte pumps between one TCP connection and one HTTP/2 stream pair.
//!
//! TCP semantics are kept end to end: END_STREAM is a half-close (FIN) of
//! one direction, a stream reset is an abort (RST) of both. Flow control is
//! honoured both ways: bytes are sent only as the peer grants capacity, and
//! capacity is released only once bytes are written to the socket, so a
//! slow reader slows the writer instead of filling memory.

use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use rpf_proto::tuning::READ_CHUNK;

/// Reads shorter than this are copied into a right-sized buffer, so that an
/// interactive connection does not pin a whole read buffer per message.
const COPY_BELOW: usize = 4096;

/// Why a pumped connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// The TCP side failed (reset by its peer, broken pipe).
    #[error("socket: {0}")]
    Socket(#[from] io::Error),
    /// The HTTP/2 side failed (stream reset by the other end, channel lost).
    #[error("stream: {0}")]
    Stream(#[from] h2::Error),
    /// The other end refused the connection before any byte flowed.
    #[error("{0}")]
    Refused(String),
    /// The session ended while the connection was open.
    #[error("the session ended")]
    Cancelled,
}

/// Byte counters for the two directions of one pump.
#[derive(Debug, Clone, Copy)]
pub struct Meters<'a> {
    /// Bytes read from the socket and sent on the stream.
    pub socket_to_stream: &'a Counter,
    /// Bytes received on the stream and written to the socket.
    pub stream_to_socket: &'a Counter,
}

/// Bytes moved by a pump that finished cleanly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Socket → stream.
    pub sent: u64,
    /// Stream → socket.
    pub received: u64,
}

/// Carries `tcp` over `send` (socket → stream) and the stream that `recv`
/// yields (stream → socket) until both directions have finished or either
/// fails or `cancel` fires. `recv` is a future so that one side can start sending before the
/// other has answered. On failure the stream is reset and the socket is
/// closed with RST, so both peers see an abort, not a clean end.
pub async fn splice<F>(
    tcp: TcpStream,
    mut send: SendStream<Bytes>,
    recv: F,
    meters: Meters<'_>,
    cancel: &CancellationToken,
) -> Result<Transferred, PumpError>
where
    F: Future<Output = Result<RecvStream, PumpError>>,
{
    let both = async {
        tokio::try_join!(
            socket_to_stream(&tcp, &mut send, meters.socket_to_stream),
            async {
                let mut recv = recv.await?;
                stream_to_socket(&mut recv, &tcp, meters.stream_to_socket).await
            }
        )
    };
    let result = tokio::select! {
        r = both => r,
        _ = cancel.cancelled() => Err(PumpError::Cancelled),
    };
    match result {
        Ok((sent, received)) => Ok(Transferred { sent, received }),
        Err(e) => {
            abort(&tcp);
            send.send_reset(Reason::CANCEL);
            Err(e)
        }
    }
}

/// Closes `tcp` with RST instead of FIN, so the peer sees an abort.
pub fn abort(tcp: &TcpStream) {
    let _ = tcp.set_zero_linger();
}

async fn socket_to_stream(
    tcp: &TcpStream,
    send: &mut SendStream<Bytes>,
    meter: &Counter,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    loop {
        tcp.readable().await?;
        // Allocate only once data is there: idle connections hold no buffer.
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let n = match tcp.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            send.send_data(Bytes::new(), true)?;
            return Ok(total);
        }
        let chunk = if n < COPY_BELOW {
            Bytes::copy_from_slice(&buf)
        } else {
            buf.freeze()
        };
        send_all(send, chunk).await?;
        total += n as u64;
        meter.inc_by(n as u64);
    }
}

/// Sends `data` as the peer grants window, never queueing more than granted.
pub(crate) async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), PumpError> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(PumpError::Stream(h2::Error::from(Reason::CANCEL))),
        };
        if granted == 0 {
            continue;
        }
        let part = data.split_to(granted.min(data.len()));
        send.send_data(part, false)?;
    }
    Ok(())
}

async fn stream_to_socket(
    recv: &mut RecvStream,
    tcp: &TcpStream,
    meter: &Counter,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        write_all(tcp, &chunk).await?;
        // Only now may the peer send more: memory stays bounded by windows.
        let _ = recv.flow_control().release_capacity(chunk.len());
        total += chunk.len() as u64;
        meter.inc_by(chunk.len() as u64);
    }
    // END_STREAM: the peer will send nothing more; tell ours the same.
    socket2::SockRef::from(tcp).shutdown(Shutdown::Write)?;
    Ok(total)
}

async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
