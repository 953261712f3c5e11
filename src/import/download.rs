//! Recording downloads: a signed URL streamed into storage under a hard size cap, hashed on the
//! way, in constant memory.
//!
//! A URL is fetched only when its host is one of `import.recording_hosts` and, in production,
//! over HTTPS: a webhook names the URL, and a forged-but-validly-tokened webhook must not make
//! the worker fetch an internal address. No credential is ever sent with it (the signature is
//! in the query string) and redirects are not followed.
//!
//! Whatever goes wrong, nothing appears under the final key: the upload is aborted, so a
//! truncated or oversized body never becomes a stored file.

use std::time::Instant;

use sha2::{Digest, Sha256};
use url::Url;

use super::lease::Lease;
use super::storage::{Storage, StorageError, Stored};
use crate::config::ImportSettings;

/// What is stored when a recording has no content type of its own.
pub const DEFAULT_CONTENT_TYPE: &str = "audio/mpeg";

/// Why a download did not produce a stored file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL is not one this service fetches (host not allowed, not HTTPS, not a URL).
    #[error("recording URL refused: {0}")]
    Refused(String),
    /// 403 or 404 from the storage host: the signed link expired.
    #[error("the recording link expired (HTTP {status})")]
    Expired { status: u16 },
    /// Any other non-2xx answer.
    #[error("the recording host answered HTTP {status}")]
    Status { status: u16 },
    /// Over the size limit, announced by `Content-Length` or found while streaming.
    #[error("the recording exceeds {limit} bytes ({seen} bytes {how})")]
    TooLarge {
        limit: u64,
        seen: u64,
        how: &'static str,
    },
    /// The body ended before its `Content-Length`.
    #[error("the recording ended after {received} of {expected} bytes")]
    Truncated { received: u64, expected: u64 },
    /// Connecting or reading failed.
    #[error("downloading the recording failed")]
    Broken(#[source] reqwest::Error),
    #[error("storing the recording failed")]
    Storage(#[from] StorageError),
    /// Another worker took over the call (our lease lapsed).
    #[error("the lease on the call was lost during the download")]
    LeaseLost,
    #[error("Redis failed while renewing the lease")]
    Redis(#[from] redis::RedisError),
}

impl DownloadError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused(_) | Self::TooLarge { .. } => false,
            Self::Status { status } => *status >= 500 || *status == 429 || *status == 408,
            Self::Expired { .. }
            | Self::Truncated { .. }
            | Self::Broken(_)
            | Self::Storage(_)
            | Self::LeaseLost
            | Self::Redis(_) => true,
        }
    }
}

/// A recording stored under its final key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub stored: Stored,
    pub sha256: String,
    pub content_type: String,
}

/// `20261129T062800Z` (S3's `X-Amz-Date`) as Unix seconds.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(text, &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

/// A host pattern of `import.recording_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any subdomain of `example.com`.
    Subdomains(String),
}

impl HostPattern {
    fn parse(text: &str) -> Self {
        let text = text.trim().to_ascii_lowercase();
        match text.strip_prefix("*.") {
            Some(domain) => Self::Subdomains(format!(".{domain}")),
            None => Self::Exact(text),
        }
    }
    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => host == exact,
            Self::Subdomains(suffix) => host.ends_with(suffix.as_str()),
        }
    }
}

/// Fetches recordings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Downloader {
    http: reqwest::Client,
    hosts: Vec<HostPattern>,
    https_only: bool,
}

impl Downloader {
    /// `https_only` is production's rule; development also fetches plain HTTP (the simulator).
    pub fn new(settings: &ImportSettings, https_only: bool) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.download_connect_timeout())
            // Between two reads; a 200 MB recording may take minutes in all, and that is fine.
            .read_timeout(settings.download_read_timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aircall-ingest/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            hosts: settings
                .recording_hosts
                .iter()
                .map(|h| HostPattern::parse(h))
                .collect(),
            https_only,
        })
    }

    /// The URL, if this service may fetch it.
    pub fn check_url(&self, text: &str) -> Result<Url, DownloadError> {
        let url = Url::parse(text).map_err(|_| DownloadError::Refused("not a URL".into()))?;
        match url.scheme() {
            "https" => {}
            "http" if !self.https_only => {}
            other => {
                return Err(DownloadError::Refused(format!(
                    "scheme `{other}` (only HTTPS is fetched)"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DownloadError::Refused("the URL carries credentials".into()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| DownloadError::Refused("no host".into()))?
            .to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        if !self.hosts.iter().any(|p| p.matches(host)) {
            return Err(DownloadError::Refused(format!(
                "host `{host}` is not in import.recording_hosts"
            )));
        }
        Ok(url)
    }

    /// Streams the audio at `url` into `storage` under `key`, refusing more than `max_bytes`.
    /// Renews `lease` as it goes, and stops if it was lost.
    pub async fn download(
        &self,
        url: &str,
        storage: &Storage,
        key: &str,
        max_bytes: u64,
        lease: &Lease,
    ) -> Result<Downloaded, DownloadError> {
        let url = self.check_url(url)?;
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(DownloadError::Broken)?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            403 | 404 => return Err(DownloadError::Expired { status }),
            _ => return Err(DownloadError::Status { status }),
        }
        let declared = response.content_length();
        if let Some(length) = declared.filter(|l| *l > max_bytes) {
            return Err(DownloadError::TooLarge {
                limit: max_bytes,
                seen: length,
                how: "announced",
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.starts_with("audio/"))
            .unwrap_or(DEFAULT_CONTENT_TYPE)
            .to_string();

        let mut upload = storage.begin(key, &content_type).await?;
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut renewed_at = Instant::now();
        let streamed: Result<(), DownloadError> = async {
            while let Some(chunk) = response.chunk().await.map_err(DownloadError::Broken)? {
                received += chunk.len() as u64;
                if received > max_bytes {
                    return Err(DownloadError::TooLarge {
                        limit: max_bytes,
                        seen: received,
                        how: "received before stopping",
                    });
                }
                hasher.update(&chunk);
                upload.write(chunk).await?;
                if renewed_at.elapsed() >= lease.renew_every() {
                    if !lease.renew().await? {
                        return Err(DownloadError::LeaseLost);
                    }
                    renewed_at = Instant::now();
                }
            }
            match declared {
                Some(expected) if expected != received => {
                    Err(DownloadError::Truncated { received, expected })
                }
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = streamed {
            upload.abort().await;
            return Err(e);
        }
        let stored = upload.finish().await?;
        Ok(Downloaded {
            stored,
            sha256: hex::encode(hasher.finalize()),
            content_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downloader(hosts: &[&str], https_only: bool) -> Downloader {
        let settings = ImportSettings {
            recording_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..ImportSettings::default()
        };
        Downloader::new(&settings, https_only).unwrap()
    }

    #[test]
    fn only_configured_hosts_are_fetched() {
        let d = downloader(&["*.amazonaws.com", "media.example.com"], true);
        for good in [
            "https://aircall-recordings.s3.amazonaws.com/a.mp3?X-Amz-Signature=x",
            "https://media.example.com/a.mp3",
            "https://MEDIA.example.com./a.mp3",
        ] {
            assert!(d.check_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://aircall-recordings.s3.amazonaws.com/a.mp3",
            "https://amazonaws.com.evil.net/a.mp3",
            "https://evilamazonaws.com/a.mp3",
            "https://127.0.0.1/a.mp3",
            "https://169.254.169.254/latest/meta-data/",
            "https://user:pw@media.example.com/a.mp3",
            "file:///etc/passwd",
            "not a url",
        ] {
            assert!(
                matches!(d.check_url(bad), Err(DownloadError::Refused(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn development_also_fetches_plain_http_from_allowed_hosts() {
        let d = downloader(&["127.0.0.1"], false);
        assert!(
            d.check_url("http://127.0.0.1:9000/recordings/1/2.mp3")
                .is_ok()
        );
        assert!(d.check_url("http://localhost:9000/x.mp3").is_err());
    }
}
