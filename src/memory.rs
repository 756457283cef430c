//! This process's resident memory, for `owrun bench`'s memory line. Linux reports it in
//! /proc/self/status; elsewhere it is unknown (None). And how owrun's allocator keeps or returns
//! freed memory.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Resident set size now, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

/// The largest resident set size so far, in bytes.
pub fn peak_resident_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

/// Memory a model may use: `limit` when the user set one (`OWRUN_MEMORY_LIMIT`, in the
/// settings), else what the kernel says is available (MemAvailable). None when neither is known.
pub fn available_bytes(limit: Option<u64>) -> Option<u64> {
    limit.or_else(|| kb_field("/proc/meminfo", "MemAvailable:"))
}

/// "1500000", "512K", "700M", "16G" (powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (
            &s[..i],
            s[i..].trim_end_matches(['b', 'B']).to_ascii_uppercase(),
        ),
        None => (s, String::new()),
    };
    let n: f64 = digits.trim().parse().ok()?;
    let scale = match unit.as_str() {
        "" => 1.0,
        "K" | "KI" => 1024.0,
        "M" | "MI" => 1024.0 * 1024.0,
        "G" | "GI" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * scale) as u64)
}

fn status_field(name: &str) -> Option<u64> {
    kb_field("/proc/self/status", name)
}

/// A "Name:   1234 kB" line of a /proc file, in bytes.
fn kb_field(file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(super::parse_size("1500"), Some(1500));
        assert_eq!(super::parse_size("512K"), Some(512 * 1024));
        assert_eq!(super::parse_size("1.5G"), Some(3 * 512 * 1024 * 1024));
        assert_eq!(super::parse_size("700MB"), Some(700 * 1024 * 1024));
        assert_eq!(super::parse_size("lots"), None);
    }

    #[test]
    fn resident_memory_is_read() {
        let block = vec![1u8; 64 << 20];
        assert!(block.iter().all(|&b| b == 1));
        let now = super::resident_bytes().unwrap();
        assert!(now >= 64 << 20, "{now} bytes resident while holding 64 MiB");
        assert!(super::peak_resident_bytes().unwrap() >= now);
    }
}

/// Once a model is loaded: hands the loader's freed buffers back to the OS, then tells mimalloc
/// (owrun's allocator, see main.rs) to keep whatever is freed from now on. By default it returns
/// freed memory 10 ms after a free, and the next forward pass faults the same pages back in:
/// 9,400 page faults over six TinyLlama prefills against 1,600 when kept, and 145 against
/// 160 tokens/s. Keeping the load's temporaries instead would add ~150 MB to a TinyLlama
/// Q4_K_M (1.29x the weights where 1.13x is the rest).
///
/// A server (`serve_returns_idle_memory`) keeps freed memory for a second instead of for good,
/// and hands it back when it is idle (`trim`): its threads are many and its clients' buffers
/// come and go, and a storm of them would otherwise leave tens of megabytes behind for good.
pub fn keep_freed_memory() {
    let delay = if SERVING.load(Ordering::Relaxed) {
        SERVER_PURGE_DELAY_MS
    } else {
        -1
    };
    // SAFETY: collecting and setting an option are allowed at any time from any thread.
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, delay);
    }
}

/// mimalloc.h's `mi_option_purge_delay` (the Rust bindings leave it out; mimalloc keeps its
/// option numbers stable, with placeholders for deprecated ones). -1: never purge.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long a server keeps freed memory (ms): longer than the gap between a sequence's forward
/// passes, so that decoding reuses its buffers rather than faulting them in again. mimalloc
/// decides at a memory segment's creation whether it may ever be purged, so "never" (-1) must
/// not be set in a server even for a moment.
const SERVER_PURGE_DELAY_MS: std::ffi::c_long = 1000;

static SERVING: AtomicBool = AtomicBool::new(false);

/// Trims asked for so far (`trim`); each thread does each of them once (`trim_if_asked`).
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// This process is a server: see `keep_freed_memory`. Before any model is loaded.
pub fn serve_returns_idle_memory() {
    SERVING.store(true, Ordering::Relaxed);
    // SAFETY: as in keep_freed_memory.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, SERVER_PURGE_DELAY_MS) };
}

/// Ask every thread to hand its freed memory back (each does at its next `trim_if_asked`), and
/// do it for this one. mimalloc's memory is per thread: only its owner can return it.
pub fn trim() {
    TRIMS.fetch_add(1, Ordering::Relaxed);
    let _ = trim_if_asked();
}

/// Where a thread goes idle: return its freed memory if a trim was asked since it last did
/// (true when it did).
pub fn trim_if_asked() -> bool {
    thread_local! {
        static DONE: Cell<u64> = const { Cell::new(0) };
    }
    let asked = TRIMS.load(Ordering::Relaxed);
    if DONE.with(|d| d.replace(asked)) == asked {
        return false;
    }
    // SAFETY: collecting is allowed at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) };
    true
}
