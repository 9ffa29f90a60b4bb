//! The session stream as typed messages: a reader and a writer over the
//! two halves of one HTTP/2 stream. Every string the peer sends is
//! escaped as it is read (`Message::escaped`): the peer may be hostile.

use bytes::Bytes;
use h2::{RecvStream, SendStream};

use crate::error::{Closed, SessionError, Violation};
use rpf_proto::message::{Decoder, Message, PodRef};
use rpf_proto::{Side, PROTOCOL_VERSION};

/// What a peer's hello said, once its protocol version is known to match.
#[derive(Debug)]
pub struct PeerHello {
    /// Its rpf release.
    pub software: String,
    /// Sidecar only: its pod.
    pub pod: Option<PodRef>,
    /// Sidecar only: its host name.
    pub hostname: Option<String>,
    /// Sidecar only: it can keep a session through a lost channel.
    pub resume: bool,
    /// Sidecar only: optional abilities ([`rpf_proto::features`]).
    pub features: Vec<String>,
}

/// Reads control messages from the peer.
#[derive(Debug)]
pub struct ControlReader {
    recv: RecvStream,
    decoder: Decoder,
    peer: Side,
}

impl ControlReader {
    /// Wraps the receiving half of the session stream `peer` writes.
    pub fn new(recv: RecvStream, peer: Side) -> Self {
        Self {
            recv,
            decoder: Decoder::default(),
            peer,
        }
    }

    /// The next message, or `None` when the peer ended the stream.
    pub async fn next(&mut self) -> Result<Option<Message>, SessionError> {
        loop {
            let decoded = self
                .decoder
                .next_message()
                .map_err(|e| self.broken(e.into()))?;
            if let Some(msg) = decoded {
                return Ok(Some(msg.escaped()));
            }
            match self.recv.data().await {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.decoder.extend(&data);
                }
                Some(Err(e)) => return Err(crate::http2::channel_failed(e, self.peer)),
                None if self.decoder.pending() == 0 => return Ok(None),
                None => return Err(self.broken(Violation::Truncated)),
            }
        }
    }

    /// Reads the peer's first message, which must be a hello in our
    /// protocol version. Another version is [`SessionError::VersionMismatch`],
    /// worded for both ends: send it to the peer as an `error` before
    /// closing, so both say the same thing.
    pub async fn hello(&mut self, we_are: Side) -> Result<PeerHello, SessionError> {
        match self.next().await? {
            Some(Message::Hello {
                protocol,
                software,
                pod,
                hostname,
                resume,
                features,
            }) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(SessionError::VersionMismatch {
                        ours: PROTOCOL_VERSION,
                        theirs: protocol,
                        their_software: software,
                        we_are,
                    });
                }
                Ok(PeerHello {
                    software,
                    pod,
                    hostname,
                    resume,
                    features,
                })
            }
            Some(Message::Error { message }) => Err(SessionError::Remote {
                peer: self.peer,
                message,
            }),
            Some(other) => Err(SessionError::unexpected(self.peer, "a hello", &other)),
            None => Err(SessionError::Closed {
                peer: self.peer,
                what: Closed::SessionBeforeHello,
            }),
        }
    }

    fn broken(&self, violation: Violation) -> SessionError {
        SessionError::Protocol {
            peer: self.peer,
            violation,
        }
    }
}

/// Writes control messages to the peer.
#[derive(Debug)]
pub struct ControlWriter {
    send: SendStream<Bytes>,
}

impl ControlWriter {
    /// Wraps the sending half of the session stream.
    pub fn new(send: SendStream<Bytes>) -> Self {
        Self { send }
    }

    /// Queues one message. Control messages are small and rare, so they are
    /// not held back by flow control.
    pub fn send(&mut self, msg: &Message) -> Result<(), SessionError> {
        self.send
            .send_data(msg.encode(), false)
            .map_err(SessionError::lost)
    }

    /// Queues a last message and ends the stream.
    pub fn finish(&mut self, msg: &Message) {
        let _ = self.send.send_data(msg.encode(), true);
    }
}
