//! Admission limits shared by every worker: the per-client-IP connection cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Lock shards: workers admitting connections from different addresses rarely contend.
const SHARDS: usize = 16;

/// Open connections per client address, capped at `limit`.
pub struct PerIp {
    limit: u32,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerIp {
    pub fn new(limit: u32) -> PerIp {
        PerIp {
            limit,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let h = match ip {
            IpAddr::V4(v4) => u32::from(*v4) as usize,
            IpAddr::V6(v6) => v6
                .segments()
                .iter()
                .fold(0usize, |a, s| a.wrapping_mul(31) ^ *s as usize),
        };
        &self.shards[h % SHARDS]
    }

    /// Counts a new connection from `ip`; `false` (and nothing counted) at the cap.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.shard(&ip).lock() else {
            return true;
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= self.limit {
            return false;
        }
        *n += 1;
        true
    }

    pub fn release(&self, ip: IpAddr) {
        let Ok(mut map) = self.shard(&ip).lock() else {
            return;
        };
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address() {
        let p = PerIp::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(p.try_acquire(a) && p.try_acquire(a));
        assert!(!p.try_acquire(a));
        assert!(p.try_acquire(b));
        p.release(a);
        assert!(p.try_acquire(a));
    }
}
