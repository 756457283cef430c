//! Rotary position embeddings, computed for the positions a forward needs (no table sized to
//! the whole context): default, linear, llama3, LongRoPE (Phi-3.5 / Phi-4, "su" in early
//! files) and YaRN (Qwen2.5 / Qwen3 past 32k, DeepSeek V2/V3, gpt-oss), over all of a head or
//! its first part (partial rotary). Frequencies follow
//! transformers' `modeling_rope_utils` in f32, so logits agree to rounding.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Rope {
    /// Rotated dimensions of a head (the rest pass through unchanged).
    pub rot_dim: usize,
    inv_freq: Vec<f32>,
    /// LongRoPE: these frequencies once a sequence is longer than `original` positions.
    long: Option<(Vec<f32>, usize)>,
    /// Dynamic NTK: past the model's context, the base grows with the sequence (theta, factor,
    /// the context).
    dynamic: Option<(f64, f64, usize)>,
    /// Multiplies cos and sin (LongRoPE's and YaRN's attention factor; 1 elsewhere).
    scale: f32,
    /// The context the scaling is for (YaRN: its original context times its factor), when it
    /// reaches past the model's `max_position_embeddings` (Qwen2.5 and Qwen3 state 32k and are
    /// told to add YaRN for 128k).
    pub extended_context: Option<usize>,
}

fn base_freqs(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| 1.0 / (theta as f32).powf(i as f32 / dim as f32))
        .collect()
}

/// YaRN's frequencies, as transformers' `_compute_yarn_parameters` makes them: the base
/// frequencies where a dimension turns more than `beta_fast` times over the original context
/// (kept: extrapolated), divided by `factor` where it turns fewer than `beta_slow` times
/// (interpolated), and a linear ramp between.
fn yarn_freqs(
    theta: f64,
    dim: usize,
    factor: f64,
    (beta_fast, beta_slow): (f64, f64),
    original: usize,
    truncate: bool,
) -> Vec<f32> {
    let correction = |rotations: f64| {
        (dim as f64 * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
    if truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    let span = if low == high { 0.001 } else { high - low } as f32;
    (0..dim)
        .step_by(2)
        .enumerate()
        .map(|(i, d)| {
            // In f32, in transformers' order of operations.
            let pos = (theta as f32).powf(d as f32 / dim as f32);
            let (extrapolated, interpolated) = (1.0 / pos, 1.0 / (factor as f32 * pos));
            let ramp = ((i as f32 - low as f32) / span).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            interpolated * (1.0 - keep) + extrapolated * keep
        })
        .collect()
}

/// Dynamic NTK's frequencies for a sequence of `len` positions past `context`, as transformers'
/// `_compute_dynamic_ntk_parameters`: the base times ((factor · len / context) − (factor − 1))
/// to the power dim / (dim − 2).
fn ntk_freqs(theta: f64, factor: f64, len: usize, context: usize, dim: usize) -> Vec<f32> {
    let grown = theta
        * ((factor * len as f64 / context as f64) - (factor - 1.0))
            .powf(dim as f64 / (dim as f64 - 2.0));
    (0..dim)
        .step_by(2)
        .map(|d| 1.0 / (grown as f32).powf(d as f32 / dim as f32))
        .collect()
}

/// A JSON array of numbers as f32s (empty when it is not one).
pub fn f32_list(v: &Value) -> Vec<f32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default()
}

impl Rope {
    /// `scaling`: config.json's `rope_scaling` (null or absent: none). `max_pos` and
    /// `original_max_pos` are the config's `max_position_embeddings` and (Phi-3)
    /// `original_max_position_embeddings`.
    pub fn new(
        head_dim: usize,
        partial: f64,
        theta: f64,
        scaling: Option<&Value>,
        max_pos: usize,
        original_max_pos: Option<usize>,
    ) -> Result<Rope> {
        let rot_dim = ((head_dim as f64 * partial) as usize) & !1;
        let mut rope = Rope {
            rot_dim,
            inv_freq: base_freqs(theta, rot_dim),
            long: None,
            dynamic: None,
            scale: 1.0,
            extended_context: None,
        };
        let Some(s) = scaling.filter(|s| !s.is_null()) else {
            return Ok(rope);
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        // Every number of a scaling is a positive, finite factor, length or frequency: a 0, a
        // negative or a NaN would turn every rotation into NaN or infinity without an error.
        let num = |k: &str| -> Result<Option<f64>> {
            match s.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
                    _ => bail!("rope_scaling.{k} is {v}, not a positive number"),
                },
            }
        };
        let positive_list = |k: &str| -> Result<Vec<f32>> {
            let v = f32_list(&s[k]);
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                bail!("rope_scaling.{k} holds {bad}, not a positive factor");
            }
            Ok(v)
        };
        // The context the model was trained for before the scaling (YaRN, LongRoPE).
        let original = || -> Result<usize> {
            Ok(num("original_max_position_embeddings")?
                .map(|v| v as usize)
                .or(original_max_pos)
                .unwrap_or(max_pos)
                .max(1))
        };
        match kind {
            "default" => {}
            "linear" => {
                let factor = num("factor")?.unwrap_or(1.0) as f32;
                rope.inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            // Per-frequency divisors, as GGUF files carry Llama 3.1's scaling (rope_freqs).
            "divisors" => {
                let d = positive_list("divisors")?;
                if d.len() != rope.inv_freq.len() {
                    bail!(
                        "rope_freqs has {} values, expected {}",
                        d.len(),
                        rope.inv_freq.len()
                    );
                }
                rope.inv_freq.iter_mut().zip(d).for_each(|(f, d)| *f /= d);
            }
            "llama3" => {
                let factor = num("factor")?.unwrap_or(8.0) as f32;
                let low = num("low_freq_factor")?.unwrap_or(1.0) as f32;
                let high = num("high_freq_factor")?.unwrap_or(4.0) as f32;
                if high <= low {
                    bail!(
                        "rope_scaling.high_freq_factor {high} is not above low_freq_factor {low}"
                    );
                }
                let old_ctx = num("original_max_position_embeddings")?.unwrap_or(8192.0) as f32;
                let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
                for f in rope.inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
            "dynamic" => {
                let factor = num("factor")?.unwrap_or(1.0);
                rope.dynamic = Some((theta, factor, max_pos.max(1)));
                let reach = (max_pos as f64 * factor) as usize;
                rope.extended_context = (reach > max_pos).then_some(reach);
            }
            "yarn" => {
                let original = original()?;
                // DeepSeek V3 states no factor: the ratio of its context to the original.
                let factor = num("factor")?.unwrap_or(max_pos as f64 / original as f64);
                let mscale = |m: f64| {
                    if factor <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * factor.ln() + 1.0
                    }
                };
                rope.scale = match (
                    num("attention_factor")?,
                    num("mscale")?,
                    num("mscale_all_dim")?,
                ) {
                    (Some(a), ..) => a as f32,
                    (None, Some(m), Some(all)) => (mscale(m) / mscale(all)) as f32,
                    _ => mscale(1.0) as f32,
                };
                let beta_fast = num("beta_fast")?.unwrap_or(32.0);
                let beta_slow = num("beta_slow")?.unwrap_or(1.0);
                let truncate = s.get("truncate").and_then(Value::as_bool).unwrap_or(true);
                let reach = (original as f64 * factor) as usize;
                rope.extended_context = (reach > max_pos).then_some(reach);
                rope.inv_freq = yarn_freqs(
                    theta,
                    rot_dim,
                    factor,
                    (beta_fast, beta_slow),
                    original,
                    truncate,
                );
            }
            "longrope" | "su" => {
                let factors = |k: &str| -> Result<Vec<f32>> {
                    let v = positive_list(k)?;
                    if v.len() != rot_dim / 2 {
                        bail!(
                            "rope_scaling.{k} has {} values, expected {}",
                            v.len(),
                            rot_dim / 2
                        );
                    }
                    Ok(v)
                };
                let (short, long) = (factors("short_factor")?, factors("long_factor")?);
                let original = original()?;
                let factor = num("factor")?.unwrap_or(max_pos as f64 / original as f64);
                rope.scale = match num("attention_factor")? {
                    Some(a) => a as f32,
                    None if factor <= 1.0 => 1.0,
                    None => (1.0 + factor.ln() / (original as f64).ln()).sqrt() as f32,
                };
                let base = rope.inv_freq.clone();
                let apply = |ext: &[f32]| -> Vec<f32> {
                    base.iter().zip(ext).map(|(f, e)| f / e).collect()
                };
                rope.inv_freq = apply(&short);
                rope.long = Some((apply(&long), original));
            }
            other => bail!(
                "rope scaling {other:?} is not supported (supported: linear, llama3, longrope, \
                 yarn, dynamic)"
            ),
        }
        Ok(rope)
    }

    /// The rotation frequencies (of the short factors, for LongRoPE).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// cos and sin for positions `first..first + n`, each n × rot_dim/2. LongRoPE switches to
    /// its long factors when the sequence reaches past the original context, and dynamic NTK
    /// grows its base with the sequence past the model's context, as transformers does for the
    /// forward that crosses it: `reach` is where the caller's whole forward ends (a prompt fed
    /// in chunks decides once, for all of its chunks; cached keys keep the rotation they had).
    pub fn tables(
        &self,
        first: usize,
        n: usize,
        reach: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let reach = reach.max(first + n);
        let grown;
        let inv = match (&self.long, self.dynamic) {
            (Some((long, original)), _) if reach > *original => long,
            (_, Some((theta, factor, context))) if reach > context => {
                grown = ntk_freqs(theta, factor, reach, context, self.rot_dim);
                &grown
            }
            _ => &self.inv_freq,
        };
        let half = inv.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in first..first + n {
            for f in inv {
                let a = p as f32 * f;
                cos.push(a.cos() * self.scale);
                sin.push(a.sin() * self.scale);
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }

    /// Rotate `x` (1 × t × heads × head_dim, contiguous) for positions `first..first + t`, in a
    /// forward that reaches position `reach` (see [`tables`](Self::tables)).
    pub fn apply(&self, x: &Tensor, first: usize, reach: usize) -> Result<Tensor> {
        let (_, t, _, head_dim) = x.dims4()?;
        if self.rot_dim == 0 {
            return Ok(x.clone());
        }
        let (cos, sin) = self.tables(first, t, reach, x.dtype(), x.device())?;
        if self.rot_dim == head_dim {
            return Ok(candle_nn::rotary_emb::rope_thd(x, &cos, &sin)?);
        }
        let rot = x.narrow(3, 0, self.rot_dim)?.contiguous()?;
        let pass = x.narrow(3, self.rot_dim, head_dim - self.rot_dim)?;
        let rot = candle_nn::rotary_emb::rope_thd(&rot, &cos, &sin)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
        let plain = Rope::new(64, 1.0, 500000.0, None, 8192, None).unwrap();
        let scaled = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let l3 = Rope::new(64, 1.0, 500000.0, Some(&scaled), 131072, None).unwrap();
        assert_eq!(l3.inv_freq[0], plain.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((l3.inv_freq[last] - plain.inv_freq[last] / 8.0).abs() < 1e-12);
    }

    #[test]
    fn yarn_keeps_fast_dimensions_divides_slow_ones_and_extends_the_context() {
        let plain = Rope::new(128, 1.0, 1e6, None, 32768, None).unwrap();
        let s = serde_json::json!({"rope_type": "yarn", "factor": 4.0,
            "original_max_position_embeddings": 32768});
        let y = Rope::new(128, 1.0, 1e6, Some(&s), 32768, None).unwrap();
        assert_eq!(y.inv_freq[0], plain.inv_freq[0]);
        let last = y.inv_freq.len() - 1;
        assert!((y.inv_freq[last] - plain.inv_freq[last] / 4.0).abs() < 1e-12);
        assert!((y.scale - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(y.extended_context, Some(131072));
        // A context that already holds it (DeepSeek V3 states its 160k) is left as it is.
        let y = Rope::new(128, 1.0, 1e6, Some(&s), 131072, None).unwrap();
        assert_eq!(y.extended_context, None);
    }

    #[test]
    fn unknown_scaling_is_refused_by_name() {
        let s = serde_json::json!({"rope_type": "ntk-by-parts", "factor": 2.0});
        let err = Rope::new(64, 1.0, 1e4, Some(&s), 4096, None).unwrap_err();
        assert!(err.to_string().contains("ntk-by-parts"), "{err}");
    }

    #[test]
    fn longrope_switches_factors_past_the_original_context() {
        let s = serde_json::json!({"rope_type": "longrope", "short_factor": [1.0, 1.0],
            "long_factor": [2.0, 4.0]});
        let r = Rope::new(8, 0.5, 1e4, Some(&s), 64, Some(16)).unwrap();
        assert_eq!(r.rot_dim, 4);
        let (short, _) = r.tables(10, 1, 0, DType::F32, &Device::Cpu).unwrap();
        let (long, _) = r.tables(10, 7, 0, DType::F32, &Device::Cpu).unwrap();
        let a: Vec<f32> = short.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = long
            .narrow(0, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(a, b, "a forward reaching position 16 uses the long factors");
    }
}
