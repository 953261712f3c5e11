//! Simulated recording files: bytes generated from the call id, so a test knows a recording's
//! SHA-256 without anyone storing it, served in chunks (a 250 MB recording costs one chunk of
//! memory), behind signed URLs that expire like Aircall's S3 links.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Bytes generated per chunk served.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Which audio file of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioKind {
    Recording,
    Voicemail,
}

impl AudioKind {
    pub fn path_segment(self) -> &'static str {
        match self {
            Self::Recording => "recordings",
            Self::Voicemail => "voicemails",
        }
    }
    fn salt(self) -> u64 {
        match self {
            Self::Recording => 0x5245_434f_5244_494e,
            Self::Voicemail => 0x564f_4943_454d_4149,
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The content of one audio file, produced a chunk at a time.
#[derive(Debug, Clone)]
pub struct AudioSource {
    seed: u64,
    size: u64,
    position: u64,
}

impl AudioSource {
    pub fn new(call_id: u64, kind: AudioKind, size: u64) -> Self {
        Self {
            seed: splitmix64(call_id ^ kind.salt()),
            size,
            position: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk (at most `max` bytes), or `None` at the end.
    pub fn next_chunk(&mut self, max: usize) -> Option<Bytes> {
        let left = self.size - self.position;
        if left == 0 {
            return None;
        }
        let len = left.min(max as u64) as usize;
        let mut buf = Vec::with_capacity(len + 8);
        // Each 8-byte word is a function of its index, so any chunking yields the same bytes.
        let mut word_index = self.position / 8;
        let skip = (self.position % 8) as usize;
        while buf.len() < len + skip {
            buf.extend_from_slice(
                &splitmix64(self.seed ^ word_index.wrapping_mul(0xd6e8_feb8_6659_fd93))
                    .to_le_bytes(),
            );
            word_index += 1;
        }
        buf.drain(..skip);
        buf.truncate(len);
        self.position += len as u64;
        Some(Bytes::from(buf))
    }
}

/// SHA-256 (hex) of the audio file the simulator serves for this call.
pub fn audio_sha256(call_id: u64, kind: AudioKind, size: u64) -> String {
    let mut source = AudioSource::new(call_id, kind, size);
    let mut hasher = Sha256::new();
    while let Some(chunk) = source.next_chunk(1 << 20) {
        hasher.update(&chunk);
    }
    hex::encode(hasher.finalize())
}

/// Signs and checks audio URLs in the shape of S3 presigned links.
#[derive(Clone)]
pub struct UrlSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner")
    }
}

/// The signature parameters of a link, as received.
#[derive(Debug, Clone, Copy)]
pub struct SignedLink<'a> {
    /// `X-Amz-Date`.
    pub amz_date: &'a str,
    /// `X-Amz-Expires`, seconds.
    pub expires: &'a str,
    /// `X-Amz-Signature`.
    pub signature: &'a str,
}

/// Why a signed link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    BadSignature,
    Expired,
}

impl UrlSigner {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    fn signature(
        &self,
        company: u64,
        call_id: u64,
        kind: AudioKind,
        date: i64,
        expires_s: i64,
    ) -> String {
        // Any key length is valid for HMAC.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(
            format!(
                "{company}/{}/{call_id}/{date}/{expires_s}",
                kind.path_segment()
            )
            .as_bytes(),
        );
        hex::encode(mac.finalize().into_bytes())
    }

    /// The query string of a link to an audio file, valid `ttl_s` seconds from `now_s`.
    pub fn query(
        &self,
        company: u64,
        call_id: u64,
        kind: AudioKind,
        now_s: i64,
        ttl_s: i64,
    ) -> String {
        let date = format_amz_date(now_s);
        format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={date}&X-Amz-Expires={ttl_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={}",
            self.signature(company, call_id, kind, now_s, ttl_s)
        )
    }

    /// Checks the link to `kind` of `call_id` of `company` at `now_s`.
    pub fn check(
        &self,
        (company, call_id, kind): (u64, u64, AudioKind),
        link: &SignedLink<'_>,
        now_s: i64,
    ) -> Result<(), LinkProblem> {
        let signed_at = parse_amz_date(link.amz_date).ok_or(LinkProblem::BadSignature)?;
        let ttl: i64 = link
            .expires
            .parse()
            .map_err(|_| LinkProblem::BadSignature)?;
        let expected = self.signature(company, call_id, kind, signed_at, ttl);
        let same = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), link.signature.as_bytes());
        if !bool::from(same) {
            return Err(LinkProblem::BadSignature);
        }
        if now_s > signed_at + ttl {
            return Err(LinkProblem::Expired);
        }
        Ok(())
    }
}

/// `20261129T062800Z`, as S3 writes `X-Amz-Date`.
pub fn format_amz_date(unix_s: i64) -> String {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Reads an `X-Amz-Date` back into Unix seconds (the worker reads it the same way).
pub use crate::import::download::parse_amz_date;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunking_does_not_change_the_bytes() {
        let whole = AudioSource::new(42, AudioKind::Recording, 100_003)
            .next_chunk(1 << 20)
            .unwrap();
        let mut source = AudioSource::new(42, AudioKind::Recording, 100_003);
        let mut pieces = Vec::new();
        while let Some(chunk) = source.next_chunk(4_099) {
            pieces.extend_from_slice(&chunk);
        }
        assert_eq!(whole.as_ref(), pieces.as_slice());
        assert_ne!(
            audio_sha256(42, AudioKind::Recording, 1_000),
            audio_sha256(43, AudioKind::Recording, 1_000)
        );
    }

    #[test]
    fn links_expire_and_refuse_tampering() {
        let signer = UrlSigner::new([7; 32]);
        let now = 1_764_000_000;
        let query = signer.query(1, 99, AudioKind::Recording, now, 600);
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_string()
        };
        let (date, expires, sig) = (
            param("X-Amz-Date"),
            param("X-Amz-Expires"),
            param("X-Amz-Signature"),
        );
        let link = SignedLink {
            amz_date: &date,
            expires: &expires,
            signature: &sig,
        };
        let call = (1, 99, AudioKind::Recording);
        assert_eq!(signer.check(call, &link, now + 600), Ok(()));
        assert_eq!(
            signer.check(call, &link, now + 601),
            Err(LinkProblem::Expired)
        );
        let other_call = (1, 98, AudioKind::Recording);
        assert_eq!(
            signer.check(other_call, &link, now),
            Err(LinkProblem::BadSignature)
        );
        let stretched = SignedLink {
            expires: "6000",
            ..link
        };
        assert_eq!(
            signer.check(call, &stretched, now),
            Err(LinkProblem::BadSignature)
        );
    }
}
