//! Recording downloads: a signed URL streamed into storage under a hard size cap, hashed on the
//! way, in constant memory.
//!
//! A URL is fetched only when its host is one of `import.recording_hosts` and, in production,
//! over HTTPS on the standard port, to a public address (names resolving to loopback, private,
//! link-local or other internal addresses are refused): a webhook names the URL, and a
//! forged-but-validly-tokened webhook must not make the worker fetch an internal address. No
//! credential is ever sent with it (the signature is in the query string) and redirects are not
//! followed. Errors never carry the URL: its signature is a secret.
//!
//! Whatever goes wrong, nothing appears under the final key: the upload is aborted, so a
//! truncated or oversized body never becomes a stored file.

use sha2::{Digest, Sha256};
use url::Url;

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
    /// 400, 401, 403, 404 or 410 from the storage host: the signed link expired (S3 says so
    /// with a 403, or a 400 `ExpiredToken` for links signed with temporary credentials).
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
    /// Connecting or reading failed. (The error carries no URL: signed URLs are secrets.)
    #[error("downloading the recording failed")]
    Broken(#[source] reqwest::Error),
    #[error("storing the recording failed")]
    Storage(#[from] StorageError),
}

impl DownloadError {
    fn broken(e: reqwest::Error) -> Self {
        Self::Broken(e.without_url())
    }
}

impl DownloadError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Refused(_) | Self::TooLarge { .. } => false,
            // A redirect is not followed (it could lead anywhere): a later link may not have one.
            Self::Status { status } => {
                (300..400).contains(status) || *status >= 500 || *status == 429 || *status == 408
            }
            Self::Expired { .. } | Self::Truncated { .. } | Self::Broken(_) | Self::Storage(_) => {
                true
            }
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

/// Resolves names like the system does, keeping only public addresses: an allowed host name
/// that resolves inside the network (a DNS trick, or a cloud name such as an internal load
/// balancer's) is not fetched.
struct PublicAddressesOnly;

impl reqwest::dns::Resolve for PublicAddressesOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                // 100.64.0.0/10, carrier-grade NAT.
                || (a == 100 && (64..128).contains(&b))
                // 198.18.0.0/15, benchmarking.
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
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
        let mut http = reqwest::Client::builder()
            .connect_timeout(settings.download_connect_timeout())
            // Between two reads; a 200 MB recording may take minutes in all, and that is fine.
            .read_timeout(settings.download_read_timeout())
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("aircall-ingest/", env!("CARGO_PKG_VERSION")));
        if https_only {
            http = http.dns_resolver(PublicAddressesOnly);
        }
        let http = http.build()?;
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
        if self.https_only && url.port().is_some() {
            return Err(DownloadError::Refused("a non-standard port".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(DownloadError::Refused("the URL carries credentials".into()));
        }
        let host = url
            .host_str()
            .ok_or_else(|| DownloadError::Refused("no host".into()))?
            .to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        let internal_ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !is_public(ip));
        if self.https_only && internal_ip {
            return Err(DownloadError::Refused(format!(
                "`{host}` is an internal address"
            )));
        }
        if !self.hosts.iter().any(|p| p.matches(host)) {
            return Err(DownloadError::Refused(format!(
                "host `{host}` is not in import.recording_hosts"
            )));
        }
        Ok(url)
    }

    /// Streams the audio at `url` into `storage` under `key`, refusing more than `max_bytes`.
    /// Dropping the future mid-way leaves nothing under `key` (the upload cleans up).
    pub async fn download(
        &self,
        url: &str,
        storage: &Storage,
        key: &str,
        max_bytes: u64,
    ) -> Result<Downloaded, DownloadError> {
        let url = self.check_url(url)?;
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(DownloadError::broken)?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            400 | 401 | 403 | 404 | 410 => return Err(DownloadError::Expired { status }),
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
        let streamed: Result<(), DownloadError> = async {
            while let Some(chunk) = response.chunk().await.map_err(DownloadError::broken)? {
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
            "https://media.example.com:8443/a.mp3",
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
    fn internal_addresses_are_not_public() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(internal.parse().unwrap()), "{internal}");
        }
        for public in ["52.95.110.1", "8.8.8.8", "2600:1f18::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
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
