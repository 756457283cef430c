//! Continuous batching. One thread per loaded model owns its weights and KV caches and runs a
//! fixed number of slots, each a sequence of the engine. Every step, one batched forward
//! advances every busy slot: by a chunk of its prompt while it prefills, by its last sampled
//! token while it decodes; then each decoding slot samples its next token. A request waits in a
//! bounded queue until a slot is free, and takes the free slot whose cache shares the longest
//! prefix with its prompt (a chat client re-sending its conversation pays only for the new
//! tokens). A client that goes away (its event receiver dropped) frees its slot at the next step.
//!
//! A failure stays with the sequence that caused it: a batched forward that fails is run again
//! one sequence at a time (each cache first cut back to what it is known to hold), and only the
//! sequences that fail alone are failed. A panic that escapes the thread's loop (a bug) ends the
//! thread; the scheduler then reports why ([`Scheduler::failure`]), and the server unloads the
//! model so that the next request loads it again.

use std::any::Any;
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
use crate::test_hooks::TestHooks;

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
    /// How strongly each of the model's LoRA adapters applies (one number per adapter; empty
    /// for a model without adapters).
    pub lora: Vec<f32>,
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
    /// Why the model's thread ended, if a panic ended it.
    failure: Mutex<Option<String>>,
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
    /// The model's thread ended: the server is shutting down.
    Stopped,
    /// The model's thread ended: this failed.
    Failed(String),
}

impl Scheduler {
    /// Start the model's thread with `capacity.slots` sequences and room for `capacity.queue`
    /// waiting jobs. It ends when the scheduler is dropped and its jobs are done, or at once when
    /// `stop` is set. `hooks`: for the tests, a pause before each batched step, and a fault.
    pub fn start(
        model: Model,
        text: Arc<Text>,
        capacity: Capacity,
        stop: Arc<AtomicBool>,
        hooks: TestHooks,
    ) -> Scheduler {
        let Capacity { slots, queue } = capacity;
        let (jobs, rx) = sync_channel(queue);
        let shared = Arc::new(Shared {
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            last_active: Mutex::new(Instant::now()),
            failure: Mutex::new(None),
        });
        let worker = Worker {
            model,
            text,
            shared: shared.clone(),
            stop,
            hooks,
        };
        std::thread::Builder::new()
            .name("owrun-model".into())
            .spawn(move || worker.serve(rx, slots))
            .expect("cannot start the model thread");
        Scheduler {
            jobs,
            shared,
            slots,
        }
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        if let Some(why) = self.failure() {
            return Err(Refused::Failed(why));
        }
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        self.touch();
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    std::sync::mpsc::TrySendError::Full(_) => Refused::QueueFull,
                    std::sync::mpsc::TrySendError::Disconnected(_) => match self.failure() {
                        Some(why) => Refused::Failed(why),
                        None => Refused::Stopped,
                    },
                })
            }
        }
    }

    /// Why the model's thread ended, if it failed (it then takes no more jobs).
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
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
        lock(&self.shared.last_active).elapsed()
    }

    fn touch(&self) {
        *lock(&self.shared.last_active) = Instant::now();
    }
}

/// A mutex's value, also after a panic while it was held (the values here are plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a panic said.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

struct Worker {
    model: Model,
    text: Arc<Text>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    hooks: TestHooks,
}

struct Slot<'t> {
    cache: CachedSequence,
    /// The adapters its cache was computed with.
    lora: Vec<f32>,
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

/// Tokens a busy slot feeds in the next step: a chunk of its prompt, or all it has pending.
fn feed_len(busy: &Busy) -> usize {
    if busy.prefilling {
        busy.pending.len().min(PREFILL_CHUNK)
    } else {
        busy.pending.len()
    }
}

impl Worker {
    /// Run the slots until the scheduler is dropped or the server stops. A panic that escapes
    /// the loop is recorded as the scheduler's failure, and every job in hand is told why.
    fn serve(mut self, jobs: Receiver<Job>, slots: usize) {
        let text = self.text.clone();
        let mut slots: Vec<Slot> = (0..slots)
            .map(|_| Slot {
                cache: CachedSequence::new(&mut self.model),
                lora: Vec::new(),
                busy: None,
            })
            .collect();
        let ran = catch_unwind(AssertUnwindSafe(|| self.run(&jobs, &mut slots, &text)));
        let Err(panic) = ran else { return };
        let why = format!("the model's thread failed: {}", panic_message(&*panic));
        eprintln!("owrun: {why}");
        *lock(&self.shared.failure) = Some(why.clone());
        // The slots are counted free before their clients hear, so that a client that asks
        // for health after its answer sees its slot free.
        self.shared.active.store(0, Ordering::SeqCst);
        for slot in &mut slots {
            if let Some(busy) = slot.busy.take() {
                busy.send(Event::Failed(why.clone()));
            }
        }
        while let Ok(job) = jobs.try_recv() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = job.events.send((job.index, Event::Failed(why.clone())));
        }
    }

    fn run<'t>(&mut self, jobs: &Receiver<Job>, slots: &mut [Slot<'t>], text: &'t Text) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                self.fail_all(slots, "the server is shutting down");
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
            for slot in slots.iter_mut() {
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
                        Err(RecvTimeoutError::Timeout) => {
                            // Idle: hand back what the forward passes freed, here and on the
                            // kernels' threads, when the server has asked (`memory::trim`).
                            if crate::memory::trim_if_asked() {
                                rayon::spawn_broadcast(|_| {
                                    crate::memory::trim_if_asked();
                                });
                            }
                            break;
                        }
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
                self.admit(slots, job, text);
            }
            if slots.iter().any(|s| s.busy.is_some()) {
                if let Some(d) = self.hooks.step_delay {
                    std::thread::sleep(d);
                }
                self.step(slots);
            }
        }
    }

    /// Put `job` in the free slot whose cache shares the longest prefix with its prompt (a
    /// cache computed with other adapters shares nothing).
    fn admit<'t>(&mut self, slots: &mut [Slot<'t>], job: Job, text: &'t Text) {
        let Some(slot) = slots
            .iter_mut()
            .filter(|s| s.busy.is_none())
            .max_by_key(|s| {
                if s.lora == job.lora {
                    s.cache.shared_prefix(&job.prompt)
                } else {
                    0
                }
            })
        else {
            return;
        };
        if slot.lora != job.lora {
            if slot.cache.clear(&mut self.model).is_err() {
                slot.cache = CachedSequence::new(&mut self.model);
            }
            slot.lora = job.lora.clone();
        }
        // Only a sequence the model no longer holds refuses; the slot then gets a new one.
        let reuse = match slot.cache.reuse_for(&mut self.model, &job.prompt) {
            Ok(reuse) => reuse,
            Err(_) => {
                slot.cache = CachedSequence::new(&mut self.model);
                0
            }
        };
        if !job.lora.is_empty() {
            // Checked against the model's adapters when the request was read.
            if let Err(e) = self.model.set_adapters(slot.cache.seq(), job.lora.clone()) {
                job.events
                    .send((job.index, Event::Failed(format!("{e:#}"))))
                    .ok();
                return;
            }
        }
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
        let fault = self.hooks.panic_token.filter(|t| job.prompt.contains(t));
        slot.busy = Some(Busy {
            pending: job.prompt[reuse..].to_vec(),
            job,
            decoding,
            prefilling: true,
            cached_tokens: reuse,
        });
        if let Some(t) = fault {
            panic!("test hook: token {t} in a prompt");
        }
    }

    /// One batched forward over every busy slot, then a token for each that finished its prompt.
    /// If the batch fails, each sequence runs alone, and only those that fail alone fail.
    fn step(&mut self, slots: &mut [Slot]) {
        let feeds: Vec<(usize, usize)> = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, feed_len(s.busy.as_ref()?))))
            .collect();
        let why = match self.forward(slots, &feeds) {
            Ok(logits) => {
                for (&(i, n), logits) in feeds.iter().zip(logits) {
                    self.advance(&mut slots[i], n, logits);
                }
                return;
            }
            Err(why) => why,
        };
        for &(i, _) in &feeds {
            self.roll_back(&mut slots[i]);
        }
        if feeds.len() == 1 {
            return self.fail(&mut slots[feeds[0].0], &why);
        }
        eprintln!("owrun: a batched step failed ({why}): running its sequences one by one");
        for &(i, _) in &feeds {
            let Some(n) = slots[i].busy.as_ref().map(feed_len) else {
                continue;
            };
            match self.forward(slots, &[(i, n)]) {
                Ok(mut logits) => {
                    let logits = logits.pop().unwrap_or_default();
                    self.advance(&mut slots[i], n, logits);
                }
                Err(why) => self.fail(&mut slots[i], &why),
            }
        }
    }

    /// One forward over `feeds` (a slot, and how many of its pending tokens); a panic in it is
    /// an error too.
    fn forward(
        &mut self,
        slots: &[Slot],
        feeds: &[(usize, usize)],
    ) -> Result<Vec<Vec<f32>>, String> {
        let batch: Vec<(SeqId, &[u32])> = feeds
            .iter()
            .map(|&(i, n)| {
                let b = slots[i].busy.as_ref().expect("busy");
                (slots[i].cache.seq(), &b.pending[..n])
            })
            .collect();
        let model = &mut self.model;
        match catch_unwind(AssertUnwindSafe(|| model.forward_batch(&batch))) {
            Ok(Ok(logits)) => Ok(logits),
            Ok(Err(e)) => Err(format!("the model failed: {e:#}")),
            Err(panic) => Err(format!("the model failed: {}", panic_message(&*panic))),
        }
    }

    /// After a failed forward, the slot's cache back to the tokens it is known to hold (the
    /// forward may have written part of its own). A cache that cannot go back exactly (a
    /// sliding window moved past) keeps less, and the tokens it lost are fed again.
    fn roll_back(&mut self, slot: &mut Slot) {
        let Some(busy) = slot.busy.as_mut() else {
            return;
        };
        let mut wanted = slot.cache.tokens().to_vec();
        wanted.extend_from_slice(&busy.pending);
        let kept = match slot.cache.reuse_for(&mut self.model, &wanted) {
            Ok(kept) => kept,
            Err(_) => {
                slot.cache = CachedSequence::new(&mut self.model);
                0
            }
        };
        busy.pending = wanted.split_off(kept);
    }

    /// The slot fed `n` of its pending tokens and got `logits`: sample its next token, or
    /// finish.
    fn advance(&mut self, slot: &mut Slot, n: usize, mut logits: Vec<f32>) {
        let busy = slot.busy.as_mut().expect("busy");
        slot.cache.extend(&busy.pending[..n]);
        busy.pending.drain(..n);
        if !busy.pending.is_empty() {
            return;
        }
        if busy.prefilling {
            busy.prefilling = false;
            busy.send(Event::Started {
                cached_tokens: busy.cached_tokens,
            });
            if busy.decoding.is_exhausted() {
                if let Some(busy) = self.release(slot) {
                    busy.done(Finish::Length);
                }
                return;
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
                        if let Some(busy) = self.release(slot) {
                            busy.done(finish.unwrap_or(Finish::Stop));
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(busy) = self.release(slot) {
                    busy.send(Event::Failed(format!("cannot decode the output: {e:#}")));
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

    /// The slot's job is over (done, failed or abandoned): it keeps its cache for reuse. The
    /// job comes back for its last event, sent after the slot is counted free (a client that
    /// asks for health once answered sees its slot free).
    fn release<'t>(&self, slot: &mut Slot<'t>) -> Option<Busy<'t>> {
        let busy = slot.busy.take()?;
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
        *lock(&self.shared.last_active) = Instant::now();
        Some(busy)
    }

    /// Fail the slot's job alone; its cache, which the failure left unknown, is emptied.
    fn fail(&mut self, slot: &mut Slot, why: &str) {
        if let Some(busy) = self.release(slot) {
            busy.send(Event::Failed(why.to_string()));
        }
        if slot.cache.clear(&mut self.model).is_err() {
            slot.cache = CachedSequence::new(&mut self.model);
        }
    }

    /// Fail every busy slot (the server is stopping).
    fn fail_all(&mut self, slots: &mut [Slot], why: &str) {
        for slot in slots.iter_mut() {
            if let Some(busy) = self.release(slot) {
                busy.send(Event::Failed(why.to_string()));
            }
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
    use crate::engine::{DTypeChoice, DeviceChoice, Engine, KvType, LoadOptions};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    fn stories260k() -> Engine {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/stories260K");
        let opts = LoadOptions {
            threads: None,
            device: DeviceChoice::Cpu,
            dtype: DTypeChoice::Auto,
            quant: None,
            quant_cache: None,
            kv_type: KvType::F32,
            context: None,
            adapters: Vec::new(),
            merge_adapters: false,
        };
        Engine::load(&dir, &[dir.join("model.safetensors")], &opts).expect("stories260K loads")
    }

    fn greedy(prompt: Vec<u32>) -> (Job, UnboundedReceiver<(usize, Event)>) {
        let (events, rx) = unbounded_channel();
        let job = Job {
            index: 0,
            prompt,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_tokens: Some(24),
            stop: Vec::new(),
            logprobs: None,
            constraint: None,
            lora: Vec::new(),
            events,
        };
        (job, rx)
    }

    /// The text a job generated, or why it failed.
    fn outcome(mut rx: UnboundedReceiver<(usize, Event)>) -> Result<String, String> {
        let mut text = String::new();
        loop {
            match rx.blocking_recv() {
                Some((_, Event::Token { text: t, .. })) => text.push_str(&t),
                Some((_, Event::Done { .. })) => return Ok(text),
                Some((_, Event::Failed(why))) => return Err(why),
                Some(_) => {}
                None => return Err("the scheduler dropped the job".into()),
            }
        }
    }

    fn run(scheduler: &Scheduler, prompt: &[u32]) -> Result<String, String> {
        let (job, rx) = greedy(prompt.to_vec());
        assert!(scheduler.submit(job).is_ok());
        outcome(rx)
    }

    /// A token id the model has no embedding row for fails the batched forward (as it did for
    /// every sequence beside it): now only its own sequence fails, the others answer as alone,
    /// and the slots serve on.
    #[test]
    fn a_sequence_that_fails_fails_alone_and_the_slots_serve_on() {
        let engine = stories260k();
        let prompt = engine.text.encode("Once upon a time", true).unwrap();
        let scheduler = Scheduler::start(
            engine.model,
            engine.text,
            Capacity { slots: 3, queue: 8 },
            Arc::new(AtomicBool::new(false)),
            TestHooks::default(),
        );
        let alone = run(&scheduler, &prompt).expect("generates");
        assert!(!alone.is_empty());
        for _ in 0..3 {
            let (a, rx_a) = greedy(prompt.clone());
            let (bad, rx_bad) = greedy(vec![1, 100_000]);
            let (c, rx_c) = greedy(prompt.clone());
            for job in [a, bad, c] {
                assert!(scheduler.submit(job).is_ok());
            }
            let why = outcome(rx_bad).expect_err("a token without an embedding row fails");
            assert!(why.contains("100000"), "{why}");
            assert_eq!(outcome(rx_a).as_deref(), Ok(alone.as_str()));
            assert_eq!(outcome(rx_c).as_deref(), Ok(alone.as_str()));
        }
        // Every slot takes jobs again, with its cache whole.
        let (jobs, rxs): (Vec<_>, Vec<_>) = (0..3).map(|_| greedy(prompt.clone())).unzip();
        for job in jobs {
            assert!(scheduler.submit(job).is_ok());
        }
        for rx in rxs {
            assert_eq!(outcome(rx).as_deref(), Ok(alone.as_str()));
        }
        // A slot is released just after its last event.
        let deadline = Instant::now() + Duration::from_secs(10);
        while scheduler.busy() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} jobs still busy",
                scheduler.busy()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(scheduler.failure().is_none());
    }

    /// A panic outside the forward's guard ends the model's thread: the job in hand is told why,
    /// the scheduler reports the failure, and it takes no more jobs (it said "shutting down"
    /// for ever before).
    #[test]
    fn a_thread_that_dies_says_why() {
        let engine = stories260k();
        let prompt = engine.text.encode("Once upon a time", true).unwrap();
        let scheduler = Scheduler::start(
            engine.model,
            engine.text,
            Capacity { slots: 2, queue: 8 },
            Arc::new(AtomicBool::new(false)),
            TestHooks {
                panic_token: Some(77),
                ..TestHooks::default()
            },
        );
        assert!(run(&scheduler, &prompt).is_ok());
        let why = run(&scheduler, &[1, 77]).expect_err("the thread panics");
        assert!(why.contains("token 77"), "{why}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while scheduler.failure().is_none() {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(scheduler.failure().unwrap().contains("token 77"));
        let (job, _rx) = greedy(prompt.clone());
        match scheduler.submit(job) {
            Err(Refused::Failed(why)) => assert!(why.contains("token 77"), "{why}"),
            _ => panic!("a dead thread took a job"),
        }
    }

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
