//! The models a server holds: loaded on first request (or at start when named on the command
//! line), shared by every request for them, unloaded after `--keep-alive` without requests,
//! at most `--max-models` at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OnceCell};

use super::catalog::{Card, Catalog, Opened};
use super::error::ApiError;
use super::scheduler::{Capacity, Scheduler};
use crate::engine::generate::sampler::SamplingParams;
use crate::engine::text::Text;
use crate::engine::Engine;

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
    /// Test hooks: a pause before each load, and before each batched step.
    pub load_delay: Option<Duration>,
    pub step_delay: Option<Duration>,
}

/// A loaded model.
pub struct Served {
    pub id: String,
    pub text: Arc<Text>,
    /// The model's sampling defaults, under each request's fields.
    pub sampling: SamplingParams,
    pub context: usize,
    pub scheduler: Scheduler,
    /// Named on the command line: never unloaded.
    pub pinned: bool,
}

type Cell = Arc<OnceCell<Arc<Served>>>;

pub struct Models {
    catalog: Catalog,
    options: Options,
    loaded: Mutex<HashMap<String, (Cell, bool)>>,
    /// The names requests used for each loaded model (resolving a name reads the registry, the
    /// store and the license records: done once, not on every request).
    aliases: Mutex<HashMap<String, String>>,
    loading: AtomicUsize,
    pub stop: Arc<AtomicBool>,
}

impl Models {
    pub fn new(catalog: Catalog, options: Options) -> Self {
        Models {
            catalog,
            options,
            loaded: Mutex::new(HashMap::new()),
            aliases: Mutex::new(HashMap::new()),
            loading: AtomicUsize::new(0),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn cards(&self) -> Vec<Card> {
        self.catalog.cards()
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

    /// The model `name`, loaded first if it is not. `pinned`: kept until the server stops.
    pub async fn get(&self, name: &str, pinned: bool) -> Result<Arc<Served>, ApiError> {
        let known = self.aliases.lock().await.get(name).cloned();
        if let Some(id) = known {
            let map = self.loaded.lock().await;
            if let Some(served) = map.get(&id).and_then(|(cell, _)| cell.get()) {
                return Ok(served.clone());
            }
        }
        let opened = self.catalog.open(name)?;
        let id = opened.id.clone();
        let cell = {
            let mut map = self.loaded.lock().await;
            let entry = map
                .entry(id.clone())
                .or_insert_with(|| (Arc::new(OnceCell::new()), pinned));
            entry.1 |= pinned;
            entry.0.clone()
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
        self.make_room(&opened.id).await?;
        self.loading.fetch_add(1, Ordering::SeqCst);
        let id = opened.id.clone();
        let delay = self.options.load_delay;
        let loaded = tokio::task::spawn_blocking(move || {
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            (opened.load)()
        })
        .await;
        self.loading.fetch_sub(1, Ordering::SeqCst);
        let engine = match loaded {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => return Err(ApiError::internal(format!("cannot load {id}: {e:#}"))),
            Err(e) => return Err(ApiError::internal(format!("loading {id} failed: {e}"))),
        };
        for note in &engine.notes {
            eprintln!("owrun: {id}: {note}");
        }
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
        Ok(Arc::new(Served {
            id,
            context,
            scheduler: Scheduler::start(
                model,
                text.clone(),
                Capacity {
                    slots,
                    queue: self.options.queue,
                },
                self.stop.clone(),
                self.options.step_delay,
            ),
            text,
            sampling,
            pinned,
        }))
    }

    /// Under `--max-models`, unload the idle model unused longest; if every model is busy, a 503.
    async fn make_room(&self, for_id: &str) -> Result<(), ApiError> {
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
                eprintln!("owrun: unloading {id} to make room for {for_id} (--max-models)");
                map.remove(id);
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

    /// Unload models idle longer than the keep-alive (run every second or so).
    pub async fn reap(&self) {
        let Some(keep) = self.options.keep_alive else {
            return;
        };
        let mut map = self.loaded.lock().await;
        map.retain(|id, (cell, pinned)| {
            let Some(s) = cell.get() else { return true };
            let expired = !*pinned && s.scheduler.busy() == 0 && s.scheduler.idle_for() >= keep;
            if expired {
                eprintln!("owrun: unloading {id}: unused for {}s", keep.as_secs());
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

/// Slots when `--parallel` is not given: as many full-context caches as a quarter of the
/// available memory holds, between 4 and 16.
fn default_slots(engine: &Engine, memory_limit: Option<u64>) -> usize {
    let per_slot = engine.model.cache_bytes_for(engine.model.context());
    let fit = crate::memory::available_bytes(memory_limit)
        .map(|a| (a / 4) as usize / per_slot.max(1))
        .unwrap_or(4);
    fit.clamp(4, 16)
}
