//! The control-message decoder fed arbitrary bytes in arbitrary chunkings,
//! as a hostile peer can send them (one DATA frame per chunk).
//!
//! The first input byte picks the chunk sizes; the rest is the stream.
//! Checks: no panic, the buffer never holds more than a line's cap plus one
//! chunk, and every message decoded re-encodes to a line that decodes to
//! the same message (what the sidecar answers with is what it understood).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpf_proto::message::{Decoder, MAX_MESSAGE_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = Decoder::default();
    let mut rest = stream;
    let mut step = 0usize;
    while !rest.is_empty() {
        // Chunk sizes 1..=16 cycling from the seed: exercises lines split at
        // every position, including inside multi-byte UTF-8.
        let size = (usize::from(seed.rotate_left(step as u32 % 8)) % 16 + 1).min(rest.len());
        step += 1;
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        decoder.extend(chunk);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => {
                    let line = message.encode();
                    let mut again = Decoder::default();
                    again.extend(&line);
                    let back = again.next_message().expect("our own encoding decodes");
                    assert_eq!(
                        back.as_ref(),
                        Some(&message),
                        "re-encoding changed the message"
                    );
                    assert_eq!(again.pending(), 0);
                }
                Ok(None) => break,
                // A malformed or over-long line ends the session: stop here
                // as the session does.
                Err(_) => return,
            }
        }
        assert!(decoder.pending() <= MAX_MESSAGE_LEN + 16);
    }
});
