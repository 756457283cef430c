//! The inner loop of streaming attention: one tile of keys and values (already f32) against a
//! block of query rows, folded into each row's running softmax (flash attention's online
//! softmax: a running maximum `m`, a running sum `l` and an unnormalised output `o`).
//!
//! Three steps per tile: scores (query rows × the tile's keys, keys given transposed so the
//! loop runs over keys without horizontal sums), the softmax update per row over the keys it
//! sees, and the weighted sum of the value rows. The first and last are the work; they run in
//! `x86/avx2_attend.rs` on x86 CPUs with AVX2 and FMA, and as the portable loops below (which
//! the compiler vectorises: contiguous inner loops, a broadcast factor) everywhere else.

#[cfg(target_arch = "x86_64")]
use super::cpu::features;

/// Keys per tile.
pub const TILE: usize = 64;

/// One tile's inputs.
pub struct Tile<'a> {
    /// rows × head_dim.
    pub queries: &'a [f32],
    /// head_dim × TILE: key j's element d at d·TILE + j (columns past `n` are ignored).
    pub keys_t: &'a [f32],
    /// n × head_dim.
    pub values: &'a [f32],
    /// Keys in the tile.
    pub n: usize,
    pub head_dim: usize,
    /// Query row r sees the tile's keys visible[r].0 .. visible[r].1 (causal and window masks
    /// as a range).
    pub visible: &'a [(usize, usize)],
    pub scale: f32,
    pub softcap: Option<f32>,
}

/// Each query row's running softmax: `m` (max score so far), `l` (sum of exp(score - m)), and
/// `o` (rows × head_dim, the values weighted by exp(score - m)).
pub struct Running<'a> {
    pub m: &'a mut [f32],
    pub l: &'a mut [f32],
    pub o: &'a mut [f32],
}

/// Fold a tile into the running softmax of its rows. `scratch` holds rows × TILE scores.
pub fn fold_tile(t: &Tile, run: &mut Running, scratch: &mut [f32]) {
    let (hd, rows) = (t.head_dim, t.visible.len());
    let s = &mut scratch[..rows * TILE];
    let loops = Loops::detect();
    loops.scores(t.queries, t.keys_t, hd, rows, s);
    for (r, &(lo, hi)) in t.visible.iter().enumerate() {
        let row = &mut s[r * TILE..(r + 1) * TILE];
        if lo >= hi {
            row.fill(0.0);
            continue;
        }
        let mut max = f32::NEG_INFINITY;
        for x in &mut row[lo..hi] {
            *x *= t.scale;
            if let Some(cap) = t.softcap {
                *x = cap * (*x / cap).tanh();
            }
            max = max.max(*x);
        }
        let m_new = run.m[r].max(max);
        // exp(-inf) for a row that had seen nothing yet: its o and l are zero anyway.
        let correction = if run.m[r] == f32::NEG_INFINITY {
            0.0
        } else {
            exp(run.m[r] - m_new)
        };
        let sum = loops.exp_sum(&mut row[lo..hi], m_new);
        row[..lo].fill(0.0);
        row[hi..].fill(0.0);
        run.m[r] = m_new;
        run.l[r] = run.l[r] * correction + sum;
        if correction != 1.0 {
            for x in &mut run.o[r * hd..(r + 1) * hd] {
                *x *= correction;
            }
        }
    }
    loops.accumulate(s, t.values, t.n, hd, rows, run.o);
}

/// Which build of the loops this CPU runs: AVX2 + FMA on x86 where it has them, else the
/// portable loops.
#[derive(Clone, Copy)]
enum Loops {
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Loops {
    fn detect() -> Loops {
        #[cfg(target_arch = "x86_64")]
        if features().avx2_fma {
            return Loops::Avx2;
        }
        Loops::Portable
    }

    fn scores(self, q: &[f32], kt: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
        match self {
            // SAFETY: the CPU has AVX2 and FMA; the loops check the slices' sizes.
            #[cfg(target_arch = "x86_64")]
            Loops::Avx2 => unsafe { super::x86::avx2_attend::scores(q, kt, hd, rows, s) },
            Loops::Portable => scores(q, kt, hd, rows, s),
        }
    }

    fn exp_sum(self, s: &mut [f32], m: f32) -> f32 {
        match self {
            // SAFETY: the CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Loops::Avx2 => unsafe { super::x86::avx2_attend::exp_sum(s, m) },
            Loops::Portable => exp_sum(s, m),
        }
    }

    fn accumulate(self, p: &[f32], v: &[f32], n: usize, hd: usize, rows: usize, o: &mut [f32]) {
        match self {
            // SAFETY: the CPU has AVX2 and FMA; the loops check the slices' sizes.
            #[cfg(target_arch = "x86_64")]
            Loops::Avx2 => unsafe { super::x86::avx2_attend::accumulate(p, v, n, hd, rows, o) },
            Loops::Portable => accumulate(p, v, n, hd, rows, o),
        }
    }
}

/// s[r][j] = q_r · k_j, a broadcast query element times a row of the transposed keys.
fn scores(q: &[f32], kt: &[f32], hd: usize, rows: usize, s: &mut [f32]) {
    for r in 0..rows {
        let row = &mut s[r * TILE..(r + 1) * TILE];
        row.fill(0.0);
        for (d, &qd) in q[r * hd..(r + 1) * hd].iter().enumerate() {
            for (x, &k) in row.iter_mut().zip(&kt[d * TILE..(d + 1) * TILE]) {
                *x += qd * k;
            }
        }
    }
}

/// o_r += Σ_j p[r][j] · v_j over the first `n` keys.
fn accumulate(p: &[f32], v: &[f32], n: usize, hd: usize, rows: usize, o: &mut [f32]) {
    for r in 0..rows {
        let o = &mut o[r * hd..(r + 1) * hd];
        for (j, &w) in p[r * TILE..r * TILE + n].iter().enumerate() {
            if w != 0.0 {
                for (x, &y) in o.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                    *x += w * y;
                }
            }
        }
    }
}

/// s[i] = e^(s[i] - m); returns their sum.
fn exp_sum(s: &mut [f32], m: f32) -> f32 {
    let mut sum = 0.0;
    for x in s {
        *x = exp(*x - m);
        sum += *x;
    }
    sum
}

/// Cephes' polynomial for e^r on |r| <= ln 2 / 2, highest power first (after 1 + r + r²·p(r)).
pub const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
/// ln 2 split in two for an exact range reduction: x - n·ln 2 = x - n·HI + n·LO.
pub const LN2_HI: f32 = 0.693_359_4;
pub const LN2_LO: f32 = 2.121_944_4e-4;

/// e^x for x <= 0 (scores minus their maximum), to about 2 ulp: x = n·ln 2 + r with |r| <= ln 2 / 2,
/// e^r by Cephes' polynomial, 2^n put in the exponent bits. Branch-free, so the loops that call
/// it vectorise (a library `exp` per score would cost more than the dot products).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI + n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_the_library() {
        let mut worst = 0f32;
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
    }

    #[test]
    fn a_tile_folded_in_two_halves_equals_one_softmax() {
        let (hd, n, rows) = (20, 13, 5);
        let val = |i: usize| ((i * 37 % 101) as f32 / 50.0) - 1.0;
        let q: Vec<f32> = (0..rows * hd).map(val).collect();
        let k: Vec<f32> = (0..n * hd).map(|i| val(i + 7)).collect();
        let v: Vec<f32> = (0..n * hd).map(|i| val(i + 3)).collect();
        // Row r sees keys 0..n-r (a causal shape).
        let visible: Vec<(usize, usize)> = (0..rows).map(|r| (0, n - r)).collect();
        let (mut m, mut l, mut o) = (
            vec![f32::NEG_INFINITY; rows],
            vec![0f32; rows],
            vec![0f32; rows * hd],
        );
        let mut scratch = vec![0f32; rows * TILE];
        // Keys 0..6, then 6..n, as two tiles.
        for (a, b) in [(0, 6), (6, n)] {
            let vis: Vec<(usize, usize)> = visible
                .iter()
                .map(|&(lo, hi)| (lo.max(a) - a, hi.min(b).max(a) - a))
                .collect();
            let mut kt = vec![0f32; hd * TILE];
            for j in a..b {
                for d in 0..hd {
                    kt[d * TILE + j - a] = k[j * hd + d];
                }
            }
            let tile = Tile {
                queries: &q,
                keys_t: &kt,
                values: &v[a * hd..b * hd],
                n: b - a,
                head_dim: hd,
                visible: &vis,
                scale: 0.5,
                softcap: Some(3.0),
            };
            let mut run = Running {
                m: &mut m,
                l: &mut l,
                o: &mut o,
            };
            fold_tile(&tile, &mut run, &mut scratch);
        }
        for r in 0..rows {
            let (lo, hi) = visible[r];
            let s: Vec<f32> = (lo..hi)
                .map(|j| {
                    let d: f32 = (0..hd).map(|x| q[r * hd + x] * k[j * hd + x]).sum();
                    3.0 * (d * 0.5 / 3.0).tanh()
                })
                .collect();
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = p.iter().sum();
            for x in 0..hd {
                let want: f32 = (lo..hi).map(|j| p[j - lo] * v[j * hd + x]).sum::<f32>() / sum;
                let got = o[r * hd + x] / l[r];
                assert!(
                    (got - want).abs() < 1e-5,
                    "row {r} dim {x}: {got} vs {want}"
                );
            }
        }
    }
}
