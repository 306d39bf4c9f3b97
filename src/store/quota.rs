//! Storage limits shared by every shard: live resources and representation bytes.
//!
//! A write reserves what it may add before it is applied and settles to what it really
//! added afterwards, so two shards can never together overshoot a limit, and a refused
//! write changes nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Quota {
    max_bytes: Option<u64>,
    max_resources: Option<u64>,
    bytes: AtomicU64,
    resources: AtomicU64,
}

/// What a write reserved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reservation {
    bytes: u64,
    resources: u64,
}

/// Why a write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("storage limit reached: at most {0} bytes of representations are stored")]
    Bytes(u64),
    #[error("storage limit reached: at most {0} resources are stored")]
    Resources(u64),
}

fn reserve(counter: &AtomicU64, n: u64, max: Option<u64>) -> bool {
    counter
        .fetch_update(Relaxed, Relaxed, |v| {
            let next = v.checked_add(n)?;
            match max {
                Some(m) if next > m && n > 0 => None,
                _ => Some(next),
            }
        })
        .is_ok()
}

impl Quota {
    pub fn new(max_bytes: Option<u64>, max_resources: Option<u64>) -> Quota {
        Quota {
            max_bytes,
            max_resources,
            ..Quota::default()
        }
    }

    /// Stored representation bytes (all shards).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Live resources (all shards).
    pub fn resources(&self) -> u64 {
        self.resources.load(Relaxed)
    }

    /// Reserves room for `bytes` more and, if `creates`, one more resource.
    pub fn reserve(&self, bytes: u64, creates: bool) -> Result<Reservation, QuotaError> {
        let resources = u64::from(creates);
        if !reserve(&self.resources, resources, self.max_resources) {
            return Err(QuotaError::Resources(self.max_resources.unwrap_or(0)));
        }
        if !reserve(&self.bytes, bytes, self.max_bytes) {
            self.resources.fetch_sub(resources, Relaxed);
            return Err(QuotaError::Bytes(self.max_bytes.unwrap_or(0)));
        }
        Ok(Reservation { bytes, resources })
    }

    /// Replaces a reservation by what the write really changed (`bytes` and
    /// `resources` as signed deltas; zero for a write that failed).
    pub fn settle(&self, r: Reservation, bytes: i64, resources: i64) {
        let adjust = |counter: &AtomicU64, reserved: u64, actual: i64| {
            let delta = actual - reserved as i64;
            if delta >= 0 {
                counter.fetch_add(delta as u64, Relaxed);
            } else {
                let _ = counter.fetch_update(Relaxed, Relaxed, |v| {
                    Some(v.saturating_sub(delta.unsigned_abs()))
                });
            }
        };
        adjust(&self.bytes, r.bytes, bytes);
        adjust(&self.resources, r.resources, resources);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_refusals_change_nothing() {
        let q = Quota::new(Some(100), Some(2));
        let r = q.reserve(60, true).unwrap();
        q.settle(r, 50, 1);
        assert_eq!((q.bytes(), q.resources()), (50, 1));
        assert_eq!(q.reserve(60, false).unwrap_err(), QuotaError::Bytes(100));
        assert_eq!((q.bytes(), q.resources()), (50, 1));
        let r = q.reserve(10, true).unwrap();
        q.settle(r, 10, 1);
        assert_eq!(q.reserve(1, true).unwrap_err(), QuotaError::Resources(2));
        // A delete frees both.
        q.settle(Reservation::default(), -60, -2);
        assert_eq!((q.bytes(), q.resources()), (0, 0));
        // Unlimited quotas still count.
        let open = Quota::new(None, None);
        let r = open.reserve(u64::MAX / 2, true).unwrap();
        open.settle(r, 5, 1);
        assert_eq!(open.bytes(), 5);
    }
}
