//! Blob references: how a row names a stored clip, image or file (`sha256:<64 hex digits>`).
//!
//! A blob is stored once under the SHA-256 of its bytes, so the reference is also its
//! checksum, and only text of exactly this form can become a path in the blob store.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::wav::WavInfo;
use crate::{CoreError, Point, Quality, Timestamp, Value};

const PREFIX: &str = "sha256:";

/// The table every stored blob is listed in, with its size, media type and clip header.
pub const BLOBS_TABLE: &str = "_blobs";

/// The media type of WAV clips as Fabrik serves them back.
pub const WAV_MEDIA_TYPE: &str = "audio/wav";

/// A blob about to be stored, and the row that will name it.
#[derive(Debug, Clone)]
pub struct BlobRow<'a> {
    /// The table of the naming row.
    pub table: String,
    /// Tags of the naming row (`device` first).
    pub tags: Vec<(String, String)>,
    /// The field of the naming row that holds the id.
    pub signal: String,
    /// The bytes.
    pub bytes: &'a [u8],
    /// Their media type.
    pub content_type: String,
    /// The header, for WAV clips.
    pub audio: Option<WavInfo>,
    /// When the recording starts.
    pub time: Timestamp,
}

impl BlobRow<'_> {
    /// The id the bytes will be stored under.
    pub fn id(&self) -> BlobId {
        BlobId::of(self.bytes)
    }

    /// The row naming the blob in its table, and its entry in [`BLOBS_TABLE`] (tagged with the
    /// table, the signal and the naming row's tags): written together, both or neither.
    pub fn points(&self) -> Vec<Point> {
        let id = self.id().to_string();
        let mut listed = vec![
            ("id".to_owned(), Value::Str(id.clone())),
            (
                "content_type".to_owned(),
                Value::Str(self.content_type.clone()),
            ),
            ("bytes".to_owned(), Value::U64(self.bytes.len() as u64)),
        ];
        if let Some(audio) = &self.audio {
            listed.extend([
                (
                    "sample_rate".to_owned(),
                    Value::U64(u64::from(audio.sample_rate)),
                ),
                ("channels".to_owned(), Value::U64(u64::from(audio.channels))),
                ("frames".to_owned(), Value::U64(audio.frames)),
                ("duration_s".to_owned(), Value::F64(audio.duration_s())),
            ]);
        }
        let mut listing_tags = self.tags.clone();
        listing_tags.push(("table".to_owned(), self.table.clone()));
        listing_tags.push(("signal".to_owned(), self.signal.clone()));
        vec![
            Point {
                measurement: self.table.clone(),
                tags: self.tags.clone(),
                fields: vec![(self.signal.clone(), Value::Str(id))],
                time: self.time,
                quality: Quality::Good,
            },
            Point {
                measurement: BLOBS_TABLE.to_owned(),
                tags: listing_tags,
                fields: listed,
                time: self.time,
                quality: Quality::Good,
            },
        ]
    }
}

/// The content address of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlobId(String);

impl BlobId {
    /// Parses `sha256:` followed by 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let fail = |reason| {
            Err(CoreError::InvalidId {
                kind: "blob id",
                value: text.chars().take(80).collect(),
                reason,
            })
        };
        let Some(hex) = text.strip_prefix(PREFIX) else {
            return fail("must start with `sha256:`");
        };
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return fail("must be `sha256:` and 64 lowercase hex digits");
        }
        Ok(Self(text.to_owned()))
    }

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_digest(&Sha256::digest(bytes).into())
    }

    /// The id of bytes whose SHA-256 digest is `digest`.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        use std::fmt::Write;
        let mut text = String::with_capacity(PREFIX.len() + 64);
        text.push_str(PREFIX);
        for byte in digest {
            // Writing to a String cannot fail.
            let _ = write!(text, "{byte:02x}");
        }
        Self(text)
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BlobId {
    type Error = CoreError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<BlobId> for String {
    fn from(id: BlobId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sha256_in_lowercase_hex_is_a_blob_id() {
        let id = BlobId::from_digest(&[0xab; 32]);
        assert_eq!(id.hex(), "ab".repeat(32));
        assert_eq!(BlobId::parse(id.as_str()).unwrap(), id);
        for bad in [
            "",
            "ab".repeat(32).as_str(),
            &format!("sha256:{}", "AB".repeat(32)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:../../{}", "a".repeat(58)),
            &format!("md5:{}", "a".repeat(64)),
        ] {
            assert!(BlobId::parse(bad).is_err(), "{bad}");
        }
    }
}
