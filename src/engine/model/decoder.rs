//! owrun's transformer decoder: one implementation for every family, steered by an [`Arch`].
//!
//! A forward takes a batch of sequences, each with its own KV cache and new tokens. The tokens
//! of all sequences go through the embedding, the projections and the MLPs together (one matmul
//! reads each weight once for the whole batch); attention runs per sequence against its cache.
//! Following transformers' modeling code: RMSNorm (with Gemma's 1 + w gains), rotary embeddings
//! (see `rope`), grouped-query attention without copying keys per head group, sliding windows
//! (a query at i sees keys j with i - window < j <= i), soft-capping, Mixtral's top-k routing.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::arch::{Activation, Arch};
use super::attention::{attend, Scores};
use super::flash::{self, Queries};
use super::kv::{KvCache, KvType};
use super::linear::{Linear, Matrix};
use super::lora::Selection;
use super::weights::Weights;
use crate::engine::quantize::Role;

enum Projections {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    /// Phi-3's qkv_proj: rows q, then k, then v.
    Fused(Linear),
}

struct Mlp {
    /// gate and up as one fused matrix (Phi-3), or separately.
    gate_up: Option<Linear>,
    gate: Option<Linear>,
    up: Option<Linear>,
    down: Linear,
}

enum FeedForward {
    Dense(Mlp),
    /// Mixtral, Qwen3-MoE: a router and experts, `top_k` of which see each token, their
    /// weights renormalised to sum to one where `normalize`.
    Experts {
        router: Linear,
        experts: Vec<Mlp>,
        top_k: usize,
        normalize: bool,
    },
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    pre_feedforward_norm: Option<Tensor>,
    post_feedforward_norm: Option<Tensor>,
    projections: Projections,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    o: Linear,
    feed_forward: FeedForward,
}

pub struct Decoder {
    pub arch: Arch,
    embed: Matrix,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    /// The dtype activations (and a GPU's KV cache) are kept in.
    pub act_dtype: DType,
    /// How the KV cache stores keys and values on the CPU.
    pub kv_type: KvType,
    pub device: Device,
    /// Bytes of weights held.
    pub weight_bytes: usize,
    /// The LoRA adapters its layers carry (their files), in the order of a segment's `lora`.
    pub adapters: Vec<String>,
}

/// The linear layer `name` (`.weight`, optional `.bias`), counting its bytes.
fn linear(
    w: &mut Weights,
    bytes: &mut usize,
    name: &str,
    out: usize,
    inp: usize,
    role: Role,
) -> Result<Linear> {
    let weight = w.matrix(&format!("{name}.weight"), &[out, inp], role)?;
    *bytes += weight.bytes();
    let bias = w.optional_vector(&format!("{name}.bias"), out, false)?;
    let lora = w.lora(name, out, inp)?;
    Ok(Linear::new(weight, bias).with_lora(lora))
}

/// One sequence's part of a batched forward.
pub struct Segment<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Logits after every token (quality measurements), not just after the last.
    pub all_logits: bool,
    /// Where the caller's whole forward ends (past this chunk when a prompt is fed in chunks).
    pub reach: usize,
    /// How strongly each of the model's adapters applies to this sequence (empty: each at 1).
    pub lora: &'a [f32],
}

impl Decoder {
    pub fn load(arch: Arch, w: &mut Weights, act_dtype: DType, device: &Device) -> Result<Decoder> {
        let a = &arch;
        let (h, hd, im) = (a.hidden, a.head_dim, a.intermediate);
        let (q_out, kv_out) = (a.heads * hd, a.kv_heads * hd);
        let plus_one = a.norm_plus_one;
        let mut weight_bytes = 0;
        let tied = a.tied_embeddings || !w.contains("lm_head.weight");
        // A tied embedding table is also the output matrix, and quantized as one.
        let embed_role = if tied { Role::Output } else { Role::Embedding };
        let embed = w.matrix("model.embed_tokens.weight", &[a.vocab_size, h], embed_role)?;
        weight_bytes += embed.bytes();
        let mut layers = Vec::with_capacity(a.layers.len());
        for i in 0..a.layers.len() {
            let p = format!("model.layers.{i}");
            let (other, down) = (Role::Other, Role::FfnDown { layer: i });
            let projections = if a.fused_projections {
                Projections::Fused(linear(
                    w,
                    &mut weight_bytes,
                    &format!("{p}.self_attn.qkv_proj"),
                    q_out + 2 * kv_out,
                    h,
                    other,
                )?)
            } else {
                Projections::Separate {
                    q: linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.self_attn.q_proj"),
                        q_out,
                        h,
                        other,
                    )?,
                    k: linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.self_attn.k_proj"),
                        kv_out,
                        h,
                        other,
                    )?,
                    v: linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.self_attn.v_proj"),
                        kv_out,
                        h,
                        Role::AttnV { layer: i },
                    )?,
                }
            };
            let feed_forward = match &a.moe {
                Some(moe) if moe.sparse[i] => {
                    let (e, [gate, up, down_name]) = if moe.qwen_names {
                        (format!("{p}.mlp"), ["gate_proj", "up_proj", "down_proj"])
                    } else {
                        (format!("{p}.block_sparse_moe"), ["w1", "w3", "w2"])
                    };
                    let n = moe.experts;
                    let eim = moe.intermediate;
                    let router = linear(
                        w,
                        &mut weight_bytes,
                        &format!("{e}.gate"),
                        n,
                        h,
                        Role::Router,
                    )?;
                    let experts = (0..n)
                        .map(|x| {
                            Ok(Mlp {
                                gate_up: None,
                                gate: Some(linear(
                                    w,
                                    &mut weight_bytes,
                                    &format!("{e}.experts.{x}.{gate}"),
                                    eim,
                                    h,
                                    other,
                                )?),
                                up: Some(linear(
                                    w,
                                    &mut weight_bytes,
                                    &format!("{e}.experts.{x}.{up}"),
                                    eim,
                                    h,
                                    other,
                                )?),
                                down: linear(
                                    w,
                                    &mut weight_bytes,
                                    &format!("{e}.experts.{x}.{down_name}"),
                                    h,
                                    eim,
                                    down,
                                )?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    FeedForward::Experts {
                        router,
                        experts,
                        top_k: moe.top_k,
                        normalize: moe.normalize,
                    }
                }
                _ if a.fused_projections => FeedForward::Dense(Mlp {
                    gate_up: Some(linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.mlp.gate_up_proj"),
                        2 * im,
                        h,
                        other,
                    )?),
                    gate: None,
                    up: None,
                    down: linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.mlp.down_proj"),
                        h,
                        im,
                        down,
                    )?,
                }),
                _ => FeedForward::Dense(Mlp {
                    gate_up: None,
                    gate: Some(linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.mlp.gate_proj"),
                        im,
                        h,
                        other,
                    )?),
                    up: Some(linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.mlp.up_proj"),
                        im,
                        h,
                        other,
                    )?),
                    down: linear(
                        w,
                        &mut weight_bytes,
                        &format!("{p}.mlp.down_proj"),
                        h,
                        im,
                        down,
                    )?,
                }),
            };
            let o = linear(
                w,
                &mut weight_bytes,
                &format!("{p}.self_attn.o_proj"),
                h,
                q_out,
                other,
            )?;
            let mut norm = |n: &str| w.vector(&format!("{p}.{n}.weight"), h, plus_one);
            let input_norm = norm("input_layernorm")?;
            let post_attention_norm = norm("post_attention_layernorm")?;
            let (pre_feedforward_norm, post_feedforward_norm) = if a.sandwich_norms {
                (
                    Some(norm("pre_feedforward_layernorm")?),
                    Some(norm("post_feedforward_layernorm")?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm,
                post_attention_norm,
                pre_feedforward_norm,
                post_feedforward_norm,
                projections,
                q_norm: w.optional_vector(&format!("{p}.self_attn.q_norm.weight"), hd, plus_one)?,
                k_norm: w.optional_vector(&format!("{p}.self_attn.k_norm.weight"), hd, plus_one)?,
                o,
                feed_forward,
            });
        }
        let lm_head = if tied {
            Linear::new(Matrix::clone(&embed), None)
        } else {
            linear(
                w,
                &mut weight_bytes,
                "lm_head",
                a.vocab_size,
                h,
                Role::Output,
            )?
        };
        let norm = w.vector("model.norm.weight", h, plus_one)?;
        Ok(Decoder {
            arch,
            embed,
            layers,
            norm,
            lm_head,
            act_dtype,
            kv_type: KvType::default(),
            device: device.clone(),
            weight_bytes,
            adapters: w.adapter_sources(),
        })
    }

    /// A new, empty KV cache for one sequence of at most `max_len` tokens.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        let a = &self.arch;
        if self.device.is_cpu() {
            KvCache::cpu(&a.windows(), a.kv_heads, a.head_dim, max_len, self.kv_type)
        } else {
            KvCache::device(
                self.layers.len(),
                a.kv_heads,
                a.head_dim,
                max_len,
                self.act_dtype,
                &self.device,
            )
        }
    }

    fn rms_norm(&self, x: &Tensor, gain: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            &x.contiguous()?,
            gain,
            self.arch.norm_eps as f32,
        )?)
    }

    /// Run every segment's new tokens and return logits (f32) rows, segment after segment: one
    /// row (after its last token) per segment, or one per token for `all_logits` segments. Each
    /// cache grows by its segment's tokens.
    pub fn forward(&self, batch: &mut [Segment]) -> Result<Vec<Vec<f32>>> {
        let mut ids = Vec::new();
        let mut starts = Vec::with_capacity(batch.len());
        for seg in batch.iter_mut() {
            anyhow::ensure!(!seg.tokens.is_empty(), "a forward over no tokens");
            seg.cache.reserve(seg.tokens.len())?;
            starts.push(ids.len());
            ids.extend_from_slice(seg.tokens);
        }
        let vocab = self.arch.vocab_size as u32;
        if let Some(bad) = ids.iter().find(|&&t| t >= vocab) {
            anyhow::bail!("token id {bad} is outside the model's vocabulary of {vocab}");
        }
        let rows: Vec<(usize, &[f32])> = batch.iter().map(|s| (s.tokens.len(), s.lora)).collect();
        let sel = Selection::for_batch(&rows, self.adapters.len());
        let ids_t = Tensor::new(ids.as_slice(), &self.device)?;
        let mut x = self.embed.rows_of(&ids_t, self.act_dtype)?;
        if let Some(scale) = self.arch.embed_scale {
            x = (x * scale)?;
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let h = self.rms_norm(&x, &layer.input_norm)?;
            let a = self.attention(li, layer, &h, batch, &starts, &sel)?;
            x = if self.arch.sandwich_norms {
                let x = (x + self.rms_norm(&a, &layer.post_attention_norm)?)?;
                let pre = layer.pre_feedforward_norm.as_ref().context("norm")?;
                let m = self.feed_forward(&layer.feed_forward, &self.rms_norm(&x, pre)?, &sel)?;
                let post = layer.post_feedforward_norm.as_ref().context("norm")?;
                (x + self.rms_norm(&m, post)?)?
            } else {
                let x = (x + a)?;
                let m = self.feed_forward(
                    &layer.feed_forward,
                    &self.rms_norm(&x, &layer.post_attention_norm)?,
                    &sel,
                )?;
                (x + m)?
            };
        }
        let last: Vec<u32> = batch
            .iter()
            .zip(&starts)
            .flat_map(|(seg, &s)| {
                let end = s + seg.tokens.len();
                let first = if seg.all_logits { s } else { end - 1 };
                (first as u32)..(end as u32)
            })
            .collect();
        let last = Tensor::new(last.as_slice(), &self.device)?;
        let x = self.rms_norm(&x.index_select(&last, 0)?, &self.norm)?;
        let mut logits = self.lm_head.forward(&x)?;
        if let Some(cap) = self.arch.final_softcap {
            logits = ((logits / cap)?.tanh()? * cap)?;
        }
        for seg in batch.iter_mut() {
            seg.cache.advance(seg.tokens.len());
        }
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        x: &Tensor,
        batch: &mut [Segment],
        starts: &[usize],
        sel: &Selection,
    ) -> Result<Tensor> {
        let a = &self.arch;
        let (nh, nkv, hd) = (a.heads, a.kv_heads, a.head_dim);
        let (q, k, v) = match &layer.projections {
            Projections::Separate { q, k, v } => (
                q.forward_with(x, sel)?,
                k.forward_with(x, sel)?,
                v.forward_with(x, sel)?,
            ),
            Projections::Fused(qkv) => {
                let y = qkv.forward_with(x, sel)?;
                (
                    y.narrow(1, 0, nh * hd)?,
                    y.narrow(1, nh * hd, nkv * hd)?,
                    y.narrow(1, (nh + nkv) * hd, nkv * hd)?,
                )
            }
        };
        let info = &a.layers[li];
        let rope = &a.ropes[info.rope];
        let mut outputs = Vec::with_capacity(batch.len());
        for (seg, &start) in batch.iter_mut().zip(starts) {
            let t = seg.tokens.len();
            let pos = seg.cache.len();
            // t × n × hd rows, as the CPU cache stores them and the streaming attention reads.
            let rows = |x: &Tensor, n: usize, norm: &Option<Tensor>| -> Result<Tensor> {
                let x = x.narrow(0, start, t)?.reshape((1, t, n, hd))?;
                let x = match norm {
                    Some(g) => self.rms_norm(&x, g)?,
                    None => x.contiguous()?,
                };
                Ok(rope.apply(&x, pos, seg.reach)?.squeeze(0)?)
            };
            let scores = Scores {
                scale: a.attention_scale,
                softcap: a.attention_softcap,
                window: info.window,
            };
            let out = if seg.cache.on_cpu() {
                let qs = rows(&q, nh, &layer.q_norm)?;
                let ks = rows(&k, nkv, &layer.k_norm)?;
                let vs = v.narrow(0, start, t)?.contiguous()?;
                seg.cache.write(li, &ks, &vs)?;
                let qs = qs.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let queries = Queries {
                    q: &qs,
                    t,
                    pos,
                    heads: nh,
                    head_dim: hd,
                };
                let out = flash::attend(&queries, &seg.cache.view(li)?, &scores);
                Tensor::from_vec(out, (t, nh * hd), &self.device)?.to_dtype(self.act_dtype)?
            } else {
                // n × t × hd: the tensor attention's layout.
                let heads = |x: Tensor| x.transpose(0, 1)?.contiguous();
                let qs = heads(rows(&q, nh, &layer.q_norm)?)?;
                let ks = heads(rows(&k, nkv, &layer.k_norm)?)?;
                let vs = v
                    .narrow(0, start, t)?
                    .reshape((t, nkv, hd))?
                    .transpose(0, 1)?
                    .contiguous()?;
                seg.cache.write(li, &ks, &vs)?;
                let first_key = info.window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let (keys, values) = seg.cache.read(li, first_key, pos + t)?;
                let (keys, values) = (keys.contiguous()?, values.contiguous()?);
                attend(&qs, &keys, &values, pos, first_key, &scores, self.act_dtype)?
            };
            outputs.push(out);
        }
        let out = if outputs.len() == 1 {
            outputs.pop().context("one output")?
        } else {
            Tensor::cat(&outputs, 0)?
        };
        layer.o.forward_with(&out, sel)
    }

    fn mlp(&self, m: &Mlp, x: &Tensor, sel: &Selection) -> Result<Tensor> {
        let (gate, up) = match (&m.gate_up, &m.gate, &m.up) {
            (Some(gu), _, _) => {
                let y = gu.forward_with(x, sel)?;
                let n = y.dim(1)? / 2;
                (y.narrow(1, 0, n)?, y.narrow(1, n, n)?)
            }
            (None, Some(g), Some(u)) => (g.forward_with(x, sel)?, u.forward_with(x, sel)?),
            _ => anyhow::bail!("an MLP without gate or up projection"),
        };
        let gate = match self.arch.activation {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
        };
        m.down.forward_with(&(gate * up)?, sel)
    }

    fn feed_forward(&self, ff: &FeedForward, x: &Tensor, sel: &Selection) -> Result<Tensor> {
        let (router, experts, top_k, normalize) = match ff {
            FeedForward::Dense(m) => return self.mlp(m, x, sel),
            FeedForward::Experts {
                router,
                experts,
                top_k,
                normalize,
            } => (router, experts, *top_k, *normalize),
        };
        // Routing as transformers' Mixtral and Qwen3-MoE: softmax over all experts, keep the
        // top k, renormalise their weights to sum to one (Mixtral; Qwen's norm_topk_prob).
        let logits = router.forward(x)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); experts.len()];
        for (r, l) in logits.iter().enumerate() {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let p: Vec<f32> = l.iter().map(|v| (v - max).exp()).collect();
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
            let chosen = &order[..top_k.min(order.len())];
            let sum: f32 = if normalize {
                chosen.iter().map(|&e| p[e]).sum()
            } else {
                p.iter().sum()
            };
            for &e in chosen {
                rows[e].push(r as u32);
                weights[e].push(p[e] / sum);
            }
        }
        let mut out = x.zeros_like()?;
        for (e, expert) in experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let idx = Tensor::new(rows[e].as_slice(), &self.device)?;
            let w = Tensor::from_vec(weights[e].clone(), (n, 1), &self.device)?
                .to_dtype(self.act_dtype)?;
            let y = self
                .mlp(expert, &x.index_select(&idx, 0)?, &sel.subset(&idx)?)?
                .broadcast_mul(&w)?;
            out = out.index_add(&idx, &y, 0)?;
        }
        Ok(out)
    }
}
