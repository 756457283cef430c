//! Choosing the next token from logits: repetition penalty, then temperature, top-k, top-p and
//! min-p, then a draw from a seeded generator (or argmax at temperature 0).

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    /// OpenAI's penalties: subtracted once from a recent token's logit (presence), and once per
    /// time it occurs (frequency). 0 disables.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// How many of the most recent tokens the penalties look at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            seed: 299_792_458,
        }
    }
}

impl SamplingParams {
    /// owrun's defaults, overridden by what the model's generation_config.json says.
    /// The defaults a model's generation_config.json sets; a value no sampler could use (a
    /// negative temperature, a top_p of 0) is an error naming it, not garbage to sample with.
    pub fn from_generation_config(gen: &serde_json::Value) -> Result<Self> {
        let mut p = SamplingParams::default();
        let f = |k: &str, ok: fn(f64) -> bool, what: &str| -> Result<Option<f32>> {
            match gen.get(k).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && ok(x) => Ok(Some(x as f32)),
                    _ => bail!("generation_config.json's {k} is {v}, not {what}"),
                },
            }
        };
        let temperature = f("temperature", |t| t >= 0.0, "a temperature of 0 or more")?;
        if gen.get("do_sample").and_then(serde_json::Value::as_bool) == Some(false) {
            p.temperature = 0.0;
        } else if let Some(t) = temperature {
            p.temperature = t;
        }
        if let Some(v) = gen.get("top_k").and_then(serde_json::Value::as_u64) {
            p.top_k = v as usize;
        }
        if let Some(v) = f("top_p", |x| x > 0.0 && x <= 1.0, "a probability above 0")? {
            p.top_p = v;
        }
        if let Some(v) = f("min_p", |x| (0.0..=1.0).contains(&x), "a probability")? {
            p.min_p = v;
        }
        if let Some(v) = f("repetition_penalty", |x| x > 0.0, "a positive factor")? {
            p.repeat_penalty = v;
        }
        Ok(p)
    }
}

/// Sampling settings a user (flags) or a client (request fields) gave; the unset ones keep the
/// model's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, mut p: SamplingParams) -> SamplingParams {
        fn set<T: Copy>(field: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *field = v;
            }
        }
        set(&mut p.temperature, self.temperature);
        set(&mut p.top_k, self.top_k);
        set(&mut p.top_p, self.top_p);
        set(&mut p.min_p, self.min_p);
        set(&mut p.repeat_penalty, self.repeat_penalty);
        set(&mut p.repeat_last_n, self.repeat_last_n);
        set(&mut p.presence_penalty, self.presence_penalty);
        set(&mut p.frequency_penalty, self.frequency_penalty);
        set(&mut p.seed, self.seed);
        p
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    /// Pick a token. `history` is every token of the sequence so far (for the penalty).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            for run in seen.chunk_by(|a, b| a == b) {
                let Some(l) = logits.get_mut(run[0] as usize) else {
                    continue;
                };
                // As transformers and llama.cpp do: shrink positive logits, grow negative ones.
                if p.repeat_penalty != 1.0 {
                    *l = if *l >= 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
                *l -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first. With top-k, only the k best are sorted: a
        // full sort of a 128K vocabulary is a millisecond per token, per sequence.
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        let by_logit = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.select_nth_unstable_by(p.top_k - 1, by_logit);
            idx.truncate(p.top_k);
        }
        idx.sort_unstable_by(by_logit);
        let max = logits[idx[0]];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((logits[i] - max) / p.temperature).exp())
            .collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        // min-p: drop candidates below min_p times the best one's probability.
        if p.min_p > 0.0 {
            let cut = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&x| x >= cut).count().max(1);
            probs.truncate(keep);
        }
        // top-p: the smallest prefix whose mass reaches top_p.
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, x) in probs.iter().enumerate() {
                acc += x;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep.max(1));
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, x) in probs.iter().enumerate() {
            if r < *x {
                return idx[i] as u32;
            }
            r -= x;
        }
        idx[probs.len() - 1] as u32
    }
}

/// The most likely token; the lowest id wins a tie (as torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repeat_last_n: 64,
            seed: 1,
        }
    }

    #[test]
    fn greedy_is_argmax_and_first_wins_ties() {
        let mut s = Sampler::new(params(0.0));
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = [1.0f32, 1.1, 0.9, 1.05];
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params(1.0)
            });
            (0..32)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_1_and_min_p_1_are_greedy() {
        let logits = [0.0f32, 2.0, 1.9, 1.8];
        let mut s = Sampler::new(SamplingParams {
            top_k: 1,
            ..params(5.0)
        });
        assert!((0..20).all(|_| s.sample(&mut logits.clone(), &[]) == 1));
        let mut s = Sampler::new(SamplingParams {
            min_p: 1.0,
            ..params(5.0)
        });
        assert!((0..20).all(|_| s.sample(&mut logits.clone(), &[]) == 1));
    }

    #[test]
    fn repeat_penalty_moves_greedy_away_from_recent_tokens() {
        let mut s = Sampler::new(SamplingParams {
            repeat_penalty: 2.0,
            ..params(0.0)
        });
        assert_eq!(s.sample(&mut [1.0, 1.5, 1.2], &[1]), 2);
    }

    #[test]
    fn presence_and_frequency_penalties_subtract_per_token_and_per_occurrence() {
        let mut logits = [1.0f32, 1.0, 1.0];
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..params(0.0)
        });
        // Token 1 seen twice, token 2 once: 1 - 0.5 - 0.5 and 1 - 0.5 - 0.25.
        assert_eq!(s.sample(&mut logits, &[1, 2, 1]), 0);
        assert_eq!(logits, [1.0, 0.0, 0.25]);
    }
}
