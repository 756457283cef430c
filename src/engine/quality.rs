//! How far a model in a cheaper format (16-bit, quantized) drifts from its f32 self, measured
//! as llama-perplexity's KL-divergence mode does: over a text, at every position, the KL
//! divergence of the test distribution from the reference one, and whether both pick the same
//! most likely token.

use anyhow::{ensure, Result};
use serde::Serialize;

use super::generate::sampler::argmax;
use super::model::Model;

/// Log-probabilities after every token of `tokens` (row i: the distribution of token i + 1),
/// fed in chunks of `chunk` tokens, each chunk a fresh sequence.
pub fn log_probs(model: &mut Model, tokens: &[u32], chunk: usize) -> Result<Vec<Vec<f32>>> {
    ensure!(chunk >= 2, "chunks must hold at least 2 tokens");
    let seq = model.new_sequence();
    let mut rows = Vec::with_capacity(tokens.len());
    for part in tokens.chunks(chunk) {
        model.truncate(seq, 0)?;
        for logits in model.forward_all(seq, part)? {
            rows.push(log_softmax(&logits));
        }
    }
    model.free(seq);
    Ok(rows)
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let log_sum = sum.ln() as f32 + max;
    logits.iter().map(|&l| l - log_sum).collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// Positions compared.
    pub positions: usize,
    pub mean_kld: f64,
    /// Standard error of the mean.
    pub mean_kld_error: f64,
    pub max_kld: f64,
    /// 99th percentile.
    pub p99_kld: f64,
    /// Fraction of positions where both pick the same most likely token.
    pub top1_agreement: f64,
    /// Perplexity of the text under each (positions where the next token is known).
    pub reference_perplexity: f64,
    pub test_perplexity: f64,
}

/// Compare `test` to `reference` (log-probabilities per position) over `tokens`.
pub fn compare(
    reference: &[Vec<f32>],
    test: &[Vec<f32>],
    tokens: &[u32],
    chunk: usize,
) -> Comparison {
    let n = reference.len().min(test.len());
    let mut klds = Vec::with_capacity(n);
    let mut same = 0usize;
    let (mut nll_ref, mut nll_test, mut scored) = (0f64, 0f64, 0usize);
    for i in 0..n {
        let (p, q) = (&reference[i], &test[i]);
        let kld: f64 = p
            .iter()
            .zip(q)
            .map(|(&lp, &lq)| (lp as f64).exp() * (lp as f64 - lq as f64))
            .sum();
        klds.push(kld.max(0.0));
        if argmax(p) == argmax(q) {
            same += 1;
        }
        // The next token is known inside a chunk (the last row of a chunk predicts the first
        // token of the next one, which was fed to a fresh sequence: not scored).
        if (i + 1) % chunk != 0 && i + 1 < tokens.len() {
            let next = tokens[i + 1] as usize;
            nll_ref -= p[next] as f64;
            nll_test -= q[next] as f64;
            scored += 1;
        }
    }
    let mean = klds.iter().sum::<f64>() / n.max(1) as f64;
    let var = klds.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64;
    let mut sorted = klds.clone();
    sorted.sort_by(f64::total_cmp);
    let p99 = sorted
        .get(((n as f64 * 0.99) as usize).min(n.saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    Comparison {
        positions: n,
        mean_kld: mean,
        mean_kld_error: (var / n.max(1) as f64).sqrt(),
        max_kld: sorted.last().copied().unwrap_or(0.0),
        p99_kld: p99,
        top1_agreement: same as f64 / n.max(1) as f64,
        reference_perplexity: (nll_ref / scored.max(1) as f64).exp(),
        test_perplexity: (nll_test / scored.max(1) as f64).exp(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_agree_and_differing_ones_do_not() {
        let a = vec![log_softmax(&[1.0, 2.0, 3.0]), log_softmax(&[0.0, 0.0, 5.0])];
        let same = compare(&a, &a, &[0, 2, 2], 8);
        assert_eq!(same.top1_agreement, 1.0);
        assert!(same.mean_kld.abs() < 1e-9);
        assert!((same.reference_perplexity - same.test_perplexity).abs() < 1e-9);
        let b = vec![log_softmax(&[3.0, 2.0, 1.0]), log_softmax(&[0.0, 0.0, 5.0])];
        let differ = compare(&a, &b, &[0, 2, 2], 8);
        assert_eq!(differ.top1_agreement, 0.5);
        // KL(p || q) for p = softmax(1,2,3), q = its reverse: sum p (log p - log q) = 2·(p3 - p1).
        let p = [1f64, 2.0, 3.0].map(|x| x.exp() / (1f64.exp() + 2f64.exp() + 3f64.exp()));
        let want = 2.0 * (p[2] - p[0]) / 2.0;
        assert!(
            (differ.mean_kld - want).abs() < 1e-5,
            "{} vs {want}",
            differ.mean_kld
        );
    }
}
