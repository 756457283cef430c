//! owrun: run open-weights LLMs locally, with their licenses taken seriously.
//!
//! `main` parses the command line, dispatches, and turns errors into messages and exit codes.

mod cli;
mod commands;
mod engine;
mod error;
mod hub;
mod license;
mod memory;
mod registry;
mod settings;
mod store;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: a forward pass allocates and frees buffers of
/// megabytes (activations, attention scores), which glibc hands back to the OS and takes again
/// on every call, so the kernel zeroes fresh (huge) pages each time: 17% of a TinyLlama f16
/// prefill. mimalloc keeps them (see `keep_freed_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc never to return freed memory to the OS. By default it does so 10 ms after a
/// free, and the next forward pass faults the same pages back in: 9,400 page faults over six
/// TinyLlama prefills against 1,600 without purging, and 145 against 160 tokens/s. The memory
/// stays as the process's peak, which a runner holding a model reaches on every forward anyway.
fn keep_freed_memory() {
    // mimalloc.h's `mi_option_purge_delay` (the Rust bindings leave it out; mimalloc keeps its
    // option numbers stable, with placeholders for deprecated ones). -1: never purge.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: setting an option is allowed at any time; it takes effect for later frees.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = cli::Cli::parse();
    match commands::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `owrun list | head -1`: the reader left, which is not our failure.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("owrun: error: {}", render_error(&e));
            ExitCode::from(error::exit_code_of(&e))
        }
    }
}

/// The error and its causes on one line each, without repeating a cause that the message above
/// it already contains.
fn render_error(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !out.contains(&c) {
            out.push_str("\n  caused by: ");
            out.push_str(&c);
        }
    }
    out
}
