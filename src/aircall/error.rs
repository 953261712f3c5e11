//! The one error type of every Aircall API call, split the way callers must react to it.

use std::time::Duration;

use super::ratelimit::BudgetError;

/// What went wrong talking to Aircall.
#[derive(Debug, thiserror::Error)]
pub enum AircallError {
    /// 401 or 403: the API ID / token pair is wrong, revoked, or not an admin's. Retrying cannot
    /// help; the connection needs new credentials.
    #[error("Aircall rejected the API credentials (HTTP {status})")]
    InvalidCredentials { status: u16 },
    /// 404 on a resource (a call, a webhook).
    #[error("not found on Aircall")]
    NotFound,
    /// 429 on every attempt. `retry_after` is Aircall's own estimate of when the budget refills.
    #[error(
        "Aircall's rate limit is still exhausted after {attempts} attempts; retry in {retry_after:?}"
    )]
    RateLimited {
        retry_after: Duration,
        attempts: u32,
    },
    /// 5xx, a timeout, a refused or broken connection, on every attempt.
    #[error("Aircall is unavailable after {attempts} attempts: {reason}")]
    Unavailable {
        reason: String,
        attempts: u32,
        #[source]
        source: Option<reqwest::Error>,
    },
    /// Any other 4xx: the request itself is wrong; retrying the same request cannot help.
    #[error("Aircall refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// A 2xx whose body is not what the API documents.
    #[error("unexpected answer from Aircall for {endpoint}: {reason}")]
    Malformed {
        endpoint: &'static str,
        reason: String,
    },
    /// A time range so dense that it cannot be listed under Aircall's 10,000-result cap: one second
    /// holding more than the cap, or a range that grew past it while being paged.
    #[error(
        "cannot list calls started in ({from}, {to}]: {total} calls exceed Aircall's 10,000-result \
         cap and the range cannot be split further"
    )]
    ListingTooDense { from: i64, to: i64, total: u64 },
    /// The shared rate-limit budget could not be consulted.
    #[error(transparent)]
    Budget(BudgetError),
    /// The caller's cancellation token fired (shutdown).
    #[error("cancelled")]
    Cancelled,
}

impl AircallError {
    /// Whether the same request may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Unavailable { .. } => true,
            Self::Budget(BudgetError::Redis(_)) => true,
            Self::Budget(BudgetError::Cancelled) | Self::Cancelled => true,
            Self::InvalidCredentials { .. }
            | Self::NotFound
            | Self::Rejected { .. }
            | Self::Malformed { .. }
            | Self::ListingTooDense { .. } => false,
        }
    }
}

impl From<BudgetError> for AircallError {
    fn from(e: BudgetError) -> Self {
        match e {
            BudgetError::Cancelled => Self::Cancelled,
            other => Self::Budget(other),
        }
    }
}
