//! Paths and command lines in envup's JSON files, byte for byte: as text
//! where they are UTF-8 (nearly always), else as an array of their bytes,
//! so that a path that is not UTF-8 comes back exactly as it was written.
//! Use with `#[serde(with = "crate::state::bytes::path")]` and the like.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Bytes(Vec<u8>),
}

fn to_repr(s: &OsStr) -> Repr {
    match s.to_str() {
        Some(t) => Repr::Text(t.to_owned()),
        None => Repr::Bytes(s.as_bytes().to_vec()),
    }
}

fn from_repr(r: Repr) -> OsString {
    match r {
        Repr::Text(t) => t.into(),
        Repr::Bytes(b) => OsString::from_vec(b),
    }
}

/// One path.
pub mod path {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        to_repr(p.as_os_str()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Repr::deserialize(d).map(|r| from_repr(r).into())
    }
}

/// A command line.
pub mod args {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[OsString], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|a| to_repr(a)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<OsString>, D::Error> {
        Vec::<Repr>::deserialize(d).map(|v| v.into_iter().map(from_repr).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "path")]
        p: PathBuf,
        #[serde(with = "args")]
        a: Vec<OsString>,
    }

    #[test]
    fn text_stays_text_and_other_bytes_survive() {
        let odd = OsString::from_vec(b"/tmp/a\xff\xfe b".to_vec());
        let t = T {
            p: PathBuf::from(&odd),
            a: vec!["-name".into(), odd],
        };
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"-name\""), "{json}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), t);
        let plain = T {
            p: "/tmp/x".into(),
            a: vec![],
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"p":"/tmp/x","a":[]}"#
        );
    }
}
