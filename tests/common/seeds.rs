//! The seeded simulations' runner, shared: one seed from `<PREFIX>_SEED` with a verbose
//! trace, or `<PREFIX>_SCENARIOS` seeds (default given) spread over every core, with
//! every failing seed collected and the first few shown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Runs `run(seed, verbose)` as the environment asks; panics naming the failed seeds.
/// Returns the sum of what the seeds returned (0 for a single verbose seed).
pub fn run_seeds(
    prefix: &str,
    default_scenarios: u64,
    run: impl Fn(u64, bool) -> Result<u64, String> + Sync,
) -> u64 {
    if let Ok(seed) = std::env::var(format!("{prefix}_SEED")) {
        let seed: u64 = seed.parse().expect("seed");
        if let Err(e) = run(seed, true) {
            panic!("seed {seed}: {e}");
        }
        return 0;
    }
    let count: u64 = std::env::var(format!("{prefix}_SCENARIOS"))
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_scenarios);
    let next = AtomicU64::new(0);
    let total = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= count {
                    break;
                }
                match run(seed, false) {
                    Ok(n) => {
                        total.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("seed {seed}: {e}")),
                }
            });
        }
    });
    let f = failures.into_inner().unwrap();
    assert!(
        f.is_empty(),
        "{} of {count} seeds failed; first: {:?}",
        f.len(),
        &f[..f.len().min(5)]
    );
    total.into_inner()
}
