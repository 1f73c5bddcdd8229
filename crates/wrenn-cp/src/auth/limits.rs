//! Bounds on what unauthenticated callers can make the control plane do: password hashing
//! (argon2id, ~20 MiB and tens of ms of CPU each) runs at most [`AuthLimits::hashing`] at a
//! time, and login/signup attempts are rate-limited per client address and per account
//! (GCRA, `governor`). Refusals are 429 `rate_limited` with `Retry-After`.
//!
//! Addresses are the TCP peer's: behind a load balancer that is the balancer's, so there the
//! per-account limit is what holds (and the balancer should rate-limit by client).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::ApiError;

/// Attempts per client address: a burst of 20, then one every 3 s.
const PER_IP_BURST: u32 = 20;
const PER_IP_EVERY: Duration = Duration::from_secs(3);
/// Login attempts per account: a burst of 10, then one every 30 s.
const PER_ACCOUNT_BURST: u32 = 10;
const PER_ACCOUNT_EVERY: Duration = Duration::from_secs(30);
/// Keys kept before forgetting those back at full quota (memory bound).
const MAX_KEYS: usize = 50_000;
/// How long a request waits for a hashing slot before it is refused.
const HASH_WAIT: Duration = Duration::from_secs(10);

pub struct AuthLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_account: DefaultKeyedRateLimiter<String>,
    hashing: Semaphore,
}

impl std::fmt::Debug for AuthLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimits")
            .field("hashing_available", &self.hashing.available_permits())
            .finish_non_exhaustive()
    }
}

impl Default for AuthLimits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cpus.max(2))
    }
}

fn quota(burst: u32, every: Duration) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(every)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// IPv6 clients are limited per /64 (one subscriber's whole allocation), not per address.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl AuthLimits {
    /// At most `hashing` password hashes at once.
    pub fn new(hashing: usize) -> Self {
        AuthLimits {
            per_ip: DefaultKeyedRateLimiter::keyed(quota(PER_IP_BURST, PER_IP_EVERY)),
            per_account: DefaultKeyedRateLimiter::keyed(quota(
                PER_ACCOUNT_BURST,
                PER_ACCOUNT_EVERY,
            )),
            hashing: Semaphore::new(hashing.max(1)),
        }
    }

    /// One login/signup attempt from `ip` (unknown when the server runs without peer
    /// addresses, e.g. in-process tests).
    pub fn attempt_from(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else { return Ok(()) };
        check(
            &self.per_ip,
            &ip_key(ip),
            "too many attempts from this address",
        )
    }

    /// One login attempt for `email` (normalised by the caller), whether or not it exists.
    pub fn attempt_on(&self, email: &str) -> Result<(), ApiError> {
        check(
            &self.per_account,
            &email.to_owned(),
            "too many login attempts for this account",
        )
    }

    /// A slot to hash a password in; 429 when the server is saturated for too long.
    pub async fn hashing(&self) -> Result<SemaphorePermit<'_>, ApiError> {
        match tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(ApiError::rate_limited(Duration::from_secs(1))
                .with_message("too many logins in progress; retry shortly")),
        }
    }
}

fn check<K>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    what: &'static str,
) -> Result<(), ApiError>
where
    K: Clone + Eq + std::hash::Hash,
{
    if limiter.len() > MAX_KEYS {
        limiter.retain_recent();
    }
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::rate_limited(wait).with_message(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_accounts_run_out_and_keys_are_separate() {
        let l = AuthLimits::new(1);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        for _ in 0..PER_IP_BURST {
            l.attempt_from(Some(a)).unwrap();
        }
        let e = l.attempt_from(Some(a)).unwrap_err();
        assert_eq!(e.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retry_after().unwrap() > Duration::ZERO);
        l.attempt_from(Some(b)).unwrap();
        l.attempt_from(None).unwrap();
        // One IPv6 /64 is one client.
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for _ in 0..PER_IP_BURST {
            l.attempt_from(v6("2001:db8:1:2::1")).unwrap();
        }
        assert!(l.attempt_from(v6("2001:db8:1:2::ffff")).is_err());
        l.attempt_from(v6("2001:db8:1:3::1")).unwrap();

        for _ in 0..PER_ACCOUNT_BURST {
            l.attempt_on("ada@example.com").unwrap();
        }
        assert!(l.attempt_on("ada@example.com").is_err());
        l.attempt_on("bob@example.com").unwrap();
    }

    #[tokio::test]
    async fn hashing_slots_are_bounded() {
        let l = AuthLimits::new(2);
        let p1 = l.hashing().await.unwrap();
        let _p2 = l.hashing().await.unwrap();
        assert_eq!(l.hashing.available_permits(), 0);
        drop(p1);
        let _p3 = l.hashing().await.unwrap();
    }
}
