//! The sidecar's handling of what the CLI sends, without a channel: the
//! control stream decoded in one piece, each message dispatched as the
//! sidecar's session loop does, and a `Bind`'s listeners put through the
//! pure steps the sidecar takes before binding (the connection limit
//! becomes a semaphore; every pod peer is checked against the allowlist).
//!
//! Checks: no panic for any message, any limit, any allowlist.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use rpf_proto::message::{Decoder, Message};
use tokio::sync::Semaphore;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::default();
    decoder.extend(data);
    while let Ok(Some(message)) = decoder.next_message() {
        match message {
            Message::Bind { listeners, .. } => {
                for spec in &listeners {
                    let limit = Semaphore::new(spec.max_connections as usize);
                    let _ = limit.try_acquire();
                    let peers = [
                        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                    ];
                    for peer in peers.into_iter().chain(spec.addrs.iter().map(|a| a.ip)) {
                        let _ = spec.allow.is_empty()
                            || spec.allow.iter().any(|net| net.contains(&peer));
                    }
                }
            }
            // Goodbye and Error end the session; anything else is a
            // protocol error the sidecar reports by the message's wire type.
            other => {
                let _ = other.kind();
                return;
            }
        }
    }
});
