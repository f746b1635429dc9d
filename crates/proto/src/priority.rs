//! RFC 9218 priorities: what a browser says about how much it needs each response.
//!
//! Chromium sends a `priority` request header with every HTTP/2 request: `u=0, i` for the
//! page itself, `u=0` for a style sheet, `u=1` for a script the page waits for, `u=2, i` for
//! an image, nothing (the default, `u=3`) for a deferred script. Both ends use it: the edge
//! hands a busy HTTP/2 connection the most urgent responses first, the connector gives the
//! response's tunnel stream a matching send priority. It only orders one client's own
//! responses among themselves, so reading it leniently costs nobody else anything.

/// How urgently a client wants a response, and whether it can use it piece by piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority {
    /// 0 (most urgent) to [`Priority::LEAST_URGENT`]; 3 when the client says nothing.
    pub urgency: u8,
    /// The client can use the response while it arrives (a page, an image), so it may share
    /// the link with others of its urgency; a non-incremental one (a script) is of use only
    /// whole, so such responses are best sent one after another.
    pub incremental: bool,
}

impl Default for Priority {
    fn default() -> Self {
        Self {
            urgency: 3,
            incremental: false,
        }
    }
}

/// A `priority` field longer than this (all lines together) is not read: a browser's is a
/// few bytes.
const MAX_FIELD: usize = 256;

impl Priority {
    /// The least urgent urgency, RFC 9218's 7.
    pub const LEAST_URGENT: u8 = 7;

    /// Reads the `priority` field from its lines, in order (a Structured Fields dictionary,
    /// RFC 8941): `u` is an integer 0–7, `i` a boolean (`i` alone is true). Lenient: members
    /// and parameters it does not know or cannot read are skipped, an out-of-range `u` is
    /// ignored, a later member wins over an earlier one, and anything else is the default.
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut priority = Self::default();
        let mut total = 0usize;
        for line in lines {
            total = total.saturating_add(line.len());
            if total > MAX_FIELD {
                return Self::default();
            }
            for member in line.split(|&b| b == b',') {
                // Parameters (`;key=value`) follow a member's value; none matter here.
                let member = member.split(|&b| b == b';').next().unwrap_or_default();
                let member = member.trim_ascii();
                let (key, value) = match member.iter().position(|&b| b == b'=') {
                    Some(at) => (&member[..at], Some(&member[at + 1..])),
                    None => (member, None),
                };
                match (key, value) {
                    (b"u", Some(value)) => {
                        if let Some(urgency) = urgency(value) {
                            priority.urgency = urgency;
                        }
                    }
                    (b"i", None | Some(b"?1")) => priority.incremental = true,
                    (b"i", Some(b"?0")) => priority.incremental = false,
                    _ => {}
                }
            }
        }
        priority
    }
}

/// An sf-integer in 0..=7.
fn urgency(value: &[u8]) -> Option<u8> {
    match value {
        [digit @ b'0'..=b'7'] => Some(digit - b'0'),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Priority {
        Priority::parse(lines.iter().map(|l| l.as_bytes()))
    }

    fn p(urgency: u8, incremental: bool) -> Priority {
        Priority {
            urgency,
            incremental,
        }
    }

    #[test]
    fn what_chromium_sends() {
        assert_eq!(parse(&["u=0, i"]), p(0, true));
        assert_eq!(parse(&["u=0"]), p(0, false));
        assert_eq!(parse(&["u=1"]), p(1, false));
        assert_eq!(parse(&["u=2, i"]), p(2, true));
        assert_eq!(parse(&["u=1, i"]), p(1, true));
        assert_eq!(parse(&[]), p(3, false));
    }

    #[test]
    fn the_dictionary_forms() {
        assert_eq!(parse(&["i=?1"]), p(3, true));
        assert_eq!(parse(&["i, i=?0"]), p(3, false));
        assert_eq!(parse(&["u=5;x=1, i;y"]), p(5, true));
        assert_eq!(parse(&["u=6", "i"]), p(6, true));
        assert_eq!(parse(&["u=1,u=4"]), p(4, false));
        assert_eq!(parse(&["\tu=2 ,  i "]), p(2, true));
        // Unknown members are skipped, known ones still count.
        assert_eq!(parse(&["x=\"a\", u=1, y=:AA==:"]), p(1, false));
    }

    #[test]
    fn what_it_cannot_read_is_the_default() {
        for bad in [
            "u=8", "u=-1", "u=1.5", "u=01", "u=", "u=\"1\"", "U=1", "u = 1", "i=1", "i=?2", "",
            ",,,", "u=ä",
        ] {
            let got = parse(&[bad]);
            assert_eq!(got, Priority::default(), "{bad:?}");
        }
        // An overlong field is not read at all.
        let long = format!("u=1, {}", "x, ".repeat(100));
        assert_eq!(parse(&[long.as_str()]), Priority::default());
        // Arbitrary bytes never panic.
        let bytes: Vec<u8> = (0..=255).collect();
        for chunk in bytes.chunks(7) {
            let _ = Priority::parse([chunk]);
        }
    }
}
