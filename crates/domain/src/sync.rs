//! The one mutex-poison policy of the workspace.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, recovering from poison: what our mutexes guard is bookkeeping
/// (sets, maps, counters) that each critical section leaves consistent, so a
/// panic elsewhere while holding the lock must not take the process down
/// with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
