//! The in-memory backends of the state traits: the default, for one node.

use super::{Counters, KvStore, StoreError, WindowCount};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_limits::rate::Rate;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Entries the in-memory key-value store holds at most.
pub const DEFAULT_KV_ENTRIES: usize = 100_000;

/// A `Rate` (pingora-limits: a count-min sketch per fixed window, bounded memory whatever the
/// number of keys) and a clock that follows its windows. `Rate` starts a new window lazily, at
/// the first event past the end of the current one; the clock applies the same rule at the same
/// calls, so the time left in the window costs no second look-up.
struct Window {
    start: Instant,
    rate: Rate,
    window_ms: u64,
    window_start_ms: AtomicU64,
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            start: Instant::now(),
            rate: Rate::new(window),
            window_ms: (window.as_millis() as u64).max(1),
            window_start_ms: AtomicU64::new(0),
        }
    }

    fn left(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        let mut begun = self.window_start_ms.load(Ordering::Acquire);
        if now.saturating_sub(begun) >= self.window_ms {
            begun = match self.window_start_ms.compare_exchange(
                begun,
                now,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => now,
                Err(other) => other,
            };
        }
        Duration::from_millis((begun + self.window_ms).saturating_sub(now))
    }
}

/// The sketches of one scope, by window length (a scope has one or a few).
type ScopeWindows = Vec<(Duration, Arc<Window>)>;

/// Counters in process memory, one sketch per (scope, window).
#[derive(Default)]
pub struct MemoryCounters {
    windows: Mutex<HashMap<String, ScopeWindows>>,
}

/// One counter family (a scope and its window length) of [`MemoryCounters`], for a hot-path
/// caller that holds it so that counting costs no look-up in the scope map.
#[derive(Clone)]
pub struct MemoryWindow(Arc<Window>);

impl MemoryWindow {
    /// [`Counters::hit`] on this family.
    pub fn hit(&self, key: &str, cost: u64) -> WindowCount {
        let count = self.0.rate.observe(&key, cost as isize).max(0) as u64;
        WindowCount {
            count,
            resets_in: self.0.left(),
        }
    }

    /// [`Counters::peek`] on this family.
    pub fn peek(&self, key: &str) -> WindowCount {
        let count = self
            .0
            .rate
            .rate_with(&key, |c| c.curr_samples.max(0) as u64);
        WindowCount {
            count,
            resets_in: self.0.left(),
        }
    }
}

impl MemoryCounters {
    fn window(&self, scope: &str, window: Duration) -> Arc<Window> {
        let mut map = self.windows.lock();
        if let Some(w) = map
            .get(scope)
            .and_then(|ws| ws.iter().find(|(d, _)| *d == window))
        {
            return w.1.clone();
        }
        let w = Arc::new(Window::new(window));
        map.entry(scope.to_string())
            .or_default()
            .push((window, w.clone()));
        w
    }

    /// The counters of `scope` with `window`, to hold (the same ones every call returns).
    pub fn window_of(&self, scope: &str, window: Duration) -> MemoryWindow {
        MemoryWindow(self.window(scope, window))
    }

    /// Synchronous form of [`Counters::hit`] for callers on the hot path that know the
    /// backend is memory.
    pub fn hit_now(&self, scope: &str, window: Duration, key: &str, cost: u64) -> WindowCount {
        self.window_of(scope, window).hit(key, cost)
    }

    pub fn peek_now(&self, scope: &str, window: Duration, key: &str) -> WindowCount {
        self.window_of(scope, window).peek(key)
    }
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn hit(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
        cost: u64,
    ) -> Result<WindowCount, StoreError> {
        Ok(self.hit_now(scope, window, key, cost))
    }

    async fn peek(
        &self,
        scope: &str,
        window: Duration,
        key: &str,
    ) -> Result<WindowCount, StoreError> {
        Ok(self.peek_now(scope, window, key))
    }

    fn as_memory(&self) -> Option<&MemoryCounters> {
        Some(self)
    }
}

/// A bounded key-value map with expiry in process memory.
pub struct MemoryKv {
    max_entries: usize,
    map: Mutex<HashMap<String, (Bytes, Instant)>>,
}

impl MemoryKv {
    pub fn new(max_entries: usize) -> MemoryKv {
        MemoryKv {
            max_entries: max_entries.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn make_room(map: &mut HashMap<String, (Bytes, Instant)>, max: usize) -> bool {
        if map.len() < max {
            return true;
        }
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        map.len() < max
    }
}

#[async_trait]
impl KvStore for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let map = self.map.lock();
        Ok(map
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(v, _)| v.clone()))
    }

    async fn put(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), StoreError> {
        let mut map = self.map.lock();
        if !map.contains_key(key) && !Self::make_room(&mut map, self.max_entries) {
            return Err(StoreError::Full);
        }
        map.insert(key.to_string(), (value, Instant::now() + ttl));
        Ok(())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut map = self.map.lock();
        let now = Instant::now();
        if map.get(key).is_some_and(|(_, until)| *until > now) {
            return Ok(false);
        }
        if !map.contains_key(key) && !Self::make_room(&mut map, self.max_entries) {
            return Err(StoreError::Full);
        }
        map.insert(key.to_string(), (value, now + ttl));
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let mut map = self.map.lock();
        Ok(map
            .remove(key)
            .is_some_and(|(_, until)| until > Instant::now()))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&Bytes>,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut map = self.map.lock();
        let now = Instant::now();
        let current = map
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v);
        if current != expected {
            return Ok(false);
        }
        if !map.contains_key(key) && !Self::make_room(&mut map, self.max_entries) {
            return Err(StoreError::Full);
        }
        map.insert(key.to_string(), (value, now + ttl));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_count_per_key_and_scope() {
        let c = MemoryCounters::default();
        let w = Duration::from_secs(60);
        for i in 1..=3 {
            assert_eq!(c.hit("p", w, "alice", 1).await.unwrap().count, i);
        }
        assert_eq!(c.hit("p", w, "bob", 1).await.unwrap().count, 1);
        assert_eq!(c.hit("q", w, "alice", 1).await.unwrap().count, 1);
        let peek = c.peek("p", w, "alice").await.unwrap();
        assert_eq!(peek.count, 3);
        assert!(peek.resets_in <= w && peek.resets_in > Duration::from_secs(50));
    }

    #[tokio::test]
    async fn kv_compare_and_swap_changes_only_what_was_read() {
        let kv = MemoryKv::new(4);
        let long = Duration::from_secs(60);
        let (one, two) = (Bytes::from("1"), Bytes::from("2"));
        assert!(
            kv.compare_and_swap("d", None, one.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("d", None, two.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("d", Some(&two), two.clone(), long)
                .await
                .unwrap()
        );
        assert!(
            kv.compare_and_swap("d", Some(&one), two.clone(), long)
                .await
                .unwrap()
        );
        assert_eq!(kv.get("d").await.unwrap(), Some(two));
    }

    #[tokio::test]
    async fn kv_expires_and_is_bounded() {
        let kv = MemoryKv::new(2);
        let long = Duration::from_secs(60);
        assert!(kv.put_if_absent("a", Bytes::from("1"), long).await.unwrap());
        assert!(!kv.put_if_absent("a", Bytes::from("2"), long).await.unwrap());
        assert_eq!(kv.get("a").await.unwrap(), Some(Bytes::from("1")));
        kv.put("b", Bytes::from("x"), Duration::from_millis(1))
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("b").await.unwrap(), None);
        // "b" expired, so a third key fits.
        kv.put("c", Bytes::from("y"), long).await.unwrap();
        assert_eq!(
            kv.put("d", Bytes::from("z"), long).await,
            Err(StoreError::Full)
        );
        assert!(kv.delete("a").await.unwrap());
        assert!(!kv.delete("a").await.unwrap());
    }
}
