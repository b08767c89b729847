//! How the attempt slots (`delivery.max_in_flight`) are shared among endpoints: fair shares and the first-attempt reserve.
//!
//! **Architecture Invariant:** this module is pure arithmetic on counts; the scheduler asks it, for
//! each endpoint and each queue entry, whether one more attempt may start.
//!
//! The rule, for a global limit G:
//! - **Reserve.** R = G/8 (rounded up; 0 when G is 1) of the slots are kept for first attempts:
//!   retries together never hold more than G − R, so the retries of a dead endpoint cannot delay a
//!   fresh event of a healthy one.
//! - **Light endpoints.** In the reserve, only endpoints with fewer than L = max(1, R/4) attempts
//!   under way may start (first attempts only). An endpoint that holds many slots (a silent receiver
//!   keeps each one until `delivery.timeout`) therefore cannot take the reserve, and an endpoint that
//!   starts sending while others hold every shared slot still gets L attempts at once.
//! - **Fair share.** The shared G − R slots are divided among the endpoints that have work (attempts
//!   under way, or due deliveries they could not start) by water-filling: an endpoint that needs less
//!   than an equal part (its own `max_in_flight`, 1 when `ordered`) keeps its need, and the rest is
//!   split evenly among the others. Each endpoint's cap is the smaller of its own limit and its share
//!   (never below L). The share is recomputed at every scheduling round, so it follows the work.
//!
//! Attempts under way are never cut short: an endpoint above a share that shrank starts nothing more
//! until it is back under it. A lone endpoint may use at most G − R slots.

/// The slot pool for one global limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    /// `delivery.max_in_flight`: attempts under way, all endpoints together.
    pub max_total: usize,
    /// Slots only first attempts of light endpoints may take.
    pub reserve: usize,
    /// Below this many attempts under way an endpoint is light; also the least share an endpoint gets.
    pub light: usize,
}

impl Slots {
    pub fn new(max_total: usize) -> Slots {
        let max_total = max_total.max(1);
        let reserve = if max_total >= 2 {
            max_total.div_ceil(8)
        } else {
            0
        };
        Slots {
            max_total,
            reserve,
            light: (reserve / 4).max(1),
        }
    }

    /// The slots everyone shares (retries included): G − R.
    pub fn shared(&self) -> usize {
        self.max_total - self.reserve
    }

    /// The fair share of the shared slots for an endpoint whose own limit is above it, given the
    /// limits (`need`) of the endpoints that have work, by water-filling. With nobody working, or
    /// when every need fits, it is the whole shared part.
    pub fn share(&self, needs: &mut [usize]) -> usize {
        needs.sort_unstable();
        let mut left = self.shared();
        let n = needs.len();
        for (i, &need) in needs.iter().enumerate() {
            let even = left / (n - i);
            if need > even {
                return even.max(self.light);
            }
            left -= need;
        }
        self.shared()
    }

    /// An endpoint's cap: its own limit, held to its share (but never below the light threshold).
    pub fn cap(&self, own_limit: usize, share: usize) -> usize {
        own_limit.max(1).min(share.max(self.light))
    }

    /// Whether one more attempt may start, with `total` attempts under way in all, `mine` of them
    /// for this endpoint, whose cap is `cap`; `retry` when the delivery was attempted before.
    pub fn admits(&self, total: usize, mine: usize, cap: usize, retry: bool) -> bool {
        if mine >= cap || total >= self.max_total {
            return false;
        }
        total < self.shared() || (!retry && mine < self.light)
    }

    /// The most attempts this endpoint could start now (all first attempts); retries may get fewer.
    pub fn room(&self, total: usize, mine: usize, cap: usize) -> usize {
        let own = cap.saturating_sub(mine);
        let shared = self.shared().saturating_sub(total).min(own);
        let (total, mine) = (total + shared, mine + shared);
        let reserved = self
            .light
            .saturating_sub(mine)
            .min(self.max_total.saturating_sub(total))
            .min(own - shared);
        shared + reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserve_and_light_threshold_follow_the_global_limit() {
        assert_eq!(
            Slots::new(256),
            Slots {
                max_total: 256,
                reserve: 32,
                light: 8
            }
        );
        assert_eq!(Slots::new(2).reserve, 1);
        assert_eq!(Slots::new(1).reserve, 0);
        assert_eq!(Slots::new(1).light, 1);
        assert_eq!(Slots::new(0).max_total, 1);
    }

    #[test]
    fn water_filling_gives_small_needs_their_need_and_splits_the_rest() {
        let s = Slots::new(256); // 224 shared
        assert_eq!(s.share(&mut []), 224);
        assert_eq!(s.share(&mut [10_000]), 224);
        assert_eq!(s.share(&mut [10_000, 10_000]), 112);
        // An ordered endpoint needs 1, a default one 16: the silent one gets the rest.
        assert_eq!(s.share(&mut [10_000, 1, 16]), 207);
        assert_eq!(s.share(&mut [16, 16]), 224);
        // Many endpoints: never below the light threshold.
        assert_eq!(s.share(&mut vec![100; 1000]), 8);
    }

    #[test]
    fn a_lone_endpoint_cannot_take_the_reserve() {
        let s = Slots::new(256);
        let cap = s.cap(10_000, s.share(&mut [10_000]));
        assert_eq!(cap, 224);
        assert_eq!(s.room(0, 0, cap), 224);
        assert!(!s.admits(224, 224, cap, false));
        // A newcomer still gets the light threshold's worth of first attempts.
        assert_eq!(s.room(224, 0, 16), 8);
        assert!(s.admits(224, 0, 16, false));
        assert!(!s.admits(224, 0, 16, true));
        assert!(!s.admits(231, 8, 16, false));
    }

    #[test]
    fn retries_never_fill_the_pool() {
        let s = Slots::new(4); // reserve 1, light 1
        assert!(s.admits(2, 0, 1, true));
        assert!(!s.admits(3, 0, 1, true));
        assert!(s.admits(3, 0, 1, false));
        assert!(!s.admits(4, 0, 1, false));
    }

    proptest! {
        /// Starting attempts one at a time, as long as `admits` says yes, never exceeds the global
        /// limit, the endpoint's cap, or G − R for retries; and `room` is exactly how many first
        /// attempts it lets start.
        #[test]
        fn admits_keeps_every_limit(
            g in 1usize..600, total0 in 0usize..700, mine0 in 0usize..100,
            own in 1usize..10_000, needs in proptest::collection::vec(1usize..10_000, 0..40),
            kinds in proptest::collection::vec(any::<bool>(), 0..700),
        ) {
            let s = Slots::new(g);
            let mine0 = mine0.min(total0);
            let mut needs = needs;
            let share = s.share(&mut needs);
            prop_assert!(share >= s.light && share <= s.shared().max(s.light));
            let cap = s.cap(own, share);
            let (mut total, mut mine) = (total0, mine0);
            let mut fresh = 0;
            while s.admits(total, mine, cap, false) {
                total += 1;
                mine += 1;
                fresh += 1;
            }
            prop_assert_eq!(fresh, s.room(total0, mine0, cap));
            let (mut total, mut mine, mut retries) = (total0, mine0, 0);
            for retry in kinds {
                if s.admits(total, mine, cap, retry) {
                    prop_assert!(total < s.max_total && mine < cap);
                    if retry {
                        prop_assert!(total < s.shared());
                        retries += 1;
                    }
                    total += 1;
                    mine += 1;
                }
            }
            prop_assert!(total0 >= s.max_total || total <= s.max_total);
            prop_assert!(retries <= s.shared());
        }
    }
}
