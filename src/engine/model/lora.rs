//! LoRA adapters applied at run time, beside the base weights: a linear layer computes
//! W·x + Σ scale · B·(A·x) over its adapters. The base matrix is neither copied nor changed, so
//! it keeps its type (16-bit, GGML blocks) and its kernels; the adapters' matrices are small
//! (rank × in and out × rank) and kept as stored: f32, or 16-bit (f16, bf16), which halves the
//! bytes a decode step reads for them.
//!
//! Or merged (`--lora-merge`, `owrun quantize --lora`): folded into the weights as they are
//! loaded, W' = W + Σ scale · B·A (see [`Adapters::delta`] and [`merge`]), after which the layer
//! runs as a plain one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::arch::Arch;
use super::kernels;
use crate::engine::format::gguf;
use crate::engine::format::lora::{Adapter, BaseHeads, LoraPair, Stored};

/// An adapter that does not fit the model (or cannot be read): the user's to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unfit(pub String);

/// One adapter's part of one linear layer.
pub struct Lora {
    /// Which of the model's adapters this is part of.
    adapter: usize,
    rank: usize,
    /// The adapter's scale (alpha / r and the user's multiplier).
    scale: f32,
    /// Its matrices in the precision they were stored in, where owrun's kernels compute the
    /// term (the CPU).
    factors: Factors,
    /// Aᵀ (in × rank, scaled) and Bᵀ as f32 tensors, where candle computes the term (a GPU).
    tensors: Option<(Tensor, Tensor)>,
}

/// A (rank × in) and Bᵀ (rank × out).
struct Pair<W> {
    a: Vec<W>,
    bt: Vec<W>,
}

enum Factors {
    F32(Pair<f32>),
    F16(Pair<f16>),
    Bf16(Pair<bf16>),
}

impl Lora {
    fn new(adapter: usize, p: &LoraPair, device: &Device) -> Result<Lora> {
        let mut bt = vec![0f32; p.rank * p.outputs];
        for o in 0..p.outputs {
            for r in 0..p.rank {
                bt[r * p.outputs + o] = p.b[o * p.rank + r];
            }
        }
        let tensors = if device.is_cpu() {
            None
        } else {
            let a: Vec<f32> = p.a.iter().map(|v| v * p.scale).collect();
            let a_t = Tensor::from_vec(a, (p.rank, p.inputs), device)?
                .t()?
                .contiguous()?;
            Some((a_t, Tensor::from_slice(&bt, (p.rank, p.outputs), device)?))
        };
        // 16-bit values, widened when they were read, narrow back exactly.
        fn narrow<T>(v: &[f32], to: fn(f32) -> T) -> Vec<T> {
            v.iter().map(|&v| to(v)).collect()
        }
        let factors = match p.stored {
            Stored::F32 => Factors::F32(Pair { a: p.a.clone(), bt }),
            Stored::F16 => Factors::F16(Pair {
                a: narrow(&p.a, f16::from_f32),
                bt: narrow(&bt, f16::from_f32),
            }),
            Stored::Bf16 => Factors::Bf16(Pair {
                a: narrow(&p.a, bf16::from_f32),
                bt: narrow(&bt, bf16::from_f32),
            }),
        };
        Ok(Lora {
            adapter,
            rank: p.rank,
            scale: p.scale,
            factors,
            tensors,
        })
    }

    /// `y` (rows × out, the base layer's output for `x`, rows × in) plus this adapter's term,
    /// on the rows `selection` gives it. On the CPU, a few rows (decoding) are added into `y` in
    /// place by owrun's kernel; more (a prompt) go through two f32 matrix products, which
    /// reach several times the kernel's arithmetic rate on these thin shapes.
    pub fn add_to(&self, x: &Tensor, y: Tensor, selection: &Selection) -> Result<Tensor> {
        let rows = selection.of(self.adapter);
        if let Rows::Skip = rows {
            return Ok(y);
        }
        let widened;
        let (a_t, bt, scale) = match &self.tensors {
            Some((a_t, bt)) => (a_t, bt, 1.0),
            None if x.dim(0)? < PRODUCT_ROWS => {
                let (x, y) = (x.contiguous()?, y.contiguous()?);
                if x.dtype() == DType::F32 && y.dtype() == DType::F32 {
                    y.inplace_op2(&x, &AddTerm { lora: self, rows })?;
                    return Ok(y);
                }
                let term = AddTerm { lora: self, rows };
                let wide = y.to_dtype(DType::F32)?;
                wide.inplace_op2(&x.to_dtype(DType::F32)?, &term)?;
                return Ok(wide.to_dtype(y.dtype())?);
            }
            // Widened for this call: a few hundred kilobytes, against a prompt's worth of work.
            None => {
                widened = self.factors.widened(self.rank, x.device())?;
                (&widened.0, &widened.1, self.scale as f64)
            }
        };
        let low = x.to_dtype(DType::F32)?.matmul(a_t)?;
        let low = match rows {
            Rows::Uniform(m) => (low * (m * scale))?,
            Rows::PerRow(m) => {
                let m: Vec<f32> = m.iter().map(|m| m * scale as f32).collect();
                low.broadcast_mul(&Tensor::from_vec(m, (low.dim(0)?, 1), x.device())?)?
            }
            Rows::Skip => return Ok(y),
        };
        Ok((y + low.matmul(bt)?.to_dtype(x.dtype())?)?)
    }
}

/// Rows from which the CPU computes the term as two matrix products rather than row by row.
const PRODUCT_ROWS: usize = 16;

impl Factors {
    /// Aᵀ (in × rank) and Bᵀ (rank × out) in f32, on `device`.
    fn widened(&self, rank: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        fn wide<W: Copy + Into<f32>>(p: &Pair<W>) -> (Vec<f32>, Vec<f32>) {
            let f32s = |v: &[W]| v.iter().map(|&v| v.into()).collect();
            (f32s(&p.a), f32s(&p.bt))
        }
        let (a, bt) = match self {
            Factors::F32(p) => (p.a.clone(), p.bt.clone()),
            Factors::F16(p) => wide(p),
            Factors::Bf16(p) => wide(p),
        };
        let (inputs, outputs) = (a.len() / rank, bt.len() / rank);
        Ok((
            Tensor::from_vec(a, (rank, inputs), device)?.t()?,
            Tensor::from_vec(bt, (rank, outputs), device)?,
        ))
    }
}

/// The in-place addition of one adapter's term, as candle runs custom operations.
struct AddTerm<'l> {
    lora: &'l Lora,
    rows: &'l Rows,
}

impl candle_core::InplaceOp2 for AddTerm<'_> {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn cpu_fwd(
        &self,
        y: &mut candle_core::CpuStorage,
        y_layout: &candle_core::Layout,
        x: &candle_core::CpuStorage,
        x_layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::CpuStorage::F32;
        let (F32(y), F32(x)) = (y, x) else {
            candle_core::bail!("the LoRA term is computed in f32");
        };
        let (Some((y0, y1)), Some((x0, x1))) =
            (y_layout.contiguous_offsets(), x_layout.contiguous_offsets())
        else {
            candle_core::bail!("the LoRA term needs contiguous rows");
        };
        let (y, x) = (&mut y[y0..y1], &x[x0..x1]);
        let n = y_layout.dims()[0];
        let l = self.lora;
        let scales: Vec<f32> = match self.rows {
            Rows::PerRow(m) => m.iter().map(|m| m * l.scale).collect(),
            Rows::Uniform(m) => vec![(*m * l.scale as f64) as f32; n],
            Rows::Skip => return Ok(()),
        };
        if scales.len() != n {
            candle_core::bail!("{} row multipliers for {n} rows", scales.len());
        }
        match &l.factors {
            Factors::F32(p) => kernels::add_low_rank(y, x, &p.a, &p.bt, l.rank, &scales),
            Factors::F16(p) => kernels::add_low_rank(y, x, &p.a, &p.bt, l.rank, &scales),
            Factors::Bf16(p) => kernels::add_low_rank(y, x, &p.a, &p.bt, l.rank, &scales),
        }
        Ok(())
    }
}

/// How strongly each adapter applies to each row of one forward: run and chat apply every
/// adapter to every row; the server gives each sequence its own (a request's `lora`), so one
/// batch mixes sequences with different adapters and none.
#[derive(Default)]
pub struct Selection {
    /// By adapter; an adapter past the end is skipped.
    rows: Vec<Rows>,
}

enum Rows {
    Skip,
    /// Every row, times this.
    Uniform(f64),
    /// Each row its own multiplier.
    PerRow(Vec<f32>),
}

impl Selection {
    /// No adapter on any row (layers that have none).
    pub fn none() -> Selection {
        Selection::default()
    }

    /// The selection of a batch of `segments`, each (its rows, its multipliers by adapter; an
    /// empty list: every adapter at 1), for a model of `adapters` adapters.
    pub fn for_batch(segments: &[(usize, &[f32])], adapters: usize) -> Selection {
        let multiplier = |lora: &[f32], i: usize| {
            if lora.is_empty() {
                1.0
            } else {
                lora.get(i).copied().unwrap_or(0.0)
            }
        };
        let rows = (0..adapters)
            .map(|i| {
                let first = segments.first().map_or(0.0, |(_, l)| multiplier(l, i));
                if segments.iter().all(|(_, l)| multiplier(l, i) == first) {
                    return if first == 0.0 {
                        Rows::Skip
                    } else {
                        Rows::Uniform(first as f64)
                    };
                }
                Rows::PerRow(
                    segments
                        .iter()
                        .flat_map(|&(n, l)| std::iter::repeat_n(multiplier(l, i), n))
                        .collect(),
                )
            })
            .collect();
        Selection { rows }
    }

    /// The selection of the rows `index` picks (a mixture-of-experts expert's tokens).
    pub fn subset(&self, index: &Tensor) -> Result<Selection> {
        let picked = index.to_vec1::<u32>()?;
        let rows = self
            .rows
            .iter()
            .map(|r| {
                Ok(match r {
                    Rows::Skip => Rows::Skip,
                    Rows::Uniform(m) => Rows::Uniform(*m),
                    Rows::PerRow(m) => {
                        Rows::PerRow(picked.iter().map(|&r| m[r as usize]).collect())
                    }
                })
            })
            .collect::<Result<_>>()?;
        Ok(Selection { rows })
    }

    fn of(&self, adapter: usize) -> &Rows {
        self.rows.get(adapter).unwrap_or(&Rows::Skip)
    }
}

/// Read the LoRA adapters `specs` names (path, multiplier), to run beside the weights or to
/// be merged into them (`merge`). An adapter converted for another architecture is refused
/// here; one trained on a base of another name is said in the notes (fine-tunes of one base
/// often carry another name). Errors are the user's to fix ([`Unfit`]). None: no adapters.
pub fn open(
    specs: &[(PathBuf, f32)],
    merge: bool,
    arch: &Arch,
    model_type: &str,
    model_path: &Path,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<Option<Adapters>> {
    if specs.is_empty() {
        return Ok(None);
    }
    let heads = BaseHeads {
        heads: arch.heads,
        kv_heads: arch.kv_heads,
    };
    let ours = gguf::gguf_architecture(model_type);
    let mut list = Vec::new();
    for (path, scale) in specs {
        let adapter =
            Adapter::open(path, *scale, heads).map_err(|e| Unfit(format!("--lora: {e:#}")))?;
        if let (Some(theirs), Some(ours)) = (adapter.architecture.as_deref(), ours) {
            if theirs != ours {
                bail!(Unfit(format!(
                    "--lora: {} is an adapter for {theirs} models; this model is {ours}",
                    path.display()
                )));
            }
        }
        let rank = adapter.layers.values().map(|p| p.rank).max().unwrap_or(0);
        let mut note = format!(
            "LoRA adapter {}: {} layers, rank {rank}, scale x{scale}",
            path.display(),
            adapter.layers.len()
        );
        if let Some(license) = &adapter.license {
            note.push_str(&format!(", license {license} (the base's applies too)"));
        }
        if let Some(base) = &adapter.base_model {
            if !names_same_model(base, model_path) {
                note.push_str(&format!(
                    "; it was trained on {base}, which is not this model's name (a different \
                     base gives wrong output)"
                ));
            }
        }
        notes.push(note);
        list.push(adapter);
    }
    Ok(Some(Adapters::new(list, device, merge)))
}

/// Whether an adapter's base name (`owner/name`, a path) names the model at `path`: its last
/// part matches the model's folder or file name, or the `models--owner--name` folder of the
/// Hugging Face cache above it (case aside).
fn names_same_model(base: &str, path: &Path) -> bool {
    let base = base.trim_end_matches('/');
    let short = base.rsplit('/').next().unwrap_or(base).to_lowercase();
    if short.is_empty() {
        return true;
    }
    path.ancestors().filter_map(|p| p.file_name()).any(|n| {
        let n = n.to_string_lossy().to_lowercase();
        let stem = n.strip_suffix(".gguf").unwrap_or(&n);
        stem == short
            || stem.starts_with(&format!("{short}."))
            || n.ends_with(&format!("--{short}"))
    })
}

/// The adapters a model loads with, handed out layer by layer as the decoder is built.
pub struct Adapters {
    list: Vec<Adapter>,
    /// (adapter, layer) pairs a layer of the model took.
    used: BTreeSet<(usize, String)>,
    /// The first layer whose shape differs from the adapter's.
    misfit: Option<String>,
    device: Device,
    /// Fold the adapters into the weights (`delta`) rather than run them beside (`take`).
    pub merge: bool,
}

impl Adapters {
    pub fn new(list: Vec<Adapter>, device: &Device, merge: bool) -> Adapters {
        Adapters {
            list,
            used: BTreeSet::new(),
            misfit: None,
            device: device.clone(),
            merge,
        }
    }

    /// Every adapter's part of the linear layer `name` (its Hugging Face name, without
    /// `.weight`), `outputs` × `inputs` in the model, to run beside it.
    pub fn take(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Vec<Lora>> {
        let device = self.device.clone();
        self.fitting(name, outputs, inputs)
            .into_iter()
            .map(|(i, p)| Lora::new(i, &p, &device))
            .collect()
    }

    /// What the adapters add to the weight of linear layer `name` (without `.weight`),
    /// Σ scale · B·A over them, `outputs` × `inputs` in f32 (None: no adapter adapts it).
    pub fn delta(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Option<Tensor>> {
        let device = self.device.clone();
        let mut sum: Option<Tensor> = None;
        for (_, p) in self.fitting(name, outputs, inputs) {
            let a = Tensor::from_slice(&p.a, (p.rank, p.inputs), &device)?;
            let b = Tensor::from_slice(&p.b, (p.outputs, p.rank), &device)?;
            let d = (b.matmul(&a)? * p.scale as f64)?;
            sum = Some(match sum {
                Some(s) => (s + d)?,
                None => d,
            });
        }
        Ok(sum)
    }

    /// The adapters' parts of layer `name` that fit `outputs` × `inputs`, marked used and taken
    /// out of the adapters as read (a layer takes its part once; the f32 copy read from the
    /// file goes as the layer's own is made, so the two are not all held at once). A part of
    /// another shape is left out and named by `check_all_used`.
    fn fitting(&mut self, name: &str, outputs: usize, inputs: usize) -> Vec<(usize, LoraPair)> {
        let mut parts = Vec::new();
        for (i, adapter) in self.list.iter_mut().enumerate() {
            let Some(p) = adapter.layers.get(name) else {
                continue;
            };
            if (p.outputs, p.inputs) != (outputs, inputs) {
                // Said by check_all_used, as the user's error it is, once the model is built.
                self.misfit.get_or_insert(format!(
                    "the LoRA adapter {} does not fit this model: its {name} maps {} inputs to \
                     {} outputs, the model's {inputs} to {outputs} (an adapter for another base?)",
                    adapter.source.display(),
                    p.inputs,
                    p.outputs
                ));
                continue;
            }
            if let Some(p) = adapter.layers.remove(name) {
                parts.push((i, p));
            }
            self.used.insert((i, name.to_string()));
        }
        parts
    }

    /// The adapters, as read.
    pub fn list(&self) -> &[Adapter] {
        &self.list
    }

    /// The adapters, in order (their positions are the multipliers' indices), by their files.
    pub fn sources(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|a| a.source.display().to_string())
            .collect()
    }

    /// Once the decoder is built: an adapter layer no layer of the model took is an error (an
    /// adapter for another architecture, or of parts owrun does not adapt).
    pub fn check_all_used(&self) -> Result<()> {
        if let Some(misfit) = &self.misfit {
            bail!(Unfit(misfit.clone()));
        }
        for (i, adapter) in self.list.iter().enumerate() {
            if let Some(name) = adapter
                .layers
                .keys()
                .find(|n| !self.used.contains(&(i, n.to_string())))
            {
                bail!(Unfit(format!(
                    "the LoRA adapter {} does not fit this model: it adapts {name}, which the \
                     model does not have (an adapter for another architecture?)",
                    adapter.source.display()
                )));
            }
        }
        Ok(())
    }
}

/// The weight `w` (outputs × inputs, any float dtype) with the adapters' `delta` (see
/// [`Adapters::delta`]) folded in: W + delta, computed in f32 and returned in f32 for the caller
/// to hold as it holds the layer (its dtype, or quantized to its block type).
pub fn merge(w: &Tensor, delta: &Tensor) -> Result<Tensor> {
    Ok((w.to_dtype(DType::F32)? + delta.to_device(w.device())?)?)
}
