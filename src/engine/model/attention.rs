//! Attention as tensor operations, for caches held as device tensors (GPUs; on the CPU, the tests'
//! reference for `flash`, which streams instead): scaled dot products, soft-capping, the causal
//! mask and sliding windows, softmax, then the weighted values, with every score of the new
//! tokens held at once. Query heads that share a key/value head (grouped-query attention) are
//! stacked as rows, so keys are never copied per query head. `Scores` (how a layer scores) is
//! shared by both paths.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

/// How a layer scores queries against keys.
pub struct Scores {
    /// Multiplies q·k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar).
    pub scale: f64,
    pub softcap: Option<f64>,
    /// A query at position i sees keys j with i - window < j <= i (None: every earlier key).
    pub window: Option<usize>,
}

/// `qs`: heads × t × head_dim, the rotated queries of positions `pos..pos + t`; `keys` and
/// `values`: kv_heads × n_keys × head_dim from the cache, positions `first_key..pos + t`.
/// Returns t × (heads · head_dim), in `act_dtype`.
pub fn attend(
    qs: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    pos: usize,
    first_key: usize,
    s: &Scores,
    act_dtype: DType,
) -> Result<Tensor> {
    let (nh, t, hd) = qs.dims3()?;
    let nkv = keys.dim(0)?;
    let rep = nh / nkv;
    let n_keys = pos + t - first_key;
    // Query heads that share a key head are stacked as rows: kv_heads × (rep·t) × hd.
    let qs = qs.reshape((nkv, rep * t, hd))?;
    let mut scores = (qs.matmul(&keys.t()?)? * s.scale)?;
    if let Some(cap) = s.softcap {
        scores = ((scores / cap)?.tanh()? * cap)?;
    }
    let mut scores = scores
        .reshape((nkv, rep, t, n_keys))?
        .to_dtype(DType::F32)?;
    if let Some(mask) = mask(t, pos, first_key, n_keys, s.window, qs.device())? {
        scores = scores.broadcast_add(&mask)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?
        .to_dtype(act_dtype)?
        .reshape((nkv, rep * t, n_keys))?;
    Ok(probs
        .matmul(values)?
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .reshape((t, nh * hd))?)
}

/// Additive mask for `t` queries at positions pos.. against `keys` keys from position
/// `first_key`, or None when every query sees every key.
fn mask(
    t: usize,
    pos: usize,
    first_key: usize,
    keys: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let visible = |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
    let all = (0..t).all(|qi| (0..keys).all(|kj| visible(pos + qi, first_key + kj)));
    if all {
        return Ok(None);
    }
    let m: Vec<f32> = (0..t)
        .flat_map(|qi| {
            (0..keys).map(move |kj| {
                if visible(pos + qi, first_key + kj) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(m, (t, keys), device)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_hides_keys_window_or_more_positions_back() {
        let m: Vec<f32> = mask(1, 10, 0, 11, Some(4), &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let visible: Vec<usize> = (0..11).filter(|&j| m[j] == 0.0).collect();
        assert_eq!(visible, [7, 8, 9, 10]);
        assert!(mask(1, 10, 0, 11, None, &Device::Cpu).unwrap().is_none());
        // Prefill: causal within the new tokens.
        let m: Vec<f32> = mask(2, 0, 0, 2, None, &Device::Cpu)
            .unwrap()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(m, [0.0, f32::NEG_INFINITY, 0.0, 0.0]);
    }
}
