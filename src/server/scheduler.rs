//! Continuous batching. One thread per loaded model owns its weights and KV caches and runs a
//! fixed number of slots, each a sequence of the engine. Every step, one batched forward
//! advances every busy slot: by a chunk of its prompt while it prefills, by its last sampled
//! token while it decodes; then each decoding slot samples its next token. A request waits in a
//! bounded queue until a slot is free, and takes the free slot whose cache shares the longest
//! prefix with its prompt (a chat client re-sending its conversation pays only for the new
//! tokens). A client that goes away (its event receiver dropped) frees its slot at the next step.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::generate::constrain::JsonConstraint;
use crate::engine::generate::decoding::{Decoding, Finish};
use crate::engine::generate::sampler::{Sampler, SamplingParams};
use crate::engine::generate::session::CachedSequence;
use crate::engine::model::{Model, SeqId};
use crate::engine::text::Text;

/// Most prompt tokens one sequence feeds per step: a long prompt does not stall the others'
/// decoding for its whole prefill.
const PREFILL_CHUNK: usize = 256;

/// One sequence to generate: a prompt and how to sample after it.
pub struct Job {
    /// Which of the request's choices this is (for `n` > 1).
    pub index: usize,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Report each token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Hold the output to this JSON document (response_format, a required tool call).
    pub constraint: Option<JsonConstraint>,
    pub events: UnboundedSender<(usize, Event)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The prompt is in the cache: `cached_tokens` of it were reused, not computed.
    Started {
        cached_tokens: usize,
    },
    /// A token was generated; `text` is what became final with it (may be empty).
    Token {
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    pub chosen: Candidate,
    pub top: Vec<Candidate>,
}

/// What handlers and the keep-alive reaper see of a running scheduler.
struct Shared {
    queued: AtomicUsize,
    active: AtomicUsize,
    last_active: Mutex<Instant>,
}

pub struct Scheduler {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
    pub slots: usize,
}

/// How many jobs a model takes at once.
pub struct Capacity {
    /// Sequences generating together.
    pub slots: usize,
    /// Jobs waiting beyond them.
    pub queue: usize,
}

/// Why a job was not queued.
pub enum Refused {
    QueueFull,
    /// The model's thread ended (it is shutting down, or it failed).
    Stopped,
}

impl Scheduler {
    /// Start the model's thread with `capacity.slots` sequences and room for `capacity.queue`
    /// waiting jobs. It ends when the scheduler is dropped and its jobs are done, or at once when
    /// `stop` is set. `step_delay`: a test hook, a pause before each batched step.
    pub fn start(
        model: Model,
        text: Arc<Text>,
        capacity: Capacity,
        stop: Arc<AtomicBool>,
        step_delay: Option<Duration>,
    ) -> Scheduler {
        let Capacity { slots, queue } = capacity;
        let (jobs, rx) = sync_channel(queue);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
        });
        let worker = Worker {
            model,
            text,
            shared: shared.clone(),
            stop,
            step_delay,
        };
        std::thread::Builder::new()
            .name("owrun-model".into())
            .spawn(move || worker.run(rx, slots))
            .expect("cannot start the model thread");
        Scheduler {
            jobs,
            shared,
            slots,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.touch();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    std::sync::mpsc::TrySendError::Full(_) => Refused::QueueFull,
                    std::sync::mpsc::TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Jobs generating or waiting.
    pub fn busy(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst) + self.shared.active.load(Ordering::SeqCst)
    }

    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    /// How long nothing has been asked of it (zero while busy).
    pub fn idle_for(&self) -> Duration {
        if self.busy() > 0 {
            return Duration::ZERO;
        }
        self.shared.last_active.lock().unwrap().elapsed()
    }

    fn touch(&self) {
        *self.shared.last_active.lock().unwrap() = Instant::now();
    }
}

struct Worker {
    model: Model,
    text: Arc<Text>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    step_delay: Option<Duration>,
}

struct Slot<'t> {
    cache: CachedSequence,
    busy: Option<Busy<'t>>,
}

struct Busy<'t> {
    job: Job,
    decoding: Decoding<'t>,
    /// Tokens to feed next: the rest of the prompt while prefilling, then the last sample.
    pending: Vec<u32>,
    prefilling: bool,
    cached_tokens: usize,
}

impl Busy<'_> {
    fn send(&self, event: Event) {
        // A closed receiver is noticed at the next step; nothing to do here.
        let _ = self.job.events.send((self.job.index, event));
    }

    fn done(&self, finish: Finish) {
        self.send(Event::Done {
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.decoding.tokens.len(),
        });
    }
}

impl Worker {
    fn run(mut self, jobs: Receiver<Job>, slots: usize) {
        let text = self.text.clone();
        let step_delay = self.step_delay;
        let mut slots: Vec<Slot> = (0..slots)
            .map(|_| Slot {
                cache: CachedSequence::new(&mut self.model),
                busy: None,
            })
            .collect();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.fail_all(&mut slots, "the server is shutting down");
                while let Ok(job) = jobs.try_recv() {
                    self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                    let _ = job.events.send((
                        job.index,
                        Event::Failed("the server is shutting down".into()),
                    ));
                }
                return;
            }
            // Clients that went away free their slots.
            for slot in &mut slots {
                if slot.busy.as_ref().is_some_and(|b| b.job.events.is_closed()) {
                    self.release(slot);
                }
            }
            // Fill free slots from the queue; wait for a job only when nothing runs.
            loop {
                if !slots.iter().any(|s| s.busy.is_none()) {
                    break;
                }
                let idle = slots.iter().all(|s| s.busy.is_none());
                let job = if idle {
                    match jobs.recv_timeout(Duration::from_millis(100)) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                if job.events.is_closed() {
                    continue;
                }
                self.admit(&mut slots, job, &text);
            }
            if slots.iter().any(|s| s.busy.is_some()) {
                if let Some(d) = step_delay {
                    std::thread::sleep(d);
                }
                self.step(&mut slots);
            }
        }
    }

    /// Put `job` in the free slot whose cache shares the longest prefix with its prompt.
    fn admit<'t>(&mut self, slots: &mut [Slot<'t>], job: Job, text: &'t Text) {
        let Some(slot) = slots
            .iter_mut()
            .filter(|s| s.busy.is_none())
            .max_by_key(|s| s.cache.shared_prefix(&job.prompt))
        else {
            return;
        };
        let Ok(reuse) = slot.cache.reuse_for(&mut self.model, &job.prompt) else {
            return;
        };
        let room = self.model.context().saturating_sub(job.prompt.len());
        let limit = job.max_tokens.map_or(room, |m| m.min(room));
        let mut decoding = Decoding::new(
            &text.tokenizer,
            Sampler::new(job.sampling.clone()),
            &job.prompt,
            &job.stop,
            &text.eos,
            limit,
        );
        if let Some(c) = &job.constraint {
            decoding.constrain(c.clone(), text.token_texts());
        }
        self.shared.active.fetch_add(1, Ordering::SeqCst);
        slot.busy = Some(Busy {
            pending: job.prompt[reuse..].to_vec(),
            job,
            decoding,
            prefilling: true,
            cached_tokens: reuse,
        });
    }

    /// One batched forward over every busy slot, then a token for each that finished its prompt.
    fn step(&mut self, slots: &mut [Slot]) {
        let feeds: Vec<(usize, usize)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let b = s.busy.as_ref()?;
                let n = if b.prefilling {
                    b.pending.len().min(PREFILL_CHUNK)
                } else {
                    b.pending.len()
                };
                Some((i, n))
            })
            .collect();
        let batch: Vec<(SeqId, &[u32])> = feeds
            .iter()
            .map(|&(i, n)| {
                let b = slots[i].busy.as_ref().expect("busy");
                (slots[i].cache.seq(), &b.pending[..n])
            })
            .collect();
        let model = &mut self.model;
        let result = catch_unwind(AssertUnwindSafe(|| model.forward_batch(&batch)));
        let logits = match result {
            Ok(Ok(logits)) => logits,
            Ok(Err(e)) => return self.fail_all(slots, &format!("the model failed: {e:#}")),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                return self.fail_all(slots, &format!("the model failed: {what}"));
            }
        };
        for ((i, n), mut logits) in feeds.into_iter().zip(logits) {
            let slot = &mut slots[i];
            let busy = slot.busy.as_mut().expect("busy");
            slot.cache.extend(&busy.pending[..n]);
            busy.pending.drain(..n);
            if !busy.pending.is_empty() {
                continue;
            }
            if busy.prefilling {
                busy.prefilling = false;
                busy.send(Event::Started {
                    cached_tokens: busy.cached_tokens,
                });
                if busy.decoding.is_exhausted() {
                    busy.done(Finish::Length);
                    self.release(slot);
                    continue;
                }
            }
            let logprobs = busy.job.logprobs.map(|k| top_logprobs(&logits, k));
            match busy.decoding.next(&mut logits) {
                Ok(step) => {
                    let logprobs = match (step.token, logprobs) {
                        (Some(t), Some(lp)) => Some(self.describe(t, &lp)),
                        _ => None,
                    };
                    if !step.text.is_empty() || logprobs.is_some() {
                        busy.send(Event::Token {
                            text: step.text,
                            logprobs,
                        });
                    }
                    match (step.finish, step.token) {
                        (None, Some(t)) => busy.pending.push(t),
                        (finish, _) => {
                            busy.done(finish.unwrap_or(Finish::Stop));
                            self.release(slot);
                        }
                    }
                }
                Err(e) => {
                    busy.send(Event::Failed(format!("cannot decode the output: {e:#}")));
                    self.release(slot);
                }
            }
        }
    }

    /// Token texts for the chosen token and the alternatives.
    fn describe(&self, token: u32, lp: &Logprobs) -> TokenLogprobs {
        // Each token's text as it reads after other text (the leading space kept), made once
        // per model; a token that is part of a character (a byte token) decodes alone.
        let texts = self.text.token_texts();
        let name = |t: u32| match texts.text(t) {
            Some(text) => text.to_string(),
            None => self.text.tokenizer.decode(&[t], false).unwrap_or_default(),
        };
        TokenLogprobs {
            chosen: Candidate {
                token: name(token),
                logprob: lp
                    .all
                    .get(token as usize)
                    .copied()
                    .unwrap_or(f32::NEG_INFINITY),
            },
            top: lp
                .top
                .iter()
                .map(|&(t, l)| Candidate {
                    token: name(t),
                    logprob: l,
                })
                .collect(),
        }
    }

    /// The slot's job is over (done, failed or abandoned): it keeps its cache for reuse.
    fn release(&self, slot: &mut Slot) {
        if slot.busy.take().is_some() {
            self.shared.active.fetch_sub(1, Ordering::SeqCst);
            *self.shared.last_active.lock().unwrap() = Instant::now();
        }
    }

    /// Fail every busy slot and forget the caches (a failed forward leaves them unknown).
    fn fail_all(&mut self, slots: &mut [Slot], why: &str) {
        for slot in slots.iter_mut() {
            if let Some(b) = &slot.busy {
                b.send(Event::Failed(why.to_string()));
                self.release(slot);
            }
            let _ = slot.cache.clear(&mut self.model);
        }
    }
}

/// Log-probabilities before any penalty or temperature: the model's own, as OpenAI reports them.
struct Logprobs {
    /// Log-softmax of every token.
    all: Vec<f32>,
    /// The best ones, best first.
    top: Vec<(u32, f32)>,
}

fn top_logprobs(logits: &[f32], k: usize) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let norm = max + sum.ln();
    let all: Vec<f32> = logits.iter().map(|l| l - norm).collect();
    let mut idx: Vec<u32> = (0..all.len() as u32).collect();
    let k = k.min(idx.len());
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| all[b as usize].total_cmp(&all[a as usize]));
    }
    idx.truncate(k);
    idx.sort_by(|&a, &b| all[b as usize].total_cmp(&all[a as usize]).then(a.cmp(&b)));
    let top = idx.iter().map(|&t| (t, all[t as usize])).collect();
    Logprobs { all, top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_best_first() {
        let lp = top_logprobs(&[1.0, 3.0, 2.0, 3.0], 2);
        let total: f32 = lp.all.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        // Ties keep the lower id first.
        assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3]);
        assert!((lp.all[1] - lp.all[2] - 1.0).abs() < 1e-6);
    }
}
