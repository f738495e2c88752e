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
    /// Which cached unit holds a record, by [`super::index::key64`] of its id: a read
    /// by id of a cached patient needs no index query.
    located: HashMap<i64, String>,
}

impl Inner {
    fn drop_unit(&mut self, key: &str) -> Option<Arc<Unit>> {
        let (old, used) = self.units.remove(key)?;
        self.order.remove(&used);
        self.bytes -= old.bytes;
        for s in &old.records {
            let h = super::index::key64(s.resource.id().unwrap_or(""));
            if self.located.get(&h).is_some_and(|k| k == key) {
                self.located.remove(&h);
            }
        }
        Some(old)
    }
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

    /// The cached unit holding the record with this id, marked as just used.
    pub fn locate(&self, id: &str) -> Option<Arc<Unit>> {
        let key = {
            let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            g.located.get(&super::index::key64(id))?.clone()
        };
        self.get(&key)
    }

    /// Cache `unit` under `key`, evicting the least recently used beyond the budget. A
    /// unit larger than the whole budget is not kept.
    pub fn put(&self, key: &str, unit: Arc<Unit>) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let inner = &mut *g;
        inner.drop_unit(key);
        if unit.bytes > self.budget {
            self.stats.bytes.store(inner.bytes as u64, Relaxed);
            return;
        }
        while inner.bytes + unit.bytes > self.budget {
            let Some((_, victim)) = inner.order.pop_first() else { break };
            if inner.drop_unit(&victim).is_some() {
                self.stats.evictions.fetch_add(1, Relaxed);
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += unit.bytes;
        inner.order.insert(tick, key.to_string());
        for s in &unit.records {
            inner.located.insert(super::index::key64(s.resource.id().unwrap_or("")), key.to_string());
        }
        inner.units.insert(key.to_string(), (unit, tick));
        self.stats.bytes.store(inner.bytes as u64, Relaxed);
    }

    /// Drop `key`.
    pub fn remove(&self, key: &str) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.drop_unit(key).is_some() {
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
            watch: Default::default(),
            checked: Default::default(),
            checking: Default::default(),
            armed: Default::default(),
        })
    }

    /// A unit holding one Patient with this id.
    fn holding(id: &str, bytes: usize) -> Arc<Unit> {
        let owner = crate::sites::Owner { code: "o".into(), name: "O".into(), site: "s".into() };
        let patient =
            kakehashi_fhir::Resource::Patient(kakehashi_fhir::Patient { id: Some(id.into()), ..Default::default() });
        let mut u = Arc::into_inner(unit(bytes)).unwrap();
        u.records.push(Arc::new(super::super::Stored::new(patient, &owner).unwrap()));
        Arc::new(u)
    }

    #[test]
    fn a_cached_record_is_located_by_id_until_its_unit_goes() {
        let c = Cache::new(100);
        c.put("a", holding("patient-a", 60));
        assert_eq!(c.locate("patient-a").map(|u| u.records.len()), Some(1));
        assert!(c.locate("patient-b").is_none());
        // Evicted for room: no longer located.
        c.put("b", holding("patient-b", 60));
        assert!(c.locate("patient-a").is_none());
        assert!(c.locate("patient-b").is_some());
        // Replaced by a unit without it, or removed: gone.
        c.put("b", unit(10));
        assert!(c.locate("patient-b").is_none());
        c.put("b", holding("patient-b", 10));
        c.remove("b");
        assert!(c.locate("patient-b").is_none());
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
