//! Requests' own work (parsing a body, rendering a prompt, tokenizing) on a few threads of its
//! own, off the async threads.
//!
//! On the two async threads, a large body or a long prompt would stall every other client, the
//! health check included. On tokio's blocking pool, a burst of clients would each get a thread
//! of its own, and the allocator keeps what every thread has used (owrun tells mimalloc never to
//! return freed memory, see `memory::keep_freed_memory`): parsing a 100 KB body left about
//! 10 MB behind on each thread that did it, 150 MB after 24 such requests at once. A fixed pool,
//! one thread per CPU, bounds both: the rest wait their turn.

use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{Context, Result};

use super::error::ApiError;
use super::scheduler::panic_message;

pub struct Work {
    pool: rayon::ThreadPool,
}

impl Work {
    pub fn new() -> Result<Work> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cpus.max(2))
            .thread_name(|i| format!("owrun-request-{i}"))
            .build()
            .context("cannot start the server's request threads")?;
        Ok(Work { pool })
    }

    /// Each of the pool's threads hands back the memory it freed (see `memory::trim`).
    pub fn trim(&self) {
        self.pool.spawn_broadcast(|_| {
            crate::memory::trim_if_asked();
        });
    }

    /// Run `work` on the pool and wait for it; a panic in it is this request's 500 (`what`
    /// names the work).
    pub async fn run<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.pool.spawn(move || {
            // A panic must not reach rayon, which would abort the process.
            let _ = done.send(catch_unwind(AssertUnwindSafe(work)));
        });
        match result.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(ApiError::internal(format!(
                "{what} failed: {}",
                panic_message(&*panic)
            ))),
            Err(_) => Err(ApiError::internal(format!("{what} did not finish"))),
        }
    }
}
