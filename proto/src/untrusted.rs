//! Text that came from the far end of a session, made safe to print.
//!
//! A pod can replace the sidecar and send any bytes: a host name with ANSI
//! escapes, a goodbye reason with a newline and a forged `Forwarding from`
//! line, a megabyte-long error. [`escape`] is the one place such text is
//! neutralised; [`Message::escaped`] applies it to every string of a
//! decoded message, so nothing the peer wrote reaches a terminal or a log
//! raw.

use std::fmt::Write as _;

use crate::message::{Message, PodRef};

/// Characters of peer text kept; the rest is cut and counted. Long enough
/// for any real host name, pod name or OS error, short enough for a line.
pub const MAX_CHARS: usize = 256;

/// `s` with every control character (C0, DEL, C1), bidirectional override
/// and line/paragraph separator escaped as `\u{..}` (`\n`, `\r`, `\t` as
/// such), cut to [`MAX_CHARS`] characters with the remainder counted.
pub fn escape(s: &str) -> String {
    escape_cut(s, MAX_CHARS)
}

/// [`escape`] with another length limit, for longer diagnostics.
pub fn escape_cut(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars + 32));
    for (i, c) in s.chars().enumerate() {
        if i == max_chars {
            let rest = s.chars().count() - i;
            let _ = write!(out, "… ({rest} more characters)");
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters a terminal acts on rather than prints, or that reorder what
/// follows them on screen.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Most feature names kept from a peer's hello.
const MAX_FEATURES: usize = 64;

impl Message {
    /// This message with every string [`escape`]d: applied to each message
    /// as it is decoded from the peer.
    pub fn escaped(self) -> Message {
        match self {
            Message::Hello {
                protocol,
                software,
                pod,
                hostname,
                resume,
                mut features,
            } => Message::Hello {
                protocol,
                software: escape(&software),
                pod: pod.map(|p| PodRef {
                    namespace: escape(&p.namespace),
                    name: escape(&p.name),
                }),
                hostname: hostname.as_deref().map(escape),
                resume,
                // Compared, never printed; a sane list is short.
                features: {
                    features.truncate(MAX_FEATURES);
                    features.iter().map(|f| escape(f)).collect()
                },
            },
            Message::BindFailed {
                id,
                addr,
                reason,
                kind,
            } => Message::BindFailed {
                id,
                addr,
                reason: escape(&reason),
                kind,
            },
            Message::Error { message } => Message::Error {
                message: escape(&message),
            },
            Message::Goodbye { reason } => Message::Goodbye {
                reason: escape(&reason),
            },
            Message::ResumeFailed { reason } => Message::ResumeFailed {
                reason: escape(&reason),
            },
            // Tokens are compared, never printed; the rest is numbers.
            other @ (Message::Bind { .. }
            | Message::Bound { .. }
            | Message::Rejected { .. }
            | Message::Resume { .. }
            | Message::Resumed { .. }) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_text_is_kept() {
        assert_eq!(escape("my-pod-7f9c"), "my-pod-7f9c");
        assert_eq!(escape("adresse déjà utilisée"), "adresse déjà utilisée");
    }

    #[test]
    fn escapes_and_newlines_cannot_reach_the_terminal() {
        let forged =
            "pod\x1b[2J\x1b]0;title\x07\nForwarding from 0.0.0.0:22 -> evil\r\u{9b}31m\u{202e}";
        let safe = escape(forged);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        assert_eq!(
            safe,
            "pod\\u{1b}[2J\\u{1b}]0;title\\u{7}\\nForwarding from 0.0.0.0:22 -> evil\\r\\u{9b}31m\\u{202e}"
        );
    }

    #[test]
    fn a_backslash_is_escaped_so_an_escape_cannot_be_forged() {
        assert_eq!(escape("a\\nb"), "a\\\\nb");
    }

    #[test]
    fn long_text_is_cut_and_counted() {
        let long = "x".repeat(MAX_CHARS + 1000);
        let safe = escape(&long);
        assert!(safe.starts_with(&"x".repeat(MAX_CHARS)));
        assert!(safe.ends_with("… (1000 more characters)"), "{safe}");
        assert_eq!(escape(&"x".repeat(MAX_CHARS)), "x".repeat(MAX_CHARS));
    }

    #[test]
    fn every_string_of_a_message_is_escaped() {
        let hello = Message::Hello {
            protocol: 1,
            software: "1\n".into(),
            pod: Some(PodRef {
                namespace: "n\x1b".into(),
                name: "p\n".into(),
            }),
            hostname: Some("h\x1b".into()),
            resume: false,
            features: vec![],
        };
        let Message::Hello {
            software,
            pod: Some(pod),
            hostname: Some(hostname),
            ..
        } = hello.escaped()
        else {
            panic!("still a hello")
        };
        assert_eq!(
            [software, pod.namespace, pod.name, hostname],
            ["1\\n", "n\\u{1b}", "p\\n", "h\\u{1b}"]
        );
        for (msg, want) in [
            (
                Message::Goodbye {
                    reason: "\n".into(),
                },
                Message::Goodbye {
                    reason: "\\n".into(),
                },
            ),
            (
                Message::ResumeFailed {
                    reason: "\n".into(),
                },
                Message::ResumeFailed {
                    reason: "\\n".into(),
                },
            ),
            (
                Message::Error {
                    message: "\x1b".into(),
                },
                Message::Error {
                    message: "\\u{1b}".into(),
                },
            ),
        ] {
            assert_eq!(msg.escaped(), want);
        }
    }
}
