//! The models a server holds: loaded on first request (or at start when named on the command
//! line), shared by every request for them, unloaded after `--keep-alive` without requests,
//! at most `--max-models` at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OnceCell};

use super::catalog::{Card, Catalog, Opened};
use super::error::ApiError;
use super::scheduler::{Capacity, Scheduler};
use crate::engine::generate::sampler::SamplingParams;
use crate::engine::text::Text;
use crate::engine::Engine;
use crate::test_hooks::TestHooks;

pub struct Options {
    /// Slots per model (None: what memory allows, at least 4).
    pub parallel: Option<usize>,
    /// Jobs waiting per model beyond the slots.
    pub queue: usize,
    /// None: kept until the server stops.
    pub keep_alive: Option<Duration>,
    pub max_models: usize,
    /// `OWRUN_MEMORY_LIMIT`: memory the models may use instead of what the kernel reports when
    /// each loads (it decides the default number of slots).
    pub memory_limit: Option<u64>,
    /// Pauses before each load and each batched step, and faults, for the tests.
    pub hooks: TestHooks,
}

/// A loaded model.
pub struct Served {
    pub id: String,
    pub text: Arc<Text>,
    /// The model's sampling defaults, under each request's fields.
    pub sampling: SamplingParams,
    pub context: usize,
    /// Token ids the model takes: those the tokenizer knows that have an embedding row.
    pub tokens: usize,
    pub scheduler: Scheduler,
    /// Named on the command line: never unloaded (but reloaded if its thread fails).
    pub pinned: bool,
    /// Its LoRA adapters' names, in the order of a job's multipliers.
    pub adapters: Vec<String>,
}

type Cell = Arc<OnceCell<Arc<Served>>>;

/// How long the list of model cards is reused: making it reads every registry model's files.
const CARDS_FRESH: Duration = Duration::from_secs(2);

pub struct Models {
    catalog: Arc<Catalog>,
    options: Options,
    loaded: Mutex<HashMap<String, (Cell, bool)>>,
    /// The names requests used for each loaded model (resolving a name reads the registry, the
    /// store and the license records: done once, not on every request).
    aliases: Mutex<HashMap<String, String>>,
    /// The cards last made, and when; one request makes them at a time.
    cards: Mutex<Option<(Instant, Arc<Vec<Card>>)>>,
    loading: AtomicUsize,
    /// Loads begun so far (the `panic_loads` test hook counts them).
    loads: AtomicUsize,
    pub stop: Arc<AtomicBool>,
}

impl Models {
    pub fn new(catalog: Catalog, options: Options) -> Self {
        Models {
            catalog: Arc::new(catalog),
            options,
            loaded: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            cards: Mutex::new(None),
            loading: AtomicUsize::new(0),
            loads: AtomicUsize::new(0),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Every model a client may name, made off the async threads at most every
    /// [`CARDS_FRESH`].
    pub async fn cards(&self) -> Result<Arc<Vec<Card>>, ApiError> {
        let mut cached = self.cards.lock().await;
        if let Some((made, cards)) = cached.as_ref() {
            if made.elapsed() < CARDS_FRESH {
                return Ok(cards.clone());
            }
        }
        let catalog = self.catalog.clone();
        let cards = tokio::task::spawn_blocking(move || catalog.cards())
            .await
            .map_err(|e| ApiError::internal(format!("cannot list the models: {e}")))?;
        let cards = Arc::new(cards);
        *cached = Some((Instant::now(), cards.clone()));
        Ok(cards)
    }

    /// Models being loaded now (the health check answers 503 while there are any).
    pub fn loading(&self) -> usize {
        self.loading.load(Ordering::SeqCst)
    }

    /// Ids of the loaded models.
    pub async fn loaded_ids(&self) -> Vec<String> {
        let map = self.loaded.lock().await;
        let mut ids: Vec<String> = map
            .iter()
            .filter(|(_, (cell, _))| cell.initialized())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The model `name`, loaded first if it is not (or if its thread failed). `pinned`: kept
    /// until the server stops.
    /// `base+adapter` as (base, adapter) for one of the server's adapters; else (name, None).
    pub fn split_adapter(&self, name: &str) -> (String, Option<String>) {
        self.catalog.split_adapter(name)
    }

    pub async fn get(&self, name: &str, pinned: bool) -> Result<Arc<Served>, ApiError> {
        let known = self.aliases.lock().await.get(name).cloned();
        if let Some(id) = known {
            let map = self.loaded.lock().await;
            if let Some(served) = map.get(&id).and_then(|(cell, _)| cell.get()) {
                if served.scheduler.failure().is_none() {
                    return Ok(served.clone());
                }
            }
        }
        let catalog = self.catalog.clone();
        let asked = name.to_string();
        let opened = tokio::task::spawn_blocking(move || catalog.open(&asked))
            .await
            .map_err(|e| ApiError::internal(format!("cannot open the model: {e}")))??;
        let id = opened.id.clone();
        // A model named on the command line stays pinned when it is loaded again.
        let pinned = pinned || self.catalog.is_named(name);
        let (cell, pinned) = {
            let mut map = self.loaded.lock().await;
            let failed = map
                .get(&id)
                .and_then(|(cell, _)| cell.get()?.scheduler.failure());
            if let Some(why) = failed {
                eprintln!("owrun: unloading {id} ({why}): the next request loads it again");
                map.remove(&id);
            }
            let entry = map
                .entry(id.clone())
                .or_insert_with(|| (Arc::new(OnceCell::new()), pinned));
            entry.1 |= pinned;
            (entry.0.clone(), entry.1)
        };
        let result = cell
            .get_or_try_init(|| self.load(opened, pinned))
            .await
            .cloned();
        if result.is_err() {
            let mut map = self.loaded.lock().await;
            if map.get(&id).is_some_and(|(c, _)| Arc::ptr_eq(c, &cell)) {
                map.remove(&id);
            }
        } else {
            self.aliases.lock().await.insert(name.to_string(), id);
        }
        result
    }

    async fn load(&self, opened: Opened, pinned: bool) -> Result<Arc<Served>, ApiError> {
        // Refused now if no room can be made; the room is made only once the model has loaded
        // (a model that fails to load must not cost an idle one its place).
        self.room(&opened.id, false).await?;
        let id = opened.id.clone();
        let adapters = opened.adapters.clone();
        let delay = self.options.hooks.load_delay;
        let fault =
            self.loads.fetch_add(1, Ordering::SeqCst) < self.options.hooks.panic_loads as usize;
        let loaded = {
            let _loading = Counted::new(&self.loading);
            tokio::task::spawn_blocking(move || {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
                if fault {
                    panic!("test hook panic_loads: loading {} panicked", opened.id);
                }
                (opened.load)()
            })
            .await
        };
        // The client is told that it failed, the log says why: the error names the model's
        // files, which a client must not learn of.
        let engine = match loaded {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => {
                eprintln!("owrun: cannot load {id}: {e:#}");
                return Err(ApiError::internal(format!(
                    "cannot load {id}: the server's log says why"
                )));
            }
            Err(e) => {
                let why = e
                    .try_into_panic()
                    .map(|p| super::scheduler::panic_message(&*p))
                    .unwrap_or_else(|e| e.to_string());
                eprintln!("owrun: loading {id} failed: {why}");
                return Err(ApiError::internal(format!(
                    "loading {id} failed: the server's log says why"
                )));
            }
        };
        for note in &engine.notes {
            eprintln!("owrun: {id}: {note}");
        }
        self.room(&id, true).await?;
        let slots = self
            .options
            .parallel
            .unwrap_or_else(|| default_slots(&engine, self.options.memory_limit));
        eprintln!(
            "owrun: {id} loaded in {:.2}s: {slots} slots, context {} tokens",
            engine.load_s,
            engine.model.context()
        );
        let Engine {
            model,
            text,
            sampling,
            ..
        } = engine;
        let context = model.context();
        let tokens = text
            .tokenizer
            .get_vocab_size(true)
            .min(model.decoder.arch.vocab_size);
        Ok(Arc::new(Served {
            id,
            context,
            tokens,
            scheduler: Scheduler::start(
                model,
                text.clone(),
                Capacity {
                    slots,
                    queue: self.options.queue,
                },
                self.stop.clone(),
                self.options.hooks,
            ),
            text,
            sampling,
            pinned,
            adapters,
        }))
    }

    /// Under `--max-models`, room for `for_id`: none needed, or the idle model unused longest
    /// (unloaded when `evict`); if every model is busy, a 503.
    async fn room(&self, for_id: &str, evict: bool) -> Result<(), ApiError> {
        let mut map = self.loaded.lock().await;
        let others: Vec<(String, Arc<Served>)> = map
            .iter()
            .filter(|(id, _)| id.as_str() != for_id)
            .filter_map(|(id, (cell, _))| cell.get().map(|s| (id.clone(), s.clone())))
            .collect();
        if others.len() < self.options.max_models {
            return Ok(());
        }
        let victim = others
            .iter()
            .filter(|(_, s)| !s.pinned && s.scheduler.busy() == 0)
            .max_by_key(|(_, s)| s.scheduler.idle_for());
        match victim {
            Some((id, _)) => {
                if evict {
                    eprintln!("owrun: unloading {id} to make room for {for_id} (--max-models)");
                    map.remove(id);
                }
                Ok(())
            }
            None => Err(ApiError::busy(
                format!(
                    "{for_id} cannot be loaded now: {} models are loaded and busy (--max-models {})",
                    others.len(),
                    self.options.max_models
                ),
                5,
            )),
        }
    }

    /// Unload models idle longer than the keep-alive, and those whose thread failed (run every
    /// second or so).
    pub async fn reap(&self) {
        let keep = self.options.keep_alive;
        let mut map = self.loaded.lock().await;
        map.retain(|id, (cell, pinned)| {
            let Some(s) = cell.get() else { return true };
            if let Some(why) = s.scheduler.failure() {
                eprintln!("owrun: unloading {id} ({why}): the next request loads it again");
                return false;
            }
            let expired = keep.is_some_and(|keep| {
                !*pinned && s.scheduler.busy() == 0 && s.scheduler.idle_for() >= keep
            });
            if expired {
                eprintln!(
                    "owrun: unloading {id}: unused for {}s",
                    keep.unwrap_or_default().as_secs()
                );
            }
            !expired
        });
    }

    /// Every loaded model.
    pub async fn all(&self) -> Vec<Arc<Served>> {
        let map = self.loaded.lock().await;
        map.values().filter_map(|(c, _)| c.get().cloned()).collect()
    }
}

/// Counts one more while it lives (a load in progress), however the load ends.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Counted(n)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Slots when `--parallel` is not given: as many full-context caches as a quarter of the
/// available memory holds, between 4 and 16.
fn default_slots(engine: &Engine, memory_limit: Option<u64>) -> usize {
    let per_slot = engine.model.cache_bytes_for(engine.model.context());
    let fit = crate::memory::available_bytes(memory_limit)
        .map(|a| (a / 4) as usize / per_slot.max(1))
        .unwrap_or(4);
    fit.clamp(4, 16)
}
