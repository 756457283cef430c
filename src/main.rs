//! owrun: run open-weights LLMs locally, with their licenses taken seriously.
//!
//! `main` parses the command line, dispatches, and turns errors into messages and exit codes.

mod builtin;
mod cli;
mod commands;
mod engine;
mod error;
#[cfg(test)]
mod fuzz;
mod hub;
mod license;
mod memory;
mod open;
mod registry;
mod server;
mod settings;
mod store;
mod test_hooks;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: a forward pass allocates and frees buffers of
/// megabytes (activations, attention scores), which glibc hands back to the OS and takes again
/// on every call, so the kernel zeroes fresh (huge) pages each time: 17% of a TinyLlama f16
/// prefill. mimalloc keeps them (see `memory::keep_freed_memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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
