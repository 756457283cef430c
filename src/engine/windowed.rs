//! Mistral, Gemma 2 and Phi-3 with their sliding-window attention done right.
//!
//! candle-transformers 0.11 gets all three wrong: its Mistral masks one key too many in prefill
//! and none at all while decoding, and its Gemma 2 and Phi-3 never apply the window. Both then drift from
//! transformers as soon as a sequence is longer than the window (4096 tokens for Mistral 7B
//! v0.1 and Gemma 2). This is owrun's own implementation of the two architectures, following
//! transformers' modeling code: a query at position i sees keys j with i - windowsize < j <= i.
//!
//! Gemma 2 on top of the Llama/Mistral shape: embeddings scaled by sqrt(hidden), RMSNorm with
//! (1 + weight), norms after attention and around the MLP, tanh-GELU, attention scaled by
//! query_pre_attn_scalar^-1/2 with logit soft-capping, every other layer global, final logit
//! soft-capping, tied embeddings.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Activation, Embedding, Linear, VarBuilder};
use serde::Deserialize;

use super::model::Model;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    // Gemma 2 only.
    pub query_pre_attn_scalar: Option<usize>,
    pub attn_logit_softcapping: Option<f64>,
    pub final_logit_softcapping: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Flavour {
    Mistral,
    Gemma2,
    /// Phi-3 with a sliding window (Phi-3-mini-4k: 2047 tokens): Mistral's shape with fused
    /// qkv_proj and gate_up_proj weights.
    Phi3,
}

struct Norm {
    weight: Tensor,
    eps: f64,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64, flavour: Flavour) -> Result<Self> {
        let mut weight = vb.get(size, "weight")?;
        if flavour == Flavour::Gemma2 {
            // Gemma stores the scale as an offset from 1.
            weight = (weight + 1.0)?;
        }
        Ok(Norm { weight, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(x, &self.weight, self.eps as f32)?)
    }
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
    input_norm: Norm,
    post_attn_norm: Norm,
    /// Gemma 2's extra norms around the MLP.
    pre_mlp_norm: Option<Norm>,
    post_mlp_norm: Option<Norm>,
    window: Option<usize>,
    cache: Option<(Tensor, Tensor)>,
}

pub struct Windowed {
    flavour: Flavour,
    cfg: Config,
    head_dim: usize,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: Norm,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    act: Activation,
    device: Device,
    dtype: DType,
}

fn linear(vb: VarBuilder, i: usize, o: usize) -> Result<Linear> {
    Ok(Linear::new(vb.get((o, i), "weight")?, None))
}

impl Windowed {
    pub fn load(flavour: Flavour, cfg: Config, vb: VarBuilder, device: &Device) -> Result<Self> {
        let head_dim = cfg
            .head_dim
            .unwrap_or(cfg.hidden_size / cfg.num_attention_heads);
        let (h, kv, eps) = (cfg.hidden_size, cfg.num_key_value_heads, cfg.rms_norm_eps);
        let dtype = vb.dtype();
        let embed_w = vb.get((cfg.vocab_size, h), "model.embed_tokens.weight")?;
        let embed = Embedding::new(embed_w.clone(), h);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lv = vb.pp(format!("model.layers.{i}"));
            let at = lv.pp("self_attn");
            let mlp = lv.pp("mlp");
            let gemma = flavour == Flavour::Gemma2;
            let norm = |name: &str| Norm::load(lv.pp(name), h, eps, flavour);
            let (q_out, kv_out, im) = (
                cfg.num_attention_heads * head_dim,
                kv * head_dim,
                cfg.intermediate_size,
            );
            let (q, k, v, gate, up) = if flavour == Flavour::Phi3 {
                let qkv = at.pp("qkv_proj").get((q_out + 2 * kv_out, h), "weight")?;
                let gate_up = mlp.pp("gate_up_proj").get((2 * im, h), "weight")?;
                let part = |w: &Tensor, from: usize, n: usize| -> Result<Linear> {
                    Ok(Linear::new(w.narrow(0, from, n)?.contiguous()?, None))
                };
                (
                    part(&qkv, 0, q_out)?,
                    part(&qkv, q_out, kv_out)?,
                    part(&qkv, q_out + kv_out, kv_out)?,
                    part(&gate_up, 0, im)?,
                    part(&gate_up, im, im)?,
                )
            } else {
                (
                    linear(at.pp("q_proj"), h, q_out)?,
                    linear(at.pp("k_proj"), h, kv_out)?,
                    linear(at.pp("v_proj"), h, kv_out)?,
                    linear(mlp.pp("gate_proj"), h, im)?,
                    linear(mlp.pp("up_proj"), h, im)?,
                )
            };
            layers.push(Layer {
                q,
                k,
                v,
                o: linear(at.pp("o_proj"), q_out, h)?,
                gate,
                up,
                down: linear(mlp.pp("down_proj"), im, h)?,
                input_norm: norm("input_layernorm")?,
                post_attn_norm: norm("post_attention_layernorm")?,
                pre_mlp_norm: gemma
                    .then(|| norm("pre_feedforward_layernorm"))
                    .transpose()?,
                post_mlp_norm: gemma
                    .then(|| norm("post_feedforward_layernorm"))
                    .transpose()?,
                // Gemma 2 alternates: even layers local (sliding), odd layers global.
                window: match flavour {
                    Flavour::Mistral | Flavour::Phi3 => cfg.sliding_window,
                    Flavour::Gemma2 if i % 2 == 0 => cfg.sliding_window,
                    Flavour::Gemma2 => None,
                },
                cache: None,
            });
        }
        let norm = Norm::load(vb.pp("model.norm"), h, eps, flavour)?;
        let lm_head = if cfg.tie_word_embeddings || flavour == Flavour::Gemma2 {
            Linear::new(embed_w, None)
        } else {
            linear(vb.pp("lm_head"), h, cfg.vocab_size)?
        };
        let (cos, sin) = rope_tables(
            head_dim,
            cfg.rope_theta,
            cfg.max_position_embeddings,
            dtype,
            device,
        )?;
        Ok(Windowed {
            flavour,
            head_dim,
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            act: match flavour {
                Flavour::Mistral | Flavour::Phi3 => Activation::Silu,
                Flavour::Gemma2 => Activation::GeluPytorchTanh,
            },
            device: device.clone(),
            dtype,
            cfg,
        })
    }

    fn attention(&mut self, li: usize, x: &Tensor, pos: usize) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.head_dim,
        );
        let layer = &mut self.layers[li];
        let shape = |x: Tensor, n: usize| -> Result<Tensor> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = shape(layer.q.forward(x)?, nh)?;
        let k = shape(layer.k.forward(x)?, nkv)?;
        let v = shape(layer.v.forward(x)?, nkv)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
        let (k, v) = match &layer.cache {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        layer.cache = Some((k.clone(), v.clone()));
        let total = pos + t;
        // Keys older than the window can never be seen again by this or any later query.
        let (k, v, first_key) = match layer.window {
            Some(w) if total > w + t => {
                let keep = w + t - 1;
                (
                    k.narrow(2, total - keep, keep)?,
                    v.narrow(2, total - keep, keep)?,
                    total - keep,
                )
            }
            _ => (k, v, 0),
        };
        let rep = nh / nkv;
        let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
        let scale = match (self.flavour, self.cfg.query_pre_attn_scalar) {
            (Flavour::Gemma2, Some(s)) => 1.0 / (s as f64).sqrt(),
            _ => 1.0 / (hd as f64).sqrt(),
        };
        let mut scores = (q.matmul(&k.t()?)? * scale)?;
        if let Some(cap) = self.cfg.attn_logit_softcapping {
            scores = ((scores / cap)?.tanh()? * cap)?;
        }
        let keys = k.dim(2)?;
        let mask = attention_mask(t, pos, first_key, keys, layer.window, &self.device)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(&mask.to_dtype(scores.dtype())?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?
            .to_dtype(self.dtype)?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        Ok(layer.o.forward(&out)?)
    }

    fn run(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed.forward(&input)?;
        if self.flavour == Flavour::Gemma2 {
            x = (x * (self.cfg.hidden_size as f64).sqrt())?;
        }
        for li in 0..self.layers.len() {
            let h = self.layers[li].input_norm.forward(&x)?;
            let a = self.attention(li, &h, pos)?;
            let layer = &self.layers[li];
            x = match self.flavour {
                Flavour::Mistral | Flavour::Phi3 => {
                    let x = (x + a)?;
                    let h = layer.post_attn_norm.forward(&x)?;
                    let m = mlp(layer, &h, self.act)?;
                    (x + m)?
                }
                Flavour::Gemma2 => {
                    let x = (x + layer.post_attn_norm.forward(&a)?)?;
                    let h = layer.pre_mlp_norm.as_ref().context("norm")?.forward(&x)?;
                    let m = mlp(layer, &h, self.act)?;
                    (x + layer.post_mlp_norm.as_ref().context("norm")?.forward(&m)?)?
                }
            };
        }
        let t = tokens.len();
        let last = x.narrow(1, t - 1, 1)?;
        let mut logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        Ok(logits)
    }
}

fn mlp(layer: &Layer, x: &Tensor, act: Activation) -> Result<Tensor> {
    let g = layer.gate.forward(x)?.apply(&act)?;
    let u = layer.up.forward(x)?;
    Ok(layer.down.forward(&(g * u)?)?)
}

/// Additive mask for `t` queries at positions pos.. against `keys` keys starting at position
/// `first_key`: a query at i sees a key at j when j <= i and, with a window w, i - j < w.
fn attention_mask(
    t: usize,
    pos: usize,
    first_key: usize,
    keys: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let visible = |i: usize, j: usize| j <= i && window.is_none_or(|w| i - j < w);
    let all_visible = (0..t).all(|qi| (0..keys).all(|kj| visible(pos + qi, first_key + kj)));
    if all_visible {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
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
    Ok(Some(Tensor::from_vec(mask, (1, 1, t, keys), device)?))
}

fn rope_tables(
    head_dim: usize,
    theta: f64,
    max_pos: usize,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / theta.powf(i as f64 / head_dim as f64) as f32)
        .collect();
    let n = inv.len();
    let inv = Tensor::from_vec(inv, (1, n), device)?;
    let t = Tensor::arange(0u32, max_pos as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((max_pos, 1))?;
    let freqs = t.matmul(&inv)?;
    Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
}

impl Model for Windowed {
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>> {
        if pos + tokens.len() > self.cfg.max_position_embeddings {
            anyhow::bail!(
                "position {} is past the model's {} positions",
                pos + tokens.len(),
                self.cfg.max_position_embeddings
            );
        }
        let logits = self.run(tokens, pos)?;
        Ok(logits
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?)
    }

    fn reset(&mut self) -> Result<()> {
        for l in &mut self.layers {
            l.cache = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_hides_keys_window_or_more_positions_back() {
        let m = attention_mask(1, 10, 0, 11, Some(4), &Device::Cpu)
            .unwrap()
            .unwrap();
        let row: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let visible: Vec<usize> = (0..11).filter(|&j| row[j] == 0.0).collect();
        assert_eq!(visible, [7, 8, 9, 10]);
        assert!(attention_mask(1, 10, 0, 11, None, &Device::Cpu)
            .unwrap()
            .is_none());
    }
}
