//! A scripted sidecar: the pod's end of a session, played by the test so
//! it can say what a real sidecar never would (a hostile or broken pod).
//!
//! The CLI reaches it with `--via "socat - TCP:127.0.0.1:PORT"`; the test
//! accepts that connection, speaks HTTP/2 as the client, and scripts the
//! session stream message by message.

use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use rpf_proto::message::{Decoder, Message};
use rpf_proto::wire;
use tokio::net::TcpListener;

/// A listening fake sidecar, not yet reached by the CLI.
#[derive(Debug)]
pub struct FakeListener {
    listener: TcpListener,
    /// The `--via` command that reaches it.
    pub via: String,
}

impl FakeListener {
    /// Listens on the host's loopback.
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        FakeListener {
            listener,
            via: format!("socat - TCP:127.0.0.1:{port}"),
        }
    }

    /// Accepts the CLI's channel, opens the session stream and sends
    /// `hello` (any message: the script decides).
    pub async fn accept(&self, hello: &Message) -> FakeSidecar {
        let (tcp, _) = self.listener.accept().await.expect("the CLI connects");
        let (client, conn) = h2::client::handshake(tcp).await.expect("HTTP/2");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::post(wire::SESSION_URI)
            .body(())
            .expect("request");
        let (resp, mut session) = client.send_request(req, false).expect("session stream");
        session.send_data(hello.encode(), false).expect("hello");
        let incoming = resp.await.expect("the CLI answers").into_body();
        FakeSidecar {
            client,
            session,
            incoming,
            decoder: Decoder::default(),
        }
    }
}

/// The CLI's channel, held by the fake sidecar.
#[derive(Debug)]
pub struct FakeSidecar {
    /// Opens connection streams (or floods them).
    pub client: SendRequest<Bytes>,
    /// The sidecar's half of the session stream.
    pub session: SendStream<Bytes>,
    incoming: RecvStream,
    decoder: Decoder,
}

impl FakeSidecar {
    /// The CLI's next message (10 s at most).
    pub async fn next(&mut self) -> Option<Message> {
        let read = async {
            loop {
                if let Ok(Some(m)) = self.decoder.next_message() {
                    return Some(m);
                }
                let data = self.incoming.data().await?.ok()?;
                let _ = self.incoming.flow_control().release_capacity(data.len());
                self.decoder.extend(&data);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .ok()
            .flatten()
    }

    /// Sends one message on the session stream.
    pub fn send(&mut self, msg: &Message) {
        self.session.send_data(msg.encode(), false).expect("send");
    }

    /// Skips the CLI's hello and answers its `bind` with `bound` on 127.0.0.1 at each port, as a
    /// real sidecar would; returns the listener ids.
    pub async fn accept_bind(&mut self) -> Vec<u32> {
        let listeners = loop {
            match self.next().await {
                Some(Message::Hello { .. }) => continue,
                Some(Message::Bind { listeners, .. }) => break listeners,
                other => panic!("the CLI should ask to bind, got {other:?}"),
            }
        };
        let bound = listeners
            .iter()
            .map(|l| rpf_proto::message::BoundListener {
                id: l.id,
                addrs: vec![std::net::SocketAddr::from(([127, 0, 0, 1], l.port))],
            })
            .collect();
        self.send(&Message::Bound {
            listeners: bound,
            session: None,
        });
        listeners.iter().map(|l| l.id).collect()
    }

    /// A connection stream request for listener `id`, as the sidecar sends.
    pub fn connect_request(id: u32) -> http::Request<()> {
        http::Request::post(wire::CONNECT_URI)
            .header(wire::LISTENER_HEADER, id.to_string())
            .header(wire::PEER_HEADER, "127.0.0.1:40000")
            .body(())
            .expect("request")
    }
}

/// Every message on `body` until it ends or 10 s pass.
pub async fn read_messages(mut body: RecvStream) -> Vec<Message> {
    let mut dec = Decoder::default();
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            dec.extend(&data);
            while let Ok(Some(m)) = dec.next_message() {
                out.push(m);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    out
}

/// Peak resident memory of process `pid` (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// Current resident memory of process `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of process `pid` so far, in clock ticks
/// (1/100 s on Linux), from /proc/PID/stat.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process alive");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}
