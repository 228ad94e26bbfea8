//! GitHub's rate-limit headers and how to read a refusal.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, StatusCode};

/// The budget GitHub reported on its last response for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: u64,
    pub remaining: u64,
    pub used: u64,
    /// When the window resets (`x-ratelimit-reset`, epoch seconds).
    pub reset: DateTime<Utc>,
    /// `core`, `search`, ... (`x-ratelimit-resource`; `core` when absent).
    pub resource: String,
}

impl RateLimit {
    /// Reads the `x-ratelimit-*` headers; `None` when limit, remaining or
    /// reset is missing or not a number.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimit> {
        let limit = header_u64(headers, "x-ratelimit-limit")?;
        let remaining = header_u64(headers, "x-ratelimit-remaining")?;
        let reset_epoch = header_u64(headers, "x-ratelimit-reset")?;
        let reset = Utc
            .timestamp_opt(i64::try_from(reset_epoch).ok()?, 0)
            .single()?;
        let used =
            header_u64(headers, "x-ratelimit-used").unwrap_or(limit.saturating_sub(remaining));
        let resource = header_str(headers, "x-ratelimit-resource")
            .filter(|r| !r.is_empty() && r.len() <= 64)
            .unwrap_or("core")
            .to_string();
        Some(RateLimit {
            limit,
            remaining,
            used,
            reset,
            resource,
        })
    }

    /// Share of the budget left, 0.0..=1.0 (1.0 when the limit is 0).
    pub fn remaining_fraction(&self) -> f64 {
        if self.limit == 0 {
            1.0
        } else {
            (self.remaining as f64 / self.limit as f64).clamp(0.0, 1.0)
        }
    }

    /// Time from `now` until the window resets (zero if already past).
    pub fn until_reset(&self, now: DateTime<Utc>) -> Duration {
        (self.reset - now).to_std().unwrap_or(Duration::ZERO)
    }
}

/// What a 403/429 answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Primary limit exhausted: wait until `reset`.
    Primary { reset: DateTime<Utc> },
    /// Secondary (abuse) limit: wait `retry_after` if given, else at least a minute.
    Secondary { retry_after: Option<Duration> },
    /// A real permission problem, not a rate limit.
    Forbidden,
}

/// Classifies a 403 or 429 following GitHub's documented rules. Other
/// statuses are never refusals.
pub fn classify_refusal(
    status: StatusCode,
    headers: &HeaderMap,
    message: &str,
    now: DateTime<Utc>,
) -> Option<Refusal> {
    if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let retry_after = retry_after(headers, now);
    if header_u64(headers, "x-ratelimit-remaining") == Some(0)
        && retry_after.is_none()
        && let Some(reset) = header_u64(headers, "x-ratelimit-reset")
            .and_then(|s| i64::try_from(s).ok())
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
    {
        return Some(Refusal::Primary { reset });
    }
    let mentions_secondary = message
        .to_ascii_lowercase()
        .contains("secondary rate limit");
    if retry_after.is_some() || mentions_secondary || status == StatusCode::TOO_MANY_REQUESTS {
        return Some(Refusal::Secondary { retry_after });
    }
    Some(Refusal::Forbidden)
}

/// `retry-after` as delay-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let raw = header_str(headers, "retry-after")?.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let at = DateTime::parse_from_rfc2822(raw).ok()?.with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    header_str(headers, name)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_all_headers() {
        let h = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "4990"),
            ("x-ratelimit-used", "10"),
            ("x-ratelimit-reset", "1700000000"),
            ("x-ratelimit-resource", "core"),
        ]);
        let rl = RateLimit::from_headers(&h).unwrap();
        assert_eq!(rl.limit, 5000);
        assert_eq!(rl.remaining, 4990);
        assert_eq!(rl.used, 10);
        assert_eq!(rl.reset.timestamp(), 1_700_000_000);
        assert_eq!(rl.resource, "core");
        assert!((rl.remaining_fraction() - 0.998).abs() < 1e-9);
    }

    #[test]
    fn missing_or_garbage_headers_give_none() {
        assert_eq!(RateLimit::from_headers(&HeaderMap::new()), None);
        let h = headers(&[
            ("x-ratelimit-limit", "lots"),
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", "1700000000"),
        ]);
        assert_eq!(RateLimit::from_headers(&h), None);
        let h = headers(&[
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "1"),
            ("x-ratelimit-reset", "99999999999999999999"),
        ]);
        assert_eq!(RateLimit::from_headers(&h), None);
    }

    #[test]
    fn used_and_resource_default() {
        let h = headers(&[
            ("x-ratelimit-limit", "60"),
            ("x-ratelimit-remaining", "15"),
            ("x-ratelimit-reset", "1700000000"),
        ]);
        let rl = RateLimit::from_headers(&h).unwrap();
        assert_eq!(rl.used, 45);
        assert_eq!(rl.resource, "core");
    }

    #[test]
    fn classifies_refusals() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let primary = headers(&[
            ("x-ratelimit-limit", "5000"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000042"),
        ]);
        assert_eq!(
            classify_refusal(
                StatusCode::FORBIDDEN,
                &primary,
                "API rate limit exceeded",
                now
            ),
            Some(Refusal::Primary {
                reset: Utc.timestamp_opt(1_700_000_042, 0).unwrap()
            })
        );
        assert_eq!(
            classify_refusal(StatusCode::TOO_MANY_REQUESTS, &primary, "", now),
            Some(Refusal::Primary {
                reset: Utc.timestamp_opt(1_700_000_042, 0).unwrap()
            })
        );
        let secondary = headers(&[("x-ratelimit-remaining", "4000"), ("retry-after", "17")]);
        assert_eq!(
            classify_refusal(StatusCode::FORBIDDEN, &secondary, "", now),
            Some(Refusal::Secondary {
                retry_after: Some(Duration::from_secs(17))
            })
        );
        assert_eq!(
            classify_refusal(
                StatusCode::FORBIDDEN,
                &HeaderMap::new(),
                "You have exceeded a Secondary Rate Limit.",
                now
            ),
            Some(Refusal::Secondary { retry_after: None })
        );
        assert_eq!(
            classify_refusal(
                StatusCode::FORBIDDEN,
                &headers(&[("x-ratelimit-remaining", "4000")]),
                "Resource not accessible by integration",
                now
            ),
            Some(Refusal::Forbidden)
        );
        assert_eq!(
            classify_refusal(StatusCode::NOT_FOUND, &primary, "", now),
            None
        );
    }

    #[test]
    fn retry_after_as_date() {
        let now = Utc.timestamp_opt(1_445_412_470, 0).unwrap(); // 2015-10-21 07:27:50 UTC
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        let h = headers(&[("retry-after", "soon")]);
        assert_eq!(retry_after(&h, now), None);
    }
}
