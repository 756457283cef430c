//! Mutation fuzzing on stable Rust, as ordinary tests: inputs grown from a committed seed
//! corpus by byte-level mutations, fed to a target for a time budget, every panic and every
//! input that runs too long reported with the input itself (escaped and in hex) so it can
//! become a named regression test.
//!
//! A target is a closure over bytes that panics on a failure, and says whether the input was
//! valid (parsed, got somewhere): only valid inputs are mutated further, else the pool fills
//! with inputs that a parser refuses at the first byte.
//!
//! ```ignore
//! #[test]
//! fn fuzz_my_parser() {
//!     crate::fuzz::run_for("my_parser", &crate::fuzz::seeds("my_parser"), |bytes| {
//!         // Must not panic; assert invariants of what parsed here.
//!         my_parse(bytes).is_ok()
//!     });
//! }
//! ```
//!
//! Seeds are the files of `tests/fixtures/fuzz/NAME/`. `OWRUN_FUZZ_SECS` sets each target's
//! budget (default 10 s; 0 runs the seeds only), `OWRUN_FUZZ_SEED` replays a run (each run
//! prints its seed).
//!
//! No coverage feedback (that needs a nightly compiler or an instrumented build): a random
//! quarter of the valid mutants join the pool, so mutations stack over time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long one input may run before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);
/// Most inputs kept to mutate further.
const POOL: usize = 2_000;
/// Longest input made by mutation.
const MAX_LEN: usize = 64 * 1024;

/// Each target's time budget: `OWRUN_FUZZ_SECS` seconds, 10 by default.
pub fn budget() -> Duration {
    let secs = std::env::var("OWRUN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(10.0);
    Duration::from_secs_f64(secs.max(0.0))
}

/// The seed inputs in `tests/fixtures/fuzz/NAME/`, in file-name order.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the seeds in {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display())))
        .collect()
}

/// Values at the edges of integer types, where parsers overflow or misjudge sizes.
const INTERESTING: [u64; 12] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    u64::MAX - 1,
];

/// Numbers as text, for text formats (JSON, configs, templates).
const INTERESTING_TEXT: [&str; 9] = [
    "0",
    "-1",
    "255",
    "65536",
    "4294967296",
    "18446744073709551616",
    "1e308",
    "-0.0",
    "NaN",
];

/// `input` changed by one to four random mutations: bit flips, byte changes, inserts and
/// deletes, interesting integers (binary, either byte order, or as text), a copied chunk,
/// truncation. The result is never longer than 64 KiB.
pub fn mutate(input: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        mutate_once(&mut out, rng);
    }
    out.truncate(MAX_LEN);
    out
}

fn mutate_once(out: &mut Vec<u8>, rng: &mut StdRng) {
    // Positions are up to and including the end, so an empty input can grow.
    let at = rng.random_range(0..=out.len());
    match rng.random_range(0..9) {
        0 if at < out.len() => out[at] ^= 1 << rng.random_range(0..8),
        1 if at < out.len() => out[at] = rng.random(),
        2 => {
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            out.splice(at..at, bytes);
        }
        3 if at < out.len() => {
            let end = rng.random_range(at..=out.len().min(at + 16));
            out.drain(at..end);
        }
        4 => {
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let width = [1, 2, 4, 8][rng.random_range(0..4)];
            let bytes = if rng.random() {
                v.to_le_bytes()[..width].to_vec()
            } else {
                v.to_be_bytes()[8 - width..].to_vec()
            };
            let end = (at + width).min(out.len());
            out.splice(at..end, bytes);
        }
        5 => {
            let text = INTERESTING_TEXT[rng.random_range(0..INTERESTING_TEXT.len())];
            // Over a run of digits if there is one here, else inserted.
            let end = at + out[at..].iter().take_while(|b| b.is_ascii_digit()).count();
            out.splice(at..end, text.bytes());
        }
        6 if !out.is_empty() => {
            // A chunk of the input copied elsewhere in it (repeats structure: nesting, lists).
            let from = rng.random_range(0..out.len());
            let end = rng.random_range(from..=out.len().min(from + 32));
            let chunk = out[from..end].to_vec();
            out.splice(at..at, chunk);
        }
        7 => out.truncate(at),
        _ => {
            // Some printable ASCII: text formats choke on structure characters more than on
            // random high bytes.
            let c = rng.random_range(0x20u8..0x7f);
            out.insert(at, c);
        }
    }
}

/// The start of `a` and the end of `b`, cut at random places.
pub fn splice(a: &[u8], b: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let i = rng.random_range(0..=a.len());
    let j = rng.random_range(0..=b.len());
    let mut out = a[..i].to_vec();
    out.extend_from_slice(&b[j..]);
    out.truncate(MAX_LEN);
    out
}

/// Bytes as a Rust byte-string literal's contents (printable ASCII as is, the rest escaped),
/// ready to paste into a regression test.
pub fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn report(name: &str, seed: u64, what: &str, input: &[u8]) -> String {
    format!(
        "fuzz target {name:?} {what} (OWRUN_FUZZ_SEED={seed}); the input ({} bytes):\n\
         b\"{}\"\nhex: {}",
        input.len(),
        escaped(input),
        hex(input)
    )
}

/// Feed `target` every seed, then mutants of them and of valid mutants (and splices of two)
/// until the budget is spent; `target` returns whether the input was valid. Panics with the
/// input when `target` panics; exits the process with the input printed when one input runs
/// longer than 20 s (a loop cannot be interrupted from inside).
pub fn run_for(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> bool) {
    let seed = std::env::var("OWRUN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("fuzz target {name:?}: OWRUN_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let current = Arc::new(Mutex::new((Instant::now(), Vec::<u8>::new())));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (current, done, name) = (current.clone(), done.clone(), name.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let (started, input) = &*current.lock().unwrap_or_else(|e| e.into_inner());
                if !done.load(Ordering::Relaxed) && started.elapsed() > HANG {
                    eprintln!("{}", report(&name, seed, "hangs", input));
                    std::process::exit(101);
                }
            }
        })
    };
    let run = |input: &[u8]| {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = (Instant::now(), input.to_vec());
        match catch_unwind(AssertUnwindSafe(|| target(input))) {
            Ok(valid) => valid,
            Err(_) => {
                done.store(true, Ordering::Relaxed);
                panic!("{}", report(name, seed, "panicked", input));
            }
        }
    };
    for s in seeds {
        run(s);
    }
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    let deadline = Instant::now() + budget();
    let (mut runs, mut valid) = (0u64, 0u64);
    while Instant::now() < deadline {
        let parent = &pool[rng.random_range(0..pool.len())];
        let input = if rng.random_ratio(1, 8) {
            let other = &pool[rng.random_range(0..pool.len())];
            mutate(&splice(parent, other, &mut rng), &mut rng)
        } else {
            mutate(parent, &mut rng)
        };
        runs += 1;
        if !run(&input) {
            continue;
        }
        valid += 1;
        if rng.random_ratio(1, 4) {
            if pool.len() < POOL {
                pool.push(input);
            } else {
                let i = rng.random_range(seeds.len().min(POOL - 1)..POOL);
                pool[i] = input;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().expect("the watchdog thread");
    eprintln!("fuzz target {name:?}: {runs} inputs, {valid} valid");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_change_inputs_and_stay_bounded() {
        let mut rng = StdRng::seed_from_u64(1);
        let input = b"{\"type\": \"object\", \"minItems\": 3}".to_vec();
        let mutants: Vec<Vec<u8>> = (0..200).map(|_| mutate(&input, &mut rng)).collect();
        let changed = mutants.iter().filter(|m| **m != input).count();
        assert!(changed > 150, "only {changed} of 200 mutants differ");
        assert!(mutants.iter().any(|m| m.len() > input.len()));
        assert!(mutants.iter().any(|m| m.len() < input.len()));
        let big = vec![b'x'; MAX_LEN];
        assert!((0..50).all(|_| mutate(&big, &mut rng).len() <= MAX_LEN));
        // An empty input grows.
        assert!((0..50).any(|_| !mutate(&[], &mut rng).is_empty()));
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        let seeds = vec![b"ok".to_vec(), b"bad\x00input".to_vec()];
        let err = catch_unwind(|| {
            run_for("selftest", &seeds, |bytes| {
                assert!(!bytes.starts_with(b"bad"));
                true
            })
        })
        .unwrap_err();
        let message = err.downcast_ref::<String>().expect("a formatted message");
        assert!(message.contains("b\"bad\\x00input\""), "{message}");
        assert!(message.contains("hex: 62616400696e707574"), "{message}");
    }
}
