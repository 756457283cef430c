//! Attention on the CPU that streams over the KV cache: scores are computed a tile of keys at a
//! time and folded into each query's running softmax (flash attention), so no t × n_keys matrix
//! is ever held, and keys and values are read from the cache where they are, in the type it
//! stores, one tile widened to f32 at a time.
//!
//! Work is cut into tasks on rayon's pool: one per key/value head (its query heads, grouped-query
//! style, share each widened tile) and block of query positions; when that gives too few tasks
//! to keep every thread busy (decoding: one query), the keys are split as well and the partial
//! softmaxes merged (flash decoding). Causal and sliding-window masks are a visible range of keys
//! per query, so a tile outside every query's range is never read. The inner loop is
//! `kernels::fold_tile`, compiled per ISA.

use rayon::prelude::*;

use super::attention::Scores;
use super::kernels::{fold_tile, Running, Tile, ATTENTION_TILE as KEYS_PER_TILE};
use super::kv::LayerView;

/// Query rows per task (positions × the query heads of one key head).
const ROWS_PER_TASK: usize = 32;
/// The fewest keys a split of one task's keys is given.
const MIN_KEYS_PER_SPLIT: usize = 256;

/// The queries of one sequence's new tokens, as the decoder has them.
pub struct Queries<'a> {
    /// t × heads × head_dim, rotated.
    pub q: &'a [f32],
    pub t: usize,
    /// Position of the first of them.
    pub pos: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// One task's share: query positions `first..end` of key head `group`, keys `keys.0..keys.1`.
struct Task {
    group: usize,
    first: usize,
    end: usize,
    keys: (usize, usize),
}

/// A task's running softmax over its rows, to merge and normalise.
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    o: Vec<f32>,
}

/// Attention of the queries against the cache layer `kv` (which already holds their own keys).
/// Returns t × (heads · head_dim).
pub fn attend(q: &Queries, kv: &LayerView, s: &Scores) -> Vec<f32> {
    let (nh, hd, nkv) = (q.heads, q.head_dim, kv.kv_heads);
    let rep = nh / nkv;
    let per_task = (ROWS_PER_TASK / rep).max(1);
    // The keys query position i (absolute p = pos + i) sees: [first_key(p), p].
    let first_key = |p: usize| s.window.map_or(0, |w| (p + 1).saturating_sub(w));
    let mut blocks = Vec::new();
    for group in 0..nkv {
        for first in (0..q.t).step_by(per_task) {
            let end = (first + per_task).min(q.t);
            blocks.push((group, first, end));
        }
    }
    let threads = rayon::current_num_threads();
    let mut tasks = Vec::new();
    for &(group, first, end) in &blocks {
        let keys = (first_key(q.pos + first), q.pos + end);
        let n = keys.1 - keys.0;
        let splits = if blocks.len() >= 2 * threads {
            1
        } else {
            (2 * threads)
                .div_ceil(blocks.len())
                .min(n / MIN_KEYS_PER_SPLIT)
                .max(1)
        };
        // Splits end on tile boundaries, so no tile is read by two of them.
        let step = n.div_ceil(splits).div_ceil(KEYS_PER_TILE) * KEYS_PER_TILE;
        let mut a = keys.0;
        while a < keys.1 {
            let b = ((a / KEYS_PER_TILE) * KEYS_PER_TILE + step).min(keys.1);
            tasks.push(Task {
                group,
                first,
                end,
                keys: (a, b),
            });
            a = b;
        }
    }
    let partials: Vec<Partial> = tasks
        .par_iter()
        .map(|task| run_task(q, kv, s, rep, task, &first_key))
        .collect();

    // Merge the splits of each block (consecutive tasks), then normalise into the output.
    let mut out = vec![0f32; q.t * nh * hd];
    let mut parts = tasks.iter().zip(partials).peekable();
    while let Some((task, mut acc)) = parts.next() {
        let (group, first, end) = (task.group, task.first, task.end);
        while let Some((_, split)) = parts.next_if(|(t, _)| t.group == group && t.first == first) {
            merge(&mut acc, &split, hd);
        }
        for pi in first..end {
            for hr in 0..rep {
                let r = (pi - first) * rep + hr;
                let at = (pi * nh + group * rep + hr) * hd;
                let inv = if acc.l[r] > 0.0 { 1.0 / acc.l[r] } else { 0.0 };
                for (o, x) in out[at..at + hd]
                    .iter_mut()
                    .zip(&acc.o[r * hd..(r + 1) * hd])
                {
                    *o = x * inv;
                }
            }
        }
    }
    out
}

/// One task: its query rows against its keys, a tile at a time.
fn run_task(
    q: &Queries,
    kv: &LayerView,
    s: &Scores,
    rep: usize,
    task: &Task,
    first_key: &impl Fn(usize) -> usize,
) -> Partial {
    let (nh, hd) = (q.heads, q.head_dim);
    let rows = (task.end - task.first) * rep;
    let mut queries = Vec::with_capacity(rows * hd);
    for pi in task.first..task.end {
        for hr in 0..rep {
            let at = (pi * nh + task.group * rep + hr) * hd;
            queries.extend_from_slice(&q.q[at..at + hd]);
        }
    }
    let mut part = Partial {
        m: vec![f32::NEG_INFINITY; rows],
        l: vec![0.0; rows],
        o: vec![0.0; rows * hd],
    };
    // One tile of keys (transposed: head_dim × tile) and values (tile × head_dim) in f32.
    let mut keys_t = vec![0f32; hd * KEYS_PER_TILE];
    let mut values = vec![0f32; KEYS_PER_TILE * hd];
    let mut scratch = vec![0f32; rows * KEYS_PER_TILE];
    let mut visible = vec![(0, 0); rows];
    let (from, to) = task.keys;
    // Tiles start on multiples of the tile (as the cache stores them); keys of a tile outside
    // from..to are another task's, or no query's.
    let start = from / KEYS_PER_TILE * KEYS_PER_TILE;
    for a in (start..to).step_by(KEYS_PER_TILE) {
        let b = (a + KEYS_PER_TILE).min(to);
        // Which of keys a..b each row sees (relative to a).
        for pi in task.first..task.end {
            let p = q.pos + pi;
            let lo = first_key(p).max(from).clamp(a, b);
            let hi = (p + 1).clamp(a, b);
            for hr in 0..rep {
                visible[(pi - task.first) * rep + hr] = (lo - a, hi.max(lo) - a);
            }
        }
        let n = b - a;
        kv.widen(a, n, task.group, &mut keys_t, &mut values);
        let tile = Tile {
            queries: &queries,
            keys_t: &keys_t,
            values: &values[..n * hd],
            n,
            head_dim: hd,
            visible: &visible,
            scale: s.scale as f32,
            softcap: s.softcap.map(|c| c as f32),
        };
        let mut run = Running {
            m: &mut part.m,
            l: &mut part.l,
            o: &mut part.o,
        };
        fold_tile(&tile, &mut run, &mut scratch);
    }
    part
}

/// Fold `b`'s running softmax into `a`'s (the same rows, over other keys).
fn merge(a: &mut Partial, b: &Partial, hd: usize) {
    for r in 0..a.m.len() {
        if b.m[r] == f32::NEG_INFINITY {
            continue;
        }
        let m = a.m[r].max(b.m[r]);
        let ca = if a.m[r] == f32::NEG_INFINITY {
            0.0
        } else {
            (a.m[r] - m).exp()
        };
        let cb = (b.m[r] - m).exp();
        a.l[r] = a.l[r] * ca + b.l[r] * cb;
        for (x, y) in a.o[r * hd..(r + 1) * hd]
            .iter_mut()
            .zip(&b.o[r * hd..(r + 1) * hd])
        {
            *x = *x * ca + y * cb;
        }
        a.m[r] = m;
    }
}
