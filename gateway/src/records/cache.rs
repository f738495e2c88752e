//! A bounded cache of translated units, least recently used first out. Its budget is
//! `records.cache_mb`; a unit's size is estimated from its records' JSON.

use super::unit::Unit;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Units found current in the cache.
    pub hits: AtomicU64,
    /// Units translated (absent, stale or evicted).
    pub misses: AtomicU64,
    /// Units evicted for room.
    pub evictions: AtomicU64,
    /// Bytes held now.
    pub bytes: AtomicU64,
}

#[derive(Default)]
struct Inner {
    units: HashMap<String, (Arc<Unit>, u64)>,
    order: BTreeMap<u64, String>,
    tick: u64,
    bytes: usize,
}

/// The cache.
pub struct Cache {
    budget: usize,
    inner: Mutex<Inner>,
    /// Counters.
    pub stats: Arc<CacheStats>,
}

impl Cache {
    /// A cache holding about `budget` bytes.
    pub fn new(budget: usize) -> Cache {
        Cache { budget, inner: Mutex::default(), stats: Arc::default() }
    }

    /// The unit cached under `key`, marked as just used.
    pub fn get(&self, key: &str) -> Option<Arc<Unit>> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (unit, used) = inner.units.get_mut(key)?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, key.to_string());
        Some(unit.clone())
    }

    /// Cache `unit` under `key`, evicting the least recently used beyond the budget. A
    /// unit larger than the whole budget is not kept.
    pub fn put(&self, key: &str, unit: Arc<Unit>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *g;
        if let Some((old, used)) = inner.units.remove(key) {
            inner.order.remove(&used);
            inner.bytes -= old.bytes;
        }
        if unit.bytes > self.budget {
            self.stats.bytes.store(inner.bytes as u64, Relaxed);
            return;
        }
        while inner.bytes + unit.bytes > self.budget {
            let Some((_, victim)) = inner.order.pop_first() else { break };
            if let Some((old, _)) = inner.units.remove(&victim) {
                inner.bytes -= old.bytes;
                self.stats.evictions.fetch_add(1, Relaxed);
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += unit.bytes;
        inner.order.insert(tick, key.to_string());
        inner.units.insert(key.to_string(), (unit, tick));
        self.stats.bytes.store(inner.bytes as u64, Relaxed);
    }

    /// Drop `key`.
    pub fn remove(&self, key: &str) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((old, used)) = g.units.remove(key) {
            g.order.remove(&used);
            g.bytes -= old.bytes;
            self.stats.bytes.store(g.bytes as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(bytes: usize) -> Arc<Unit> {
        Arc::new(Unit {
            site: "s".into(),
            patient: "p".into(),
            local: "l".into(),
            owner: "o".into(),
            files: vec![],
            records: vec![],
            bytes,
            watch_mtime: 0,
            problems: 0,
        })
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_budget_holds() {
        let c = Cache::new(100);
        c.put("a", unit(40));
        c.put("b", unit(40));
        assert!(c.get("a").is_some(), "a is now the most recent");
        c.put("c", unit(40));
        assert!(c.get("b").is_none(), "b was the least recently used");
        assert!(c.get("a").is_some() && c.get("c").is_some());
        c.put("huge", unit(1000));
        assert!(c.get("huge").is_none(), "larger than the whole budget: not kept");
        assert!(c.stats.bytes.load(Relaxed) <= 100);
        c.put("a", unit(10));
        assert_eq!(c.stats.bytes.load(Relaxed), 50);
    }
}
