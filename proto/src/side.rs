//! Which end of the tunnel is speaking, and the version-mismatch wording
//! both ends show.

/// One end of a tunnel session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The `rpf` command on the user's machine (the HTTP/2 server).
    Cli,
    /// The in-pod sidecar (the HTTP/2 client).
    Sidecar,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Cli => Side::Sidecar,
            Side::Sidecar => Side::Cli,
        }
    }

    /// "the CLI" or "the sidecar", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Side::Cli => "the CLI",
            Side::Sidecar => "the sidecar",
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The message a version mismatch shows on either end: both versions, and
/// which side to upgrade.
pub fn version_mismatch(ours: u32, theirs: u32, their_software: &str, we_are: Side) -> String {
    let (sidecar, cli) = match we_are {
        Side::Cli => (theirs, ours),
        Side::Sidecar => (ours, theirs),
    };
    let advice = if cli < sidecar {
        format!("upgrade rpf (the CLI) to {their_software} or later")
    } else {
        "upgrade the sidecar: recreate the pod so the webhook injects the current image, or re-run `rpf inject`".to_string()
    };
    format!(
        "protocol version mismatch: the sidecar speaks rpf protocol {sidecar}, the CLI speaks protocol {cli}; {advice}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_says_both_versions_and_who_upgrades() {
        let m = version_mismatch(1, 2, "0.2.0", Side::Cli);
        assert!(m.contains("sidecar speaks rpf protocol 2"), "{m}");
        assert!(m.contains("CLI speaks protocol 1"), "{m}");
        assert!(m.contains("upgrade rpf (the CLI) to 0.2.0"), "{m}");
        let m = version_mismatch(2, 1, "0.1.0", Side::Cli);
        assert!(m.contains("upgrade the sidecar"), "{m}");
        let m = version_mismatch(1, 2, "0.2.0", Side::Sidecar);
        assert!(m.contains("upgrade the sidecar"), "{m}");
    }
}
