//! The search for a private key whose public key meets a workbit target,
//! spread over threads, stoppable, and observable for progress reports.

use super::{PrivateKey, workbits};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many tries one thread makes between looks at the shared flags.
const BATCH: u64 = 64;

/// A key search in progress; cloneable handles see the same counters.
#[derive(Clone, Default)]
pub struct SearchState {
    tries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl SearchState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys tried so far, over all threads.
    pub fn tries(&self) -> u64 {
        self.tries.load(Ordering::Relaxed)
    }

    /// Asks every thread to stop; `search` then returns `None`.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// The expected number of tries to meet `bits` workbits: 2^bits.
pub fn expected_tries(bits: u8) -> f64 {
    2f64.powi(bits as i32)
}

/// Searches for a private key with at least `bits` workbits in `namespace`
/// on `threads` threads (at least one). Returns `None` when stopped through
/// `state` before a key was found.
pub fn search(
    bits: u8,
    namespace: &str,
    threads: usize,
    state: &SearchState,
) -> Option<PrivateKey> {
    let found: Arc<std::sync::Mutex<Option<PrivateKey>>> = Arc::default();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let found = Arc::clone(&found);
            scope.spawn(move || {
                let mut seed = [0u8; 32];
                while !state.is_stopped() {
                    for _ in 0..BATCH {
                        if getrandom::getrandom(&mut seed).is_err() {
                            state.stop();
                            return;
                        }
                        let sk = PrivateKey::from_bytes(seed);
                        if workbits(sk.public_key().as_bytes(), namespace) >= bits {
                            if let Ok(mut slot) = found.lock() {
                                slot.get_or_insert(sk);
                            }
                            state.stop();
                            break;
                        }
                    }
                    state.tries.fetch_add(BATCH, Ordering::Relaxed);
                }
            });
        }
    });
    found.lock().ok().and_then(|mut slot| slot.take())
}

/// Measures key searches per second on `threads` threads for about `duration`.
pub fn measure_rate(namespace: &str, threads: usize, duration: Duration) -> f64 {
    let state = SearchState::new();
    let start = Instant::now();
    std::thread::scope(|scope| {
        let watcher = state.clone();
        scope.spawn(move || {
            std::thread::sleep(duration);
            watcher.stop();
        });
        // 255 bits can never be met: the search runs until stopped.
        search(u8::MAX, namespace, threads, &state);
    });
    state.tries() as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_key_meeting_the_target() {
        let state = SearchState::new();
        let sk = search(6, "test", 2, &state).unwrap();
        assert!(sk.public_key().workbits("test") >= 6);
        assert!(state.is_stopped());
    }

    #[test]
    fn stops_when_asked() {
        let state = SearchState::new();
        state.stop();
        assert!(search(200, "test", 2, &state).is_none());
    }
}
