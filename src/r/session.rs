//! What the R process holds for the calls of both kinds (`api`, `calls`):
//! the store it chose, its pool, and the process that loaded the package.
//!
//! May import: `job`, `store`, `pool`.

use crate::pool::Pool;
use crate::store::memory::MemoryStore;
use crate::store::Store;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The store every call reads and writes: memory until `aj_open_store` picks
/// another. Kept across pool restarts, so finished jobs stay readable.
pub static STORE: Lazy<Mutex<(String, Arc<dyn Store>)>> =
    Lazy::new(|| Mutex::new(("memory".into(), Arc::new(MemoryStore::new()))));
pub static POOL: Lazy<Mutex<Option<Pool>>> = Lazy::new(|| Mutex::new(None));
pub static OWNER: Lazy<u32> = Lazy::new(std::process::id);
/// Set once R has chosen a store (use_store()), so hot calls may skip R's checks.
pub static STORE_CHOSEN: AtomicBool = AtomicBool::new(false);

pub fn store() -> Arc<dyn Store> {
    STORE.lock().1.clone()
}

/// This process loaded the package and a store is chosen.
pub fn ready() -> bool {
    std::process::id() == *OWNER && STORE_CHOSEN.load(Ordering::Relaxed)
}

pub fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::try_parse(id).ok()
}

pub fn ms(x: f64) -> Duration {
    Duration::from_millis(if x.is_finite() && x > 0.0 { x as u64 } else { 0 })
}

pub fn limit(x: f64) -> u64 {
    if x.is_finite() { x.max(0.0) as u64 } else { u64::MAX }
}
