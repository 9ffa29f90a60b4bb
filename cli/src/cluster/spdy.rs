//! A minimal SPDY/3.1 client for the API server's streaming endpoints: the
//! protocol `kubectl port-forward` speaks (and the one the kubelet's
//! streaming server handles most cheaply, see docs/cluster.md).
//!
//! One upgraded connection carries a few streams that we open (SYN_STREAM
//! with name/value headers: `streamtype`, `port`, ...). The caller gets one
//! byte pipe: what it writes goes out as DATA frames on one stream, what
//! arrives on another stream is what it reads; the error stream's text is
//! reported separately. Only what Kubernetes' server side (`spdystream`)
//! needs is implemented: it has no flow control (no WINDOW_UPDATE), it
//! answers each SYN_STREAM with a SYN_REPLY, and it may PING.
//!
//! Header blocks are zlib streams (one per direction and connection). We
//! send ours as stored (uncompressed) deflate blocks, each followed by the
//! empty block of a sync flush as a compressor's would be, which any zlib
//! reader accepts and which need neither a compressor nor SPDY's preset
//! dictionary; the server's header blocks are skipped unread.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_util::rt::TokioIo;
use kube::client::{Body, UpgradeConnectionError};
use kube::core::Status;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};

use super::error::{api_message, classify, ApiFailure};
pub use super::stream::TaskGuard;

/// The upgrade token of the HTTP request.
const UPGRADE: &str = "SPDY/3.1";

/// The header that names the subprotocol (`portforward.k8s.io`,
/// `v4.channel.k8s.io`).
const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";

/// An upgraded connection to the API server.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// POSTs to `path` (with its query) asking to switch to SPDY/3.1 with
/// `protocol`, as kubectl does, and returns the upgraded connection.
/// Error answers become [`kube::Error::Api`] like kube's own upgrades.
pub async fn upgrade(
    client: &kube::Client,
    path: &str,
    protocol: &str,
) -> Result<Upgraded, kube::Error> {
    let request = http::Request::post(path)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, UPGRADE)
        .header(PROTOCOL_HEADER, protocol)
        .body(Body::from(Vec::new()))
        .map_err(kube::Error::HttpError)?;
    let response = client.send(request).await?;
    let status = response.status();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        if !(status.is_client_error() || status.is_server_error()) {
            return Err(kube::Error::UpgradeConnection(
                UpgradeConnectionError::ProtocolSwitch(status),
            ));
        }
        let body = response.into_body().collect_bytes().await?;
        let text = String::from_utf8_lossy(&body);
        let answer = serde_json::from_str::<Status>(&text).unwrap_or_else(|_| {
            Status::failure(text.trim(), "Failed to parse error data").with_code(status.as_u16())
        });
        return Err(kube::Error::Api(answer.boxed()));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| {
        kube::Error::UpgradeConnection(UpgradeConnectionError::GetPendingUpgrade(e))
    })?;
    Ok(TokioIo::new(upgraded))
}

/// Largest DATA frame we send. kubectl sends up to 32 KiB; the server
/// allocates one buffer per frame and queues at most 50 frames.
pub const MAX_DATA_FRAME: usize = 64 << 10;

/// Bytes buffered between the caller and the connection task.
const PIPE: usize = 1 << 20;

/// Most bytes of the error stream kept.
const MAX_ERROR_TEXT: usize = 4 << 10;

/// Read buffer of the connection task.
const READ_BUFFER: usize = 256 << 10;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// An empty, non-final stored deflate block.
const SYNC_FLUSH: [u8; 5] = [0x00, 0x00, 0x00, 0xff, 0xff];

/// SPDY first, WebSocket when SPDY fails: a source's memory of which
/// works. SPDY is given up for the rest of the session once it failed
/// where WebSocket then worked (a proxy that passes only WebSocket
/// upgrades, an API server without SPDY).
#[derive(Debug, Default)]
pub struct Fallback {
    websocket_only: AtomicBool,
}

impl Fallback {
    /// Whether SPDY was given up for WebSocket.
    pub fn websocket_only(&self) -> bool {
        self.websocket_only.load(Ordering::Relaxed)
    }

    /// Opens with `spdy`, or with `websocket` when SPDY failed for any
    /// reason but not found or unauthorized, which WebSocket would get too.
    /// A 403 is tried again: the SPDY upgrade is a POST (`create`), the
    /// WebSocket one a GET, which older API servers authorize as `get`, and
    /// a Role may grant that alone.
    pub async fn run<T, S, W>(
        &self,
        spdy: impl FnOnce() -> S,
        websocket: impl FnOnce() -> W,
    ) -> Result<T, kube::Error>
    where
        S: Future<Output = Result<T, kube::Error>>,
        W: Future<Output = Result<T, kube::Error>>,
    {
        if self.websocket_only() {
            return websocket().await;
        }
        let e = match spdy().await {
            Err(e)
                if !matches!(
                    classify(&e),
                    ApiFailure::NotFound | ApiFailure::Unauthorized
                ) =>
            {
                e
            }
            other => return other,
        };
        tracing::debug!(error = %e, "SPDY upgrade failed; trying WebSocket");
        let opened = websocket().await?;
        tracing::info!("SPDY failed ({}); using WebSocket", api_message(&e));
        self.websocket_only.store(true, Ordering::Relaxed);
        Ok(opened)
    }
}

/// The streams to open and what each is for. Stream `i` gets id `2i + 1`.
pub struct Plan<'a> {
    /// Each stream's headers (names are sent in lower case).
    pub streams: &'a [&'a [(&'a str, &'a str)]],
    /// The stream the caller's bytes are sent on.
    pub write_to: usize,
    /// The stream whose bytes the caller reads.
    pub read_from: usize,
    /// The stream whose text is the far side's failure.
    pub error: usize,
}

/// A started session: the caller's pipe, the failure text, and the task.
pub struct Session {
    /// Read: `read_from`'s bytes; write: sent on `write_to`; shutdown: FIN.
    pub io: DuplexStream,
    /// The error stream's text, when it carried any.
    pub error: oneshot::Receiver<String>,
    /// Ends the connection when dropped.
    pub guard: TaskGuard,
}

fn stream_id(index: usize) -> u32 {
    2 * index as u32 + 1
}

fn control_header(kind: u16, flags: u8, length: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..2].copy_from_slice(&(0x8000 | VERSION).to_be_bytes());
    h[2..4].copy_from_slice(&kind.to_be_bytes());
    h[4..].copy_from_slice(&(length as u32).to_be_bytes());
    h[4] = flags;
    h
}

fn data_header(stream: u32, flags: u8, length: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    h[4..].copy_from_slice(&(length as u32).to_be_bytes());
    h[4] = flags;
    h
}

/// A SYN_STREAM frame. Its header block continues the connection's zlib
/// stream with one stored block; `first` also starts that stream (zlib
/// header without a preset dictionary).
fn syn_stream(id: u32, headers: &[(&str, &str)], first: bool) -> Vec<u8> {
    let mut pairs = Vec::new();
    pairs.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        pairs.extend_from_slice(&(name.len() as u32).to_be_bytes());
        pairs.extend_from_slice(name.as_bytes());
        pairs.extend_from_slice(&(value.len() as u32).to_be_bytes());
        pairs.extend_from_slice(value.as_bytes());
    }
    let len = u16::try_from(pairs.len()).expect("headers fit one stored block");
    let mut block = Vec::with_capacity(pairs.len() + 12);
    if first {
        block.extend_from_slice(&[0x78, 0x01]);
    }
    // BFINAL 0, BTYPE 00 (stored), padded to the byte; LEN, NLEN.
    block.push(0);
    block.extend_from_slice(&len.to_le_bytes());
    block.extend_from_slice(&(!len).to_le_bytes());
    block.extend_from_slice(&pairs);
    // An empty stored block, as a sync flush ends: Go's inflater hands out
    // a stored block's bytes only when the next block starts, and must not
    // read past this frame to find it.
    block.extend_from_slice(&SYNC_FLUSH);

    let mut frame = Vec::with_capacity(block.len() + 18);
    frame.extend_from_slice(&control_header(SYN_STREAM, 0, block.len() + 10));
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&0u32.to_be_bytes()); // associated stream
    frame.extend_from_slice(&[0, 0]); // priority, slot
    frame.extend_from_slice(&block);
    frame
}

fn ping(id: u32) -> Vec<u8> {
    let mut frame = control_header(PING, 0, 4).to_vec();
    frame.extend_from_slice(&id.to_be_bytes());
    frame
}

/// Frames read from the connection, with a buffer that DATA payloads are
/// handed out of as they arrive (no frame is held whole).
struct FrameReader<R> {
    io: R,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            buf: vec![0u8; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Makes at least `n` (≤ the buffer) bytes available; false at end of
    /// stream.
    async fn need(&mut self, n: usize) -> io::Result<bool> {
        while self.end - self.start < n {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.io.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                return Ok(false);
            }
            self.end += read;
        }
        Ok(true)
    }

    /// The next piece (up to `left` bytes) of a payload.
    async fn piece(&mut self, left: usize) -> io::Result<&[u8]> {
        if self.start == self.end && !self.need(1).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = left.min(self.end - self.start);
        let piece = &self.buf[self.start..self.start + take];
        self.start += take;
        Ok(piece)
    }

    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.start..self.start + N]);
        self.start += N;
        out
    }
}

/// Upgrades a POST to `path` to SPDY with `protocol` ([`upgrade`]) and
/// opens the plan's streams on it ([`start`]).
pub async fn open(
    client: &kube::Client,
    path: &str,
    protocol: &str,
    plan: Plan<'_>,
) -> Result<Session, kube::Error> {
    let connection = upgrade(client, path, protocol).await?;
    start(connection, plan)
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))
}

/// Opens the plan's streams on an upgraded connection and starts the task
/// that moves the bytes. Returns once the server has accepted every stream.
pub async fn start<T>(io: T, plan: Plan<'_>) -> io::Result<Session>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let mut hello = Vec::new();
    for (i, headers) in plan.streams.iter().enumerate() {
        hello.extend_from_slice(&syn_stream(stream_id(i), headers, i == 0));
    }
    wr.write_all(&hello).await?;
    wr.flush().await?;

    let count = plan.streams.len();
    let write_to = stream_id(plan.write_to);
    let read_from = stream_id(plan.read_from);
    let error_stream = stream_id(plan.error);
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (error_tx, error_rx) = oneshot::channel::<String>();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let (control_tx, mut control_rx) = mpsc::channel::<Vec<u8>>(16);

    let task = tokio::spawn(async move {
        let (mut from_caller, mut to_caller) = tokio::io::split(theirs);
        let upstream = async move {
            let mut buf = vec![0u8; 8 + MAX_DATA_FRAME];
            let mut caller_done = false;
            loop {
                tokio::select! {
                    biased;
                    control = control_rx.recv() => {
                        let Some(frame) = control else { return };
                        if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                            return;
                        }
                    }
                    read = from_caller.read(&mut buf[8..]), if !caller_done => {
                        let n = read.unwrap_or(0);
                        let (flags, end) = if n == 0 { (FLAG_FIN, 8) } else { (0, 8 + n) };
                        buf[..8].copy_from_slice(&data_header(write_to, flags, n));
                        if wr.write_all(&buf[..end]).await.is_err() || wr.flush().await.is_err() {
                            return;
                        }
                        caller_done = n == 0;
                    }
                }
            }
        };
        let downstream = async move {
            let mut frames = FrameReader::new(rd);
            let mut ready = Some(ready_tx);
            let mut replied = 0usize;
            let mut error_text = Vec::new();
            let mut error = Some(error_tx);
            let report = |error: &mut Option<oneshot::Sender<String>>, text: &[u8]| {
                if let Some(tx) = error.take() {
                    if !text.is_empty() {
                        let _ = tx.send(String::from_utf8_lossy(text).into_owned());
                    }
                }
            };
            let end = loop {
                match frames.need(8).await {
                    Ok(true) => {}
                    Ok(false) => break "the connection closed".to_owned(),
                    Err(e) => break format!("reading the connection: {e}"),
                }
                let head: [u8; 8] = frames.take();
                let flags = head[4];
                let length =
                    (u32::from_be_bytes(head[4..].try_into().unwrap()) & 0xff_ffff) as usize;
                if head[0] & 0x80 != 0 {
                    // Control frame: keep its first 8 bytes, skip the rest.
                    let kind = u16::from_be_bytes([head[2], head[3]]);
                    let mut fields = [0u8; 8];
                    let mut have = 0;
                    let mut left = length;
                    let mut failed = None;
                    while left > 0 {
                        match frames.piece(left).await {
                            Ok(piece) => {
                                let keep = piece.len().min(8 - have);
                                fields[have..have + keep].copy_from_slice(&piece[..keep]);
                                have += keep;
                                left -= piece.len();
                            }
                            Err(e) => {
                                failed = Some(format!("reading the connection: {e}"));
                                break;
                            }
                        }
                    }
                    if let Some(e) = failed {
                        break e;
                    }
                    let id = u32::from_be_bytes(fields[..4].try_into().unwrap()) & 0x7fff_ffff;
                    match kind {
                        SYN_REPLY if have >= 4 => {
                            replied += 1;
                            if replied == count {
                                if let Some(tx) = ready.take() {
                                    let _ = tx.send(Ok(()));
                                }
                            }
                        }
                        RST_STREAM if have >= 8 => {
                            let status = u32::from_be_bytes(fields[4..8].try_into().unwrap());
                            let what =
                                format!("the server reset stream {id} (SPDY status {status})");
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(Err(what));
                                return;
                            }
                            if id == read_from || id == error_stream {
                                if error_text.is_empty() {
                                    error_text = what.into_bytes();
                                }
                                break String::new();
                            }
                        }
                        // Our PINGs would be odd: answer the server's (the
                        // writer is gone only when the session is over).
                        PING if have >= 4 && id % 2 == 0 => {
                            let _ = control_tx.send(ping(id)).await;
                        }
                        GOAWAY => break "the server ended the connection (GOAWAY)".to_owned(),
                        _ => {}
                    }
                    continue;
                }
                let id = u32::from_be_bytes(head[..4].try_into().unwrap()) & 0x7fff_ffff;
                let mut left = length;
                let mut failed = None;
                while left > 0 {
                    let piece = match frames.piece(left).await {
                        Ok(piece) => piece,
                        Err(e) => {
                            failed = Some(format!("reading the connection: {e}"));
                            break;
                        }
                    };
                    left -= piece.len();
                    if id == read_from {
                        if to_caller.write_all(piece).await.is_err() {
                            failed = Some(String::new());
                            break;
                        }
                    } else if id == error_stream {
                        let room = MAX_ERROR_TEXT.saturating_sub(error_text.len());
                        error_text.extend_from_slice(&piece[..piece.len().min(room)]);
                    }
                }
                if let Some(e) = failed {
                    break e;
                }
                if flags & FLAG_FIN != 0 {
                    if id == read_from {
                        let _ = to_caller.shutdown().await;
                    } else if id == error_stream {
                        report(&mut error, &error_text);
                    }
                }
            };
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(if end.is_empty() {
                    "the connection ended".into()
                } else {
                    end
                }));
                return;
            }
            report(&mut error, &error_text);
            let _ = to_caller.shutdown().await;
        };
        // The pod side ending (or failing) ends the session; the caller
        // closing its side only closes the stream it writes to.
        tokio::pin!(downstream);
        tokio::select! {
            _ = &mut downstream => {}
            _ = upstream => downstream.await,
        }
    });
    let guard = TaskGuard(task);
    match ready_rx.await {
        Ok(Ok(())) => Ok(Session {
            io: ours,
            error: error_rx,
            guard,
        }),
        Ok(Err(e)) => Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the SPDY session ended before its streams were accepted",
        )),
    }
}

#[cfg(test)]
#[path = "spdy_tests.rs"]
mod tests;
