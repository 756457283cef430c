//! LoRA adapters applied at run time, beside the base weights: a linear layer computes
//! W·x + Σ scale · B·(A·x) over its adapters. The base matrix is neither copied nor changed, so
//! it keeps its type (16-bit, GGML blocks) and its kernels; the adapters' matrices are small
//! (rank × in and out × rank) and kept in f32.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use crate::engine::format::lora::{Adapter, LoraPair};

/// One adapter's part of one linear layer.
pub struct Lora {
    /// Which of the model's adapters this is part of.
    adapter: usize,
    /// in × rank (Aᵀ).
    a_t: Tensor,
    /// rank × out (Bᵀ).
    b_t: Tensor,
    scale: f64,
}

impl Lora {
    fn new(adapter: usize, p: &LoraPair, device: &Device) -> Result<Lora> {
        let a = Tensor::from_slice(&p.a, (p.rank, p.inputs), device)?;
        let b = Tensor::from_slice(&p.b, (p.outputs, p.rank), device)?;
        Ok(Lora {
            adapter,
            a_t: a.t()?.contiguous()?,
            b_t: b.t()?.contiguous()?,
            scale: p.scale as f64,
        })
    }

    /// `y` (rows × out, the base layer's output for `x`, rows × in) plus this adapter's term,
    /// on the rows `selection` gives it.
    pub fn add_to(&self, x: &Tensor, y: Tensor, selection: &Selection) -> Result<Tensor> {
        let (rows, multiplier) = match selection.of(self.adapter) {
            Rows::Skip => return Ok(y),
            Rows::Uniform(m) => (None, *m),
            Rows::PerRow(m) => (Some(m), 1.0),
        };
        let low = x.to_dtype(DType::F32)?.matmul(&self.a_t)?;
        let mut delta = (low.matmul(&self.b_t)? * (self.scale * multiplier))?;
        if let Some(m) = rows {
            delta = delta.broadcast_mul(m)?;
        }
        let delta = delta.to_dtype(y.dtype())?;
        Ok((y + delta)?)
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
    /// Each row its own multiplier: rows × 1, f32.
    PerRow(Tensor),
}

impl Selection {
    /// No adapter on any row (layers that have none).
    pub fn none() -> Selection {
        Selection::default()
    }

    /// The selection of a batch of `segments`, each (its rows, its multipliers by adapter; an
    /// empty list: every adapter at 1), for a model of `adapters` adapters.
    pub fn for_batch(
        segments: &[(usize, &[f32])],
        adapters: usize,
        device: &Device,
    ) -> Result<Selection> {
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
                    return Ok(if first == 0.0 {
                        Rows::Skip
                    } else {
                        Rows::Uniform(first as f64)
                    });
                }
                let per_row: Vec<f32> = segments
                    .iter()
                    .flat_map(|&(n, l)| std::iter::repeat_n(multiplier(l, i), n))
                    .collect();
                let n = per_row.len();
                Ok(Rows::PerRow(Tensor::from_vec(per_row, (n, 1), device)?))
            })
            .collect::<Result<_>>()?;
        Ok(Selection { rows })
    }

    /// The selection of the rows `index` picks (a mixture-of-experts expert's tokens).
    pub fn subset(&self, index: &Tensor) -> Result<Selection> {
        let rows = self
            .rows
            .iter()
            .map(|r| {
                Ok(match r {
                    Rows::Skip => Rows::Skip,
                    Rows::Uniform(m) => Rows::Uniform(*m),
                    Rows::PerRow(t) => Rows::PerRow(t.index_select(index, 0)?),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Selection { rows })
    }

    fn of(&self, adapter: usize) -> &Rows {
        self.rows.get(adapter).unwrap_or(&Rows::Skip)
    }
}

/// The adapters a model loads with, handed out layer by layer as the decoder is built.
pub struct Adapters {
    list: Vec<Adapter>,
    /// (adapter, layer) pairs a layer of the model took.
    used: BTreeSet<(usize, String)>,
    /// The first layer whose shape differs from the adapter's.
    misfit: Option<String>,
    device: Device,
}

impl Adapters {
    pub fn new(list: Vec<Adapter>, device: &Device) -> Adapters {
        Adapters {
            list,
            used: BTreeSet::new(),
            misfit: None,
            device: device.clone(),
        }
    }

    /// Every adapter's part of the linear layer `name` (its Hugging Face name, without
    /// `.weight`), `outputs` × `inputs` in the model; a part of another shape is left out and
    /// named by `check_all_used`.
    pub fn take(&mut self, name: &str, outputs: usize, inputs: usize) -> Result<Vec<Lora>> {
        let mut parts = Vec::new();
        for (i, adapter) in self.list.iter().enumerate() {
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
            parts.push(Lora::new(i, p, &self.device)?);
            self.used.insert((i, name.to_string()));
        }
        Ok(parts)
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
            bail!("{misfit}");
        }
        for (i, adapter) in self.list.iter().enumerate() {
            if let Some(name) = adapter
                .layers
                .keys()
                .find(|n| !self.used.contains(&(i, n.to_string())))
            {
                bail!(
                    "the LoRA adapter {} does not fit this model: it adapts {name}, which the \
                     model does not have (an adapter for another architecture?)",
                    adapter.source.display()
                );
            }
        }
        Ok(())
    }
}
