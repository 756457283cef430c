//! owrun's CPU kernels: matrix products with weights as they are stored (16-bit, GGML blocks),
//! on every ISA. Private to `model`: `linear` calls the entry points below.
//!
//! The layout follows the ISA split: the drivers here are portable Rust (how work is cut into
//! tasks on rayon's pool, how activations are prepared, which path a shape takes), and every
//! instruction-set-specific loop is in `x86/` or `arm/`, one file per set and family. `cpu`
//! detects the CPU's features once; `blocks` holds what every ISA shares about GGML's blocks.
//!
//! | file | what |
//! |---|---|
//! | `cpu` | feature detection, once, with the `OWRUN_CPU` override |
//! | `blocks`, `iq_tables` | GGML block layouts and grids, int8 rounding of activations |
//! | `dequant` | every block type to f32, exactly (checked against the `gguf` package) |
//! | `acts` | activations quantized for the row kernels of every ISA |
//! | `vecdot` | portable row kernels for every block type, and the driver every ISA's share |
//! | `quant` | quantized weights: the entry point, the paths this CPU has, the choice |
//! | `quant_tiles`, `quant_rows`, `block_acts` | AVX-512 VNNI prefill tiles (every type but IQ1–IQ3) and Q8_0/Q4_K/Q6_K decode rows (x86 only) |
//! | `attend` | the inner loop of streaming attention (one tile of keys into running softmaxes) |
//! | `half16`, `dots` | 16-bit element types; portable f32 dot loops |
//! | `half` | 16-bit weights: the entry point and the portable path |
//! | `half_tiles` | 16-bit register tiles (AVX-512, AVX2, NEON) and AVX-512 decode rows |
//! | `x86/`, `arm/` | the instructions of each ISA and family |
//!
//! Imports go one way: entry points → drivers → `x86/`, `arm/` → shared layouts (`blocks`,
//! `acts`, `half16`, `dots`, `cpu`).

mod acts;
#[cfg(target_arch = "aarch64")]
mod arm;
mod attend;
#[cfg(target_arch = "x86_64")]
mod block_acts;
mod blocks;
mod cpu;
mod dequant;
mod dots;
mod half;
mod half16;
mod half_tiles;
mod iq_tables;
mod low_rank;
mod quant;
#[cfg(target_arch = "x86_64")]
mod quant_rows;
#[cfg(target_arch = "x86_64")]
mod quant_tiles;
mod vecdot;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::num::NonZeroUsize;

pub use attend::{fold_tile, Running, Tile, TILE as ATTENTION_TILE};
pub use blocks::block_scale;
pub use dequant::dequantize;
pub use half::{matmul as half_matmul, widen};
pub use low_rank::add as add_low_rank;
/// Whether owrun's register tiles run a 16-bit prefill with rows of `k` values on this CPU.
pub fn half_prefill_tiles(k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return half_tiles::avx512_available(k) || half_tiles::avx2_available(k);
    #[cfg(target_arch = "aarch64")]
    return half_tiles::neon_available(k);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return false;
}
pub use quant::matmul as quantized_matmul;

/// Run the kernels (and candle's CPU kernels) on `threads` threads (None: one per core). The
/// first call in a process decides; later calls change nothing (a pool cannot be resized).
pub fn use_threads(threads: Option<NonZeroUsize>) {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| {
        let n = threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
            NonZeroUsize::get,
        );
        if threads.is_some() {
            // owrun's kernels run on rayon's global pool; a pool that already exists (another
            // library built it) keeps its size.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        // candle 0.11's CPU ops (the GEMM of f32 weights, until owrun's own) ask for their
        // thread count on every call, and only the environment answers fast: without
        // RAYON_NUM_THREADS it parses /proc/cpuinfo each time (4% of a small model's token,
        // measured). Set once here, before any of them runs; the only writes of the process
        // environment in owrun, and they go with the last candle op on the CPU paths.
        if threads.is_some() || std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        }
    });
}

/// An output buffer written from several tasks, each owning a disjoint set of its elements.
pub(crate) struct SharedOut(pub *mut f32);
// SAFETY: the kernels that share it write every element from exactly one task.
unsafe impl Sync for SharedOut {}

/// The largest absolute difference between two results (the kernels' tests).
#[cfg(test)]
pub(crate) fn max_difference(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "results of different sizes");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}
