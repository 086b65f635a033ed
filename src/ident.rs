//! Identifiers that come from outside envup (boxes, catalogs, lock files,
//! state files), each checked once where it enters, and a way to print
//! any untrusted text without letting it steer the terminal.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A sha256 digest: exactly 64 lowercase hex digits. Nothing else is ever
/// used as a file name under the store or its downloads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}` is not a sha256 digest (64 lowercase hex digits)", printable(.0))]
pub struct BadDigest(pub String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, BadDigest> {
        if is_hex_digest(s) {
            Ok(Digest(s.to_owned()))
        } else {
            Err(BadDigest(s.to_owned()))
        }
    }

    /// The digest of bytes envup hashed itself.
    pub fn from_sha256(hash: &[u8]) -> Digest {
        Digest(hash.iter().map(|b| format!("{b:02x}")).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<String> for Digest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Digest {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The longest box name or version envup takes.
pub const MAX_BOX_NAME: usize = 128;

/// A box name (`team/base`) or version (`1.2.0`): letters, digits and
/// `. _ - + /`, no empty, `.` or `..` part between slashes, at most 128
/// bytes. The reason it is not, when it is not.
pub fn box_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("it is empty");
    }
    if s.len() > MAX_BOX_NAME {
        return Some("it is longer than 128 bytes");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+/".contains(&b))
    {
        return Some("only letters, digits and . _ - + / are allowed");
    }
    if s.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return Some("each part between slashes must be a name");
    }
    None
}

/// A POSIX user name as useradd takes it: `[a-z_][a-z0-9_-]*`, optionally
/// ending in `$`, at most 32 bytes.
pub fn is_user_name(s: &str) -> bool {
    let body = s.strip_suffix('$').unwrap_or(s);
    let mut bytes = body.bytes();
    s.len() <= 32
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Untrusted text as it may be printed: control characters (newlines,
/// escapes, NUL) shown as Rust escapes, everything else as it is.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        s.into()
    }
}

/// The most bytes of one line envup prints; the rest is said to be there.
pub const MAX_SHOWN_LINE: usize = 4096;

/// Text from outside (what a machine or a plugin printed, an error that
/// carries it) as envup shows it on a terminal: each line with its control
/// characters escaped (a tab stays), so nothing moves the cursor, clears
/// the screen or sets the title, and cut at [`MAX_SHOWN_LINE`] bytes. The
/// raw bytes stay in the logs.
pub fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(1 << 16));
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (n, (at, c)) in line.char_indices().enumerate() {
            if n >= MAX_SHOWN_LINE {
                out.push_str(&format!("… ({} more bytes)", line.len() - at));
                break;
            }
            if c.is_control() && c != '\t' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_text_cannot_drive_a_terminal() {
        assert_eq!(
            shown("a\tb\n\x1b]0;owned\x07c"),
            "a\tb\n\\u{1b}]0;owned\\u{7}c"
        );
        assert_eq!(shown("\x1b[2J"), "\\u{1b}[2J");
        let long = "x".repeat(MAX_SHOWN_LINE + 10);
        let s = shown(&long);
        assert!(s.len() < MAX_SHOWN_LINE + 40, "{}", s.len());
        assert!(s.ends_with("(10 more bytes)"), "{s}");
    }

    #[test]
    fn digests() {
        let good = "ab".repeat(32);
        assert!(Digest::parse(&good).is_ok());
        for bad in [
            "../../x",
            "",
            &"AB".repeat(32),
            &"ab".repeat(33),
            &"zz".repeat(32),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        let e: Result<Digest, _> = serde_json::from_str("\"../x\"");
        assert!(e.unwrap_err().to_string().contains("not a sha256"));
    }

    #[test]
    fn box_names() {
        for ok in ["tiny", "debian/bookworm", "team/tiny", "1.2.0", "12.8.0+b1"] {
            assert_eq!(box_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "..",
            "a/../b",
            "a//b",
            "/abs",
            "a\nb",
            "a\0b",
            "\u{1b}[31mred",
            "sp ace",
        ] {
            assert!(box_name_problem(bad).is_some(), "{bad:?}");
        }
        assert!(box_name_problem(&"a".repeat(129)).is_some());
    }

    #[test]
    fn user_names() {
        for ok in ["root", "vagrant", "_svc", "dev-1", "machine$"] {
            assert!(is_user_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Root",
            "1x",
            "a b",
            "x\nProxyCommand y",
            "a:b",
            &"a".repeat(33),
        ] {
            assert!(!is_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn printable_escapes_controls() {
        assert_eq!(printable("a\nb\u{1b}[0m\0"), "a\\nb\\u{1b}[0m\\u{0}");
        assert_eq!(printable("plain/name"), "plain/name");
    }
}
