//! Command-line definitions and help texts. How the commands work lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
MODELS:
  A model is a registry name (`owrun list`), hf:owner/name[@revision] for any Hugging Face
  repo, or a path to a local directory in Hugging Face layout.

ENVIRONMENT:
  OWRUN_HOME        owrun's settings and state (config.toml, models.toml, accepted licenses)
  OWRUN_MODELS      an extra registry file
  OWRUN_USE         declare `commercial` use: models whose license forbids it are refused
  HF_ENDPOINT       Hub URL (default https://huggingface.co)
  HF_TOKEN          Hub access token for gated repos (else the file HF_HOME/token)
  HF_HOME, HF_HUB_CACHE   where models are stored (standard Hugging Face cache)
  HF_HUB_OFFLINE=1  never touch the network; use only pulled models

EXIT CODES:
  0  success (also when the reader of stdout goes away, as in `owrun list | head -1`)
  1  runtime failure (network, disk, model)
  2  usage or configuration error (unknown model, bad flag, malformed file)
  3  the model's license must be accepted first and there is no terminal to ask on
  4  the model's license does not allow the use you declared (OWRUN_USE=commercial)";

/// Run open-weights LLMs locally, with their licenses taken seriously.
#[derive(Debug, Parser)]
#[command(name = "owrun", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Extra registry file; repeatable, later files override earlier entries of the same name
    #[arg(long, global = true, value_name = "FILE")]
    pub registry: Vec<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List known models, their licenses and what is pulled
    List(ListArgs),
    /// Show everything known about one model
    Show(ShowArgs),
    /// Download a model's weights, tokenizer and configs from the Hub
    Pull(PullArgs),
    /// Remove a pulled model's files from disk
    Rm(RmArgs),
    /// License catalogue and acceptances
    #[command(subcommand)]
    License(LicenseCommand),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only models whose license matches: `commercial` (allows commercial use, possibly with
    /// conditions), `noncommercial`, `osi` (OSI-approved), or a license id such as `apache-2.0`
    #[arg(long, value_name = "FILTER")]
    pub license: Option<String>,
    /// Only models of this architecture family (llama, mistral, mixtral, phi3, gemma, gemma2,
    /// gemma3, qwen2, qwen3)
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// Only models whose files are all on disk
    #[arg(long)]
    pub pulled: bool,
    /// Print one JSON document instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Registry name, hf:owner/name[@revision], or a local directory
    pub model: String,
    /// Show only the license terms
    #[arg(long)]
    pub license: bool,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Registry name or hf:owner/name[@revision]
    pub model: String,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Registry name or hf:owner/name
    pub model: String,
}

#[derive(Debug, Subcommand)]
pub enum LicenseCommand {
    /// List the licenses owrun knows and what they allow
    List {
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
    /// Show a license's terms, by license id or by model
    Show {
        /// License id (apache-2.0, llama3.2, ...) or a model
        name: String,
    },
    /// Accept the license of a model, so it can be pulled and run without a terminal
    Accept {
        /// Registry name, hf:owner/name, or a local directory
        model: String,
    },
    /// List the licenses you have accepted, with dates
    Accepted {
        /// Print one JSON document
        #[arg(long)]
        json: bool,
    },
}
