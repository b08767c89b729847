//! Tests of `retry`.

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
