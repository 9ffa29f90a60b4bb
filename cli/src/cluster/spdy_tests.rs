//! The SPDY client against an in-process server over real sockets that
//! speaks the server side the way Kubernetes' `spdystream` does: a
//! SYN_REPLY per stream, DATA frames with FIN, RST_STREAM, PING.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ERROR_STREAM: &[(&str, &str)] = &[
    ("streamType", "error"),
    ("port", "4499"),
    ("requestID", "0"),
];
const DATA_STREAM: &[(&str, &str)] =
    &[("streamType", "data"), ("port", "4499"), ("requestID", "0")];
const PORT_FORWARD: Plan<'static> = Plan {
    streams: &[ERROR_STREAM, DATA_STREAM],
    write_to: 1,
    read_from: 1,
    error: 0,
};

/// One frame as the server reads it.
#[derive(Debug)]
struct Frame {
    /// `Some(type)` for a control frame.
    control: Option<u16>,
    /// DATA: the stream; control: the first payload word (stream or PING id).
    id: u32,
    flags: u8,
    payload: Vec<u8>,
}

async fn read_frame(io: &mut TcpStream) -> Option<Frame> {
    let mut head = [0u8; 8];
    io.read_exact(&mut head).await.ok()?;
    let flags = head[4];
    let length = (u32::from_be_bytes(head[4..].try_into().unwrap()) & 0xff_ffff) as usize;
    let mut payload = vec![0u8; length];
    io.read_exact(&mut payload).await.unwrap();
    let frame = if head[0] & 0x80 != 0 {
        assert_eq!(u16::from_be_bytes([head[0], head[1]]), 0x8003, "SPDY/3");
        Frame {
            control: Some(u16::from_be_bytes([head[2], head[3]])),
            id: u32::from_be_bytes(payload[..4].try_into().unwrap()),
            flags,
            payload,
        }
    } else {
        Frame {
            control: None,
            id: u32::from_be_bytes(head[..4].try_into().unwrap()),
            flags,
            payload,
        }
    };
    Some(frame)
}

/// The name/value pairs of a SYN_STREAM, decoding the header block as a
/// zlib reader would: the zlib header on the connection's first block (no
/// preset dictionary), then one stored deflate block (LEN, NLEN, bytes)
/// and an empty one.
fn syn_headers(frame: &Frame, first: bool) -> Vec<(String, String)> {
    assert_eq!(frame.control, Some(SYN_STREAM));
    let mut block = &frame.payload[10..];
    if first {
        assert_eq!(&block[..2], &[0x78, 0x01]);
        assert_eq!(u16::from_be_bytes([block[0], block[1]]) % 31, 0, "FCHECK");
        block = &block[2..];
    }
    assert_eq!(block[0], 0, "a non-final stored block");
    let len = u16::from_le_bytes([block[1], block[2]]);
    assert_eq!(u16::from_le_bytes([block[3], block[4]]), !len);
    let pairs = &block[5..];
    assert_eq!(pairs.len(), usize::from(len) + 5, "one block per frame");
    let (pairs, flush) = pairs.split_at(usize::from(len));
    assert_eq!(flush, SYNC_FLUSH, "ends with a sync flush");
    let mut rest = pairs;
    let mut word = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let count = u32::from_be_bytes(word(4).try_into().unwrap());
    let mut out = Vec::new();
    for _ in 0..count {
        let mut text = || {
            let n = u32::from_be_bytes(word(4).try_into().unwrap()) as usize;
            String::from_utf8(word(n).to_vec()).unwrap()
        };
        let name = text();
        let value = text();
        out.push((name, value));
    }
    assert!(rest.is_empty(), "trailing bytes in the header block");
    out
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn syn_reply(id: u32) -> Vec<u8> {
    // The header block is opaque to the client: it skips it.
    let mut frame = control_header(SYN_REPLY, 0, 4 + 6).to_vec();
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&[0x78, 0x9c, 1, 2, 3, 4]);
    frame
}

fn rst_stream(id: u32, status: u32) -> Vec<u8> {
    let mut frame = control_header(RST_STREAM, 0, 8).to_vec();
    frame.extend_from_slice(&id.to_be_bytes());
    frame.extend_from_slice(&status.to_be_bytes());
    frame
}

fn data(id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = data_header(id, if fin { FLAG_FIN } else { 0 }, payload.len()).to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// A connected pair of real sockets: (client side, server side).
async fn sockets() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
    (client.unwrap(), accepted.unwrap().0)
}

/// Reads the two SYN_STREAMs of a port-forward and checks their headers.
async fn accept_streams(server: &mut TcpStream) {
    let error = read_frame(server).await.expect("SYN_STREAM error");
    assert_eq!(error.id, 1);
    assert_eq!(error.payload[8..10], [0, 0], "priority, slot");
    assert_eq!(syn_headers(&error, true), owned(ERROR_STREAM));
    let data = read_frame(server).await.expect("SYN_STREAM data");
    assert_eq!(data.id, 3);
    assert_eq!(syn_headers(&data, false), owned(DATA_STREAM));
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn port_forward_streams_carry_bytes_errors_and_half_close() {
    let (client, mut server) = sockets().await;
    let from_pod = pattern(READ_BUFFER + 100_000);
    let to_pod = pattern(3 * MAX_DATA_FRAME + 7);
    let expected_to_pod = to_pod.clone();
    let pod_bytes = from_pod.clone();
    let pod = tokio::spawn(async move {
        accept_streams(&mut server).await;
        server.write_all(&syn_reply(1)).await.unwrap();
        server.write_all(&syn_reply(3)).await.unwrap();
        // A PING of ours (even id) must come back unchanged.
        server.write_all(&ping(2)).await.unwrap();
        // One frame larger than the client's read buffer, and one on a
        // stream the client does not know (ignored).
        server.write_all(&data(3, false, &pod_bytes)).await.unwrap();
        server.write_all(&data(9, false, b"noise")).await.unwrap();
        let mut received = Vec::new();
        let mut pinged = false;
        loop {
            let frame = read_frame(&mut server).await.expect("frames until FIN");
            match frame.control {
                Some(PING) => {
                    assert_eq!(frame.id, 2);
                    pinged = true;
                }
                Some(other) => panic!("unexpected control frame {other}"),
                None => {
                    assert_eq!(frame.id, 3, "data goes on the data stream");
                    assert!(frame.payload.len() <= MAX_DATA_FRAME);
                    received.extend_from_slice(&frame.payload);
                    if frame.flags & FLAG_FIN != 0 {
                        break;
                    }
                }
            }
        }
        assert!(pinged, "the PING was answered");
        assert_eq!(received, expected_to_pod);
        // Half-close: the pod still answers after our FIN.
        server.write_all(&data(3, false, b"after")).await.unwrap();
        server
            .write_all(&data(1, false, b"error forwarding port 4499: "))
            .await
            .unwrap();
        server
            .write_all(&data(1, true, b"connection refused"))
            .await
            .unwrap();
        server.write_all(&data(3, true, b"")).await.unwrap();
        server
    });

    let session = start(client, PORT_FORWARD).await.expect("streams accepted");
    let (mut rd, mut wr) = tokio::io::split(session.io);
    let writer = tokio::spawn(async move {
        wr.write_all(&to_pod).await.unwrap();
        wr.shutdown().await.unwrap();
        wr
    });
    let mut got = Vec::new();
    rd.read_to_end(&mut got).await.unwrap();
    let mut expected = from_pod;
    expected.extend_from_slice(b"after");
    assert!(got == expected, "the pod's bytes, in order, then EOF");
    let _wr = writer.await.unwrap();
    assert_eq!(
        session.error.await.unwrap(),
        "error forwarding port 4499: connection refused"
    );
    let _server = pod.await.unwrap();
    drop(session.guard);
}

#[tokio::test]
async fn a_reset_stream_fails_the_start() {
    let (client, mut server) = sockets().await;
    let pod = tokio::spawn(async move {
        accept_streams(&mut server).await;
        server.write_all(&syn_reply(1)).await.unwrap();
        server.write_all(&rst_stream(3, 3)).await.unwrap();
        server
    });
    let err = start(client, PORT_FORWARD).await.err().expect("refused");
    assert_eq!(err.to_string(), "the server reset stream 3 (SPDY status 3)");
    let _server = pod.await.unwrap();
}

#[tokio::test]
async fn a_connection_closed_before_the_replies_fails_the_start() {
    let (client, mut server) = sockets().await;
    let pod = tokio::spawn(async move {
        accept_streams(&mut server).await;
        server.write_all(&syn_reply(1)).await.unwrap();
    });
    let err = start(client, PORT_FORWARD).await.err().expect("closed");
    assert_eq!(err.to_string(), "the connection closed");
    pod.await.unwrap();
}

#[tokio::test]
async fn a_reset_data_stream_ends_the_stream_with_the_reason() {
    let (client, mut server) = sockets().await;
    let pod = tokio::spawn(async move {
        accept_streams(&mut server).await;
        server.write_all(&syn_reply(1)).await.unwrap();
        server.write_all(&syn_reply(3)).await.unwrap();
        server.write_all(&data(3, false, b"hi")).await.unwrap();
        server.write_all(&rst_stream(3, 5)).await.unwrap();
        server
    });
    let mut session = start(client, PORT_FORWARD).await.expect("accepted");
    let mut got = Vec::new();
    session.io.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");
    assert_eq!(
        session.error.await.unwrap(),
        "the server reset stream 3 (SPDY status 5)"
    );
    let _server = pod.await.unwrap();
}

#[test]
fn syn_stream_layout() {
    let frame = syn_stream(5, &[("Port", "80")], false);
    // Control bit + version 3, type 1, flags 0, length.
    assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x01]);
    let length = u32::from_be_bytes(frame[4..8].try_into().unwrap()) as usize;
    assert_eq!(length, frame.len() - 8);
    assert_eq!(&frame[8..12], &5u32.to_be_bytes());
    let parsed = Frame {
        control: Some(SYN_STREAM),
        id: 5,
        flags: 0,
        payload: frame[8..].to_vec(),
    };
    assert_eq!(syn_headers(&parsed, false), owned(&[("port", "80")]));
}
