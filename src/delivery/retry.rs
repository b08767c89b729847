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
mod tests {
    use super::*;

    const NOW: u64 = 1_768_503_852_000; // 2026-01-15T19:04:12Z.

    fn default_policy(jitter: f64) -> RetryPolicy {
        let h = |n: u64| Duration::from_secs(n * 3600);
        RetryPolicy {
            schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                h(2),
                h(5),
                h(10),
                h(14),
                h(20),
                h(24),
            ],
            jitter,
            max_retry_after: h(24),
        }
    }

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    fn with_retry_after(code: u16, value: &str) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: Some(value.to_owned()),
        }
    }

    fn retry_in(delay_ms: u64) -> Decision {
        Decision::Retry {
            at_ms: NOW + delay_ms,
        }
    }

    #[test]
    fn default_schedule_without_jitter() {
        let policy = default_policy(0.0);
        assert_eq!(policy.max_attempts(), 10);
        let table: &[(u32, u64)] = &[
            (1, 5_000),
            (2, 300_000),
            (3, 1_800_000),
            (4, 7_200_000),
            (5, 18_000_000),
            (6, 36_000_000),
            (7, 50_400_000),
            (8, 72_000_000),
            (9, 86_400_000),
        ];
        for (attempts, delay) in table {
            for rand01 in [0.0, 0.5, 0.999] {
                assert_eq!(
                    decide(&policy, *attempts, &status(500), NOW, rand01),
                    retry_in(*delay),
                    "attempt {attempts}"
                );
            }
        }
    }

    #[test]
    fn last_attempt_is_dead() {
        let policy = default_policy(0.2);
        let dead = Decision::Dead {
            reason: DeadReason::RetriesExhausted,
        };
        assert_eq!(decide(&policy, 10, &status(500), NOW, 0.5), dead);
        assert_eq!(decide(&policy, 11, &AttemptResult::Failed, NOW, 0.5), dead);
        assert_eq!(
            decide(&policy, 10, &with_retry_after(429, "5"), NOW, 0.5),
            dead
        );
        // A success on the last attempt is still a success.
        assert_eq!(
            decide(&policy, 10, &status(200), NOW, 0.5),
            Decision::Succeeded
        );

        let once = RetryPolicy {
            schedule: Vec::new(),
            ..default_policy(0.0)
        };
        assert_eq!(once.max_attempts(), 1);
        assert_eq!(decide(&once, 1, &AttemptResult::Failed, NOW, 0.5), dead);
    }

    #[test]
    fn jitter_bounds() {
        let policy = default_policy(0.2);
        // 5 m = 300 000 ms; the factor runs from 0.8 up to (not including) 1.2.
        assert_eq!(
            decide(&policy, 2, &status(500), NOW, 0.0),
            retry_in(240_000)
        );
        assert_eq!(
            decide(&policy, 2, &status(500), NOW, 0.5),
            retry_in(300_000)
        );
        let Decision::Retry { at_ms } = decide(&policy, 2, &status(500), NOW, 0.999_999) else {
            panic!("a 500 is retried");
        };
        assert!(
            (NOW + 359_999..NOW + 360_000 + 1).contains(&at_ms),
            "{at_ms}"
        );
        for i in 0..100 {
            let rand01 = f64::from(i) / 100.0;
            let Decision::Retry { at_ms } = decide(&policy, 1, &status(500), NOW, rand01) else {
                panic!("a 500 is retried");
            };
            assert!(
                (NOW + 4_000..NOW + 6_000).contains(&at_ms),
                "{rand01}: {at_ms}"
            );
        }
    }

    #[test]
    fn out_of_range_inputs_are_clamped() {
        let wild = RetryPolicy {
            jitter: 5.0,
            ..default_policy(0.0)
        };
        assert_eq!(decide(&wild, 1, &status(500), NOW, 0.0), retry_in(0));
        assert_eq!(decide(&wild, 1, &status(500), NOW, 7.0), retry_in(10_000));
        let nan = RetryPolicy {
            jitter: f64::NAN,
            ..default_policy(0.0)
        };
        assert_eq!(decide(&nan, 1, &status(500), NOW, 0.0), retry_in(5_000));
        let policy = default_policy(0.2);
        assert_eq!(
            decide(&policy, 1, &status(500), NOW, f64::NAN),
            retry_in(5_000)
        );
        assert_eq!(decide(&policy, 0, &status(500), NOW, 0.5), retry_in(5_000));
        assert_eq!(
            decide(&policy, 1, &status(500), u64::MAX - 1, 0.5),
            Decision::Retry { at_ms: u64::MAX }
        );
    }

    #[test]
    fn success_and_gone() {
        let policy = default_policy(0.2);
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                decide(&policy, 1, &status(code), NOW, 0.5),
                Decision::Succeeded
            );
        }
        assert_eq!(
            decide(&policy, 1, &status(410), NOW, 0.5),
            Decision::Dead {
                reason: DeadReason::EndpointGone
            }
        );
        assert_eq!(DeadReason::EndpointGone.as_str(), "endpoint_gone");
        assert_eq!(DeadReason::RetriesExhausted.as_str(), "retries_exhausted");
    }

    #[test]
    fn everything_else_is_retried() {
        let policy = default_policy(0.0);
        for code in [
            100, 199, 300, 301, 302, 304, 307, 308, 400, 401, 404, 409, 429, 500, 502, 503, 504,
        ] {
            assert_eq!(
                decide(&policy, 1, &status(code), NOW, 0.5),
                retry_in(5_000),
                "{code}"
            );
        }
        assert_eq!(
            decide(&policy, 3, &AttemptResult::Failed, NOW, 0.5),
            retry_in(1_800_000)
        );
    }

    #[test]
    fn retry_after_seconds_extends_but_never_shortens() {
        let policy = default_policy(0.0);
        for code in [429, 503] {
            // Longer than the 5 s in the schedule: the receiver wins.
            assert_eq!(
                decide(&policy, 1, &with_retry_after(code, "120"), NOW, 0.5),
                retry_in(120_000)
            );
            // Shorter than the 5 m in the schedule: the schedule wins.
            assert_eq!(
                decide(&policy, 2, &with_retry_after(code, "10"), NOW, 0.5),
                retry_in(300_000)
            );
        }
        // Only 429 and 503 are honoured.
        for code in [500, 502, 301] {
            assert_eq!(
                decide(&policy, 1, &with_retry_after(code, "120"), NOW, 0.5),
                retry_in(5_000)
            );
        }
    }

    #[test]
    fn retry_after_is_capped() {
        let policy = RetryPolicy {
            max_retry_after: Duration::from_secs(3600),
            ..default_policy(0.0)
        };
        assert_eq!(
            decide(&policy, 1, &with_retry_after(429, "86400"), NOW, 0.5),
            retry_in(3_600_000)
        );
        assert_eq!(
            decide(
                &policy,
                1,
                &with_retry_after(503, "99999999999999999999999"),
                NOW,
                0.5
            ),
            retry_in(3_600_000)
        );
        // The cap limits the receiver, not the schedule.
        assert_eq!(
            decide(&policy, 9, &with_retry_after(429, "86400"), NOW, 0.5),
            retry_in(86_400_000)
        );
    }

    #[test]
    fn retry_after_http_date() {
        let policy = default_policy(0.0);
        // NOW + 10 minutes.
        let later = "Thu, 15 Jan 2026 19:14:12 GMT";
        assert_eq!(
            decide(&policy, 1, &with_retry_after(503, later), NOW, 0.5),
            retry_in(600_000)
        );
        assert_eq!(
            parse_retry_after(later, NOW),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse_retry_after(later, NOW + 500),
            Some(Duration::from_millis(599_500))
        );
        // The obsolete forms HTTP/1.1 still asks recipients to accept.
        assert_eq!(
            parse_retry_after("Thursday, 15-Jan-26 19:14:12 GMT", NOW),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            parse_retry_after("Thu Jan 15 19:14:12 2026", NOW),
            Some(Duration::from_secs(600))
        );
        // A date in the past means now.
        let earlier = "Thu, 15 Jan 2026 18:00:00 GMT";
        assert_eq!(parse_retry_after(earlier, NOW), Some(Duration::ZERO));
        assert_eq!(
            decide(&policy, 1, &with_retry_after(429, earlier), NOW, 0.5),
            retry_in(5_000)
        );
    }

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(parse_retry_after("0", NOW), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("120", NOW),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(" 30 ", NOW),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("184467440737095516160", NOW),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn garbage_retry_after_is_ignored() {
        let policy = default_policy(0.0);
        for value in [
            "",
            " ",
            "soon",
            "-5",
            "1.5",
            "+30",
            "30s",
            "0x10",
            "Thu, 32 Jan 2026 19:14:12 GMT",
        ] {
            assert_eq!(parse_retry_after(value, NOW), None, "{value:?}");
            assert_eq!(
                decide(&policy, 1, &with_retry_after(429, value), NOW, 0.5),
                retry_in(5_000),
                "{value:?}"
            );
        }
    }
}
