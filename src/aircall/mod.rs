//! Everything about Aircall's public API: the lenient models, the client with its retries and
//! paging rules, and the per-company rate-limit budget shared through Redis.

pub mod client;
pub mod error;
pub mod models;
pub mod ratelimit;

pub use client::{Aircall, AircallClient, CallPager, ClientStatsSnapshot, Credentials};
pub use error::AircallError;
pub use models::{Call, CallId, CallStatus, Direction};
pub use ratelimit::{CompanyBudget, RateLimitSettings, RateLimiter};
