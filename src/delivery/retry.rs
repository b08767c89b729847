//! The retry policy: given what an attempt got back, whether the delivery succeeded, waits for another attempt, or is dead.
//!
//! **Architecture Invariant:** this module is pure. It does no I/O, reads no clock and draws no
//! random numbers: the time (`now_ms`, unix milliseconds) and the random factor (`rand01`) are
//! arguments, so every outcome can be tested exactly.

use std::time::{Duration, UNIX_EPOCH};

/// How deliveries are retried, from the `[retry]` section of the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The delay before attempt 2, 3, ...; a delivery gets `1 + schedule.len()` attempts.
    pub schedule: Vec<Duration>,
    /// Each delay is multiplied by a factor drawn from `[1 - jitter, 1 + jitter]`, so that
    /// deliveries that failed together do not all come back together; clamped to `[0, 1]`.
    pub jitter: f64,
    /// The longest wait a receiver's `Retry-After` can impose.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// How many attempts a delivery gets in all: the first, then one per schedule entry.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.schedule.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }
}

/// What one attempt got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The raw `Retry-After` header value, if the response had one.
        retry_after: Option<String>,
    },
    /// No response came: timeout, connection refused, TLS or DNS failure, or a refused address.
    Failed,
}

/// What happens to a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The receiver took it; nothing more to do.
    Succeeded,
    /// Attempt again at this time, in unix milliseconds.
    Retry {
        /// When the next attempt is due, in unix milliseconds.
        at_ms: u64,
    },
    /// No more attempts; the delivery goes to the dead-letter queue.
    Dead {
        /// Why it is dead.
        reason: DeadReason,
    },
}

/// Why a delivery was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// Every attempt the schedule allows has failed.
    RetriesExhausted,
    /// The endpoint answered `410 Gone`.
    EndpointGone,
}

impl DeadReason {
    /// The name used in the API and in metrics: `retries_exhausted` or `endpoint_gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::RetriesExhausted => "retries_exhausted",
            DeadReason::EndpointGone => "endpoint_gone",
        }
    }
}

/// Decides what follows an attempt.
///
/// `attempts_made` counts the attempts so far including this one (0 is taken as 1), `now_ms` is
/// the time of the decision in unix milliseconds, and `rand01` is a random number in `[0, 1)`
/// that picks the jitter factor (a value outside is clamped; NaN means no jitter).
///
/// A 2xx succeeds and a 410 is dead at once. Anything else, including redirects and attempts
/// without a response, is retried after `schedule[attempts_made - 1]` times the jitter factor,
/// until the schedule runs out. A 429 or 503 with a parsable `Retry-After` waits at least that
/// long, up to `max_retry_after`.
pub fn decide(
    policy: &RetryPolicy,
    attempts_made: u32,
    result: &AttemptResult,
    now_ms: u64,
    rand01: f64,
) -> Decision {
    let retry_after = match result {
        AttemptResult::Status { code, .. } if (200..300).contains(code) => {
            return Decision::Succeeded
        }
        AttemptResult::Status { code: 410, .. } => {
            return Decision::Dead {
                reason: DeadReason::EndpointGone,
            }
        }
        AttemptResult::Status {
            code: 429 | 503,
            retry_after: Some(value),
        } => parse_retry_after(value, now_ms),
        AttemptResult::Status { .. } | AttemptResult::Failed => None,
    };
    let index = usize::try_from(attempts_made.saturating_sub(1)).unwrap_or(usize::MAX);
    let Some(base) = policy.schedule.get(index) else {
        return Decision::Dead {
            reason: DeadReason::RetriesExhausted,
        };
    };
    let mut delay_ms = jittered_ms(*base, policy.jitter, rand01);
    if let Some(wait) = retry_after {
        delay_ms = delay_ms.max(millis(wait.min(policy.max_retry_after)));
    }
    Decision::Retry {
        at_ms: now_ms.saturating_add(delay_ms),
    }
}

/// Parses a `Retry-After` value: delta-seconds, or an HTTP-date taken relative to `now_ms`.
///
/// A date in the past gives zero; anything else that is neither form gives `None`.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 is still a valid, very long delay.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    // A date before 1970 is in the past for any `now_ms`, which zero says as well.
    let date_ms = date.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0);
    Some(Duration::from_millis(date_ms.saturating_sub(now_ms)))
}

/// `base` in milliseconds multiplied by `1 - jitter + 2 * jitter * rand01`, rounded.
fn jittered_ms(base: Duration, jitter: f64, rand01: f64) -> u64 {
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    let rand01 = if rand01.is_nan() {
        0.5
    } else {
        rand01.clamp(0.0, 1.0)
    };
    let factor = 1.0 - jitter + 2.0 * jitter * rand01;
    // A float-to-integer `as` saturates, which is the wanted behaviour for absurd schedules.
    (millis(base) as f64 * factor).round() as u64
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
