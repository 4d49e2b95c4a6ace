//! The one retry back-off of the node: exponential with jitter. Every loop that retries
//! something shared (Blob after an outage, manifests a peer cannot serve yet, a failed
//! flush batch) waits through it, so that a thousand nodes that saw the same failure do
//! not retry in lockstep.

use std::time::Duration;

/// Exponential back-off: the pause after `n` failures is `first * 2^n`, at most `max`, of
/// which a random half is taken off ("equal jitter": never below half the step, so a
/// retry still backs off, and never two nodes in step).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starting at `first`, doubling up to `max`.
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, failures: 0 }
    }

    /// The pause before the next try; counts one more failure.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let pause = self.pause_after(self.failures);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    /// The pause after `failures` failures (for callers that keep the count themselves,
    /// one per queued job).
    pub(crate) fn pause_after(&self, failures: u32) -> Duration {
        let step = self.first.saturating_mul(1 << failures.min(20)).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_each_between_half_and_all_of_its_step() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(30));
        let mut backoff = Backoff::new(first, max);
        for n in 0..40u32 {
            let step = first.saturating_mul(1 << n.min(20)).min(max);
            let pause = backoff.next_pause();
            assert!(pause >= step / 2 && pause <= step, "failure {n}: {pause:?} outside {:?}..={step:?}", step / 2);
        }
    }

    #[test]
    fn two_retriers_after_the_same_failures_do_not_wait_in_step() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let pauses: std::collections::HashSet<Duration> = (0..64).map(|_| backoff.pause_after(5)).collect();
        // 64 draws from a continuous half-range: equal pauses would mean no jitter at all.
        assert!(pauses.len() > 32, "{} distinct pauses of 64", pauses.len());
    }
}
