//! Command-line definitions and help texts. How the commands work lives in `commands/`.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::generate::sampler::Overrides;
use crate::engine::quantize::Scheme;
use crate::engine::{DTypeChoice, DeviceChoice, KvType};
use crate::error::usage;
use crate::open::LoadChoices;
use crate::registry::{resolve_adapter, AdapterRef};

const AFTER_HELP: &str = "\
MODELS:
  A model is a registry name (`owrun list`), hf:owner/name[@revision] for any Hugging Face
  repo, a path to a local directory in Hugging Face layout, or a .gguf file. NAME:QUANT
  (llama3-8b:q4_k_m) and hf:owner/repo:QUANT run that quantization's GGUF file from a repo.
  --lora takes a LoRA adapter's folder, GGUF file or hf:owner/name; the adapter's license
  applies beside the model's.

ENVIRONMENT:
  OWRUN_HOME        owrun's settings and state (config.toml, models.toml, accepted licenses)
  OWRUN_MODELS      an extra registry file
  OWRUN_USE         declare `commercial` use: models whose license forbids it are refused
  HF_ENDPOINT       Hub URL (default https://huggingface.co)
  HF_TOKEN          Hub access token for gated repos (else the file HF_HOME/token)
  HF_HOME, HF_HUB_CACHE   where models are stored (standard Hugging Face cache)
  HF_HUB_OFFLINE=1  never touch the network; use only pulled models
  OWRUN_API_KEY     the key `owrun serve` requires (as --api-key)
  OWRUN_MEMORY_LIMIT  memory owrun may use (e.g. 8G; default: what is available); a model
                    that does not fit runs quantized

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
    /// Generate text from a prompt (argument, stdin, or both) and stream it to stdout
    Run(Box<RunArgs>),
    /// Talk with a model in the terminal (or answer stdin line by line)
    Chat(Box<ChatArgs>),
    /// Measure prefill and decode speed (tokens/s), reported like llama-bench
    Bench(BenchArgs),
    /// Measure how far a 16-bit (or quantized) model drifts from its f32 self over a text: KL
    /// divergence, top-1 agreement and perplexity, as llama-perplexity's KLD mode reports them
    Kld(KldArgs),
    /// Write a model as a GGUF file (quantized with --quant) that llama.cpp and owrun load
    Quantize(QuantizeArgs),
    /// Serve models over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions,
    /// /v1/models, /health), many clients at once
    Serve(Box<ServeArgs>),
    /// Print a shell completion script (e.g. `owrun completions bash > ~/.local/share/bash-completion/completions/owrun`)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
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
    /// Registry name, hf:owner/name[@revision], a local directory or .gguf file; a LoRA
    /// adapter (folder, .gguf file, pulled hf: repo, adapter entry) is described as one
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

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Registry name (NAME:QUANT for a GGUF file), hf:owner/name[@revision][:QUANT], a local
    /// directory or a .gguf file (pulled first if needed)
    pub model: String,
    /// The prompt; with text on stdin too, stdin comes first, then this
    #[arg(num_args = 0..)]
    pub prompt: Vec<String>,
    /// System prompt
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// A JSON array of {role, content} messages to start from (multi-turn prompts)
    #[arg(long, value_name = "FILE")]
    pub messages: Option<PathBuf>,
    /// Send the prompt as it is, without the model's chat template
    #[arg(long)]
    pub raw: bool,
    /// Do not print a reasoning model's thinking, only its answer
    #[arg(long)]
    pub hide_thinking: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Print one JSON document (text, token ids, finish reason, usage, timings) instead of
    /// streaming text
    #[arg(long)]
    pub json: bool,
    /// Print timings on stderr after the answer
    #[arg(long, short)]
    pub verbose: bool,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

/// Sampling flags; unset ones come from the model's generation_config.json.
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// Randomness; 0 picks the most likely token every time (greedy)
    #[arg(long, short = 't', value_name = "T")]
    pub temperature: Option<f32>,
    /// Sample among the K most likely tokens (0: all)
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to P (1: all)
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one (0: off)
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1: off)
    #[arg(long, value_name = "X")]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens --repeat-penalty looks at
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<usize>,
    /// Random seed: the same seed and settings give the same output
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop after N new tokens (default: at the end of the context window)
    #[arg(long, short = 'n', value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Stop when this text appears (repeatable); it is not printed
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The flags the user gave, over the model's defaults.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
            ..Overrides::default()
        }
    }
}

/// Where and how the model runs.
#[derive(Debug, Args, Clone)]
pub struct LoadArgs {
    /// auto (a GPU if this build has one and it is present), cpu, cuda, cuda:N or metal
    #[arg(long, default_value = "auto", value_name = "DEVICE", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Dtype to hold the weights in (auto: as the checkpoint stores them; 16-bit weights stay
    /// 16-bit on the CPU too, where activations are f32)
    #[arg(long, value_enum, default_value_t = DTypeArg::Auto, value_name = "DTYPE")]
    pub dtype: DTypeArg,
    /// Quantize the weights at load: q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m or
    /// q5_k_m (llama.cpp's types and mixes). Done once per model; the result is cached beside it
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    pub quant: Option<Scheme>,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Tokens a sequence may hold (prompt and answer). Default: the model's context, reduced
    /// to what fits in the available memory (said on stderr)
    #[arg(long = "ctx", value_name = "N")]
    pub context: Option<usize>,
    /// How the KV cache stores keys and values on the CPU: f16 (default, as llama.cpp), f32,
    /// bf16, q8_0 or q4_0 (smaller, slightly less exact; llama.cpp's -ctk/-ctv)
    #[arg(long, value_name = "TYPE", default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvType,
}

/// LoRA adapters to run the model with.
#[derive(Debug, Args, Clone, Default)]
pub struct AdapterArgs {
    /// Apply a LoRA adapter at run time, beside the unchanged base weights (repeatable; several
    /// add up): a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), a GGUF
    /// adapter from llama.cpp's convert_lora_to_gguf.py, or hf:owner/name[@revision] for a Hub
    /// repo of either (pulled first if needed, through its license); SCALE multiplies the
    /// adapter's own scale (default 1)
    #[arg(long = "lora", value_name = "PATH|hf:REPO[:SCALE]")]
    pub lora: Vec<String>,
    /// Merge the --lora adapters into the weights at load (W + scale·B·A, then held in the
    /// weights' dtype, or quantized again to their block type) instead of running them beside:
    /// as fast as the base, slightly less exact on a quantized base
    #[arg(long, requires = "lora")]
    pub lora_merge: bool,
}

impl AdapterArgs {
    /// Whether the adapters are merged into the weights (the adapters themselves are resolved
    /// by the opener: `specs`).
    pub fn choose(&self, choices: &mut LoadChoices) {
        choices.merge_adapters = self.lora_merge;
    }

    /// The adapters named, each with its multiplier.
    pub fn specs(&self) -> anyhow::Result<Vec<(AdapterRef, f32)>> {
        self.lora.iter().map(|s| resolve_adapter(s)).collect()
    }
}

/// `--lora PATH[:SCALE]` values as (path, multiplier).
pub fn lora_specs(specs: &[String]) -> anyhow::Result<Vec<(std::path::PathBuf, f32)>> {
    specs
        .iter()
        .map(|s| crate::engine::format::lora::parse_spec(s).map_err(|e| usage(e.to_string())))
        .collect()
}

impl LoadArgs {
    /// The flags as the model opener takes them.
    pub fn choices(&self) -> anyhow::Result<LoadChoices> {
        let threads = match self.threads {
            Some(n) => {
                Some(NonZeroUsize::new(n).ok_or_else(|| usage("--threads must be at least 1"))?)
            }
            None => None,
        };
        Ok(LoadChoices {
            threads,
            device: self.device,
            dtype: self.dtype.into(),
            quant: self.quant,
            kv_type: self.kv_type,
            context: match self.context {
                Some(0) => return Err(usage("--ctx must be at least 1")),
                n => n,
            },
            adapters: Vec::new(),
            merge_adapters: false,
        })
    }
}

#[derive(Debug, Args)]
#[command(after_help = "\
EXAMPLES:
  owrun serve stories260k                      # the built-in model, on http://127.0.0.1:11435
  owrun serve llama3.2-1b --parallel 8         # 8 sequences decoded together
  OWRUN_API_KEY=secret owrun serve --host 0.0.0.0 qwen2.5-7b

  curl http://127.0.0.1:11435/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{\"model\": \"stories260k\", \"messages\": [{\"role\": \"user\", \"content\": \"Once upon a time\"}]}'

Models load on their first request from what is pulled (the server never downloads), and go
after --keep-alive without requests. A model whose license needs acceptance is refused (403)
until `owrun license accept NAME`; with OWRUN_USE=commercial, non-commercial models are refused.

SAFE BY DEFAULT:
  Clients may name registry models, hf: repos already pulled, and the models named here (paths
  included), never another path. Web pages are kept out: a request with an Origin header is
  refused unless --cors-origin allows it, a POST must be Content-Type: application/json, and
  the Host header must be one name (on a loopback address, a loopback name). Slow and idle
  clients are cut off (--header-timeout, --body-timeout, --idle-timeout), and at most
  --max-connections are open at once.")]
pub struct ServeArgs {
    /// Models to load at start and keep loaded (others load on their first request)
    #[arg(value_name = "MODEL")]
    pub models: Vec<String>,
    /// Register a LoRA adapter for the model named on the command line (repeatable): a PEFT
    /// folder, a GGUF adapter or hf:owner/name[@revision] already pulled (the server never
    /// downloads), SCALE multiplying its scale. The model loads once with all of them; a
    /// request applies one by naming the model `MODEL+NAME`, or any mix with its `lora` field
    /// (`[{"id": NAME or number, "scale": 0.5}]`, as llama-server's). Requests with different
    /// adapters are batched together. A registry adapter entry given as the MODEL is served
    /// the same way: its base with its adapter, by its own name
    #[arg(long = "lora", value_name = "NAME=PATH|hf:REPO[:SCALE]")]
    pub lora: Vec<String>,
    /// Address to listen on. Anything but a loopback address makes the server reachable from
    /// other machines: set --api-key
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: std::net::IpAddr,
    /// Port to listen on (0: any free port, printed at start)
    #[arg(long, default_value_t = 11435, value_name = "PORT")]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every request but /health
    #[arg(
        long,
        env = "OWRUN_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// Let web pages from this origin call the server (repeatable; `*` for any). Requests from
    /// other pages (with another Origin header) are refused (403), and no CORS headers are sent
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Sequences decoded together per model (default: what memory allows, 4 to 16)
    #[arg(long, value_name = "N")]
    pub parallel: Option<usize>,
    /// Requests that may wait per model when every slot is busy; beyond it, 503 with Retry-After
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub queue: usize,
    /// Unload a model after this long without requests: 30s, 5m, 1h, 0 (at once), -1 (never)
    #[arg(
        long,
        default_value = "5m",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub keep_alive: String,
    /// Most models loaded at once; the one unused longest makes room for a new one
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub max_models: usize,
    /// Largest request body accepted (413 beyond)
    #[arg(long, default_value = "8M", value_name = "SIZE")]
    pub max_body: String,
    /// Time a client has to send a request's headers: from connecting for its first request,
    /// from the first byte for the next ones (the connection is closed beyond)
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub header_timeout: String,
    /// Time a client has to send a request's body once its headers are in (408 beyond)
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub body_timeout: String,
    /// Time a kept-alive connection may stay silent between requests, and an answer may wait
    /// for a client that does not read it (closed beyond)
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub idle_timeout: String,
    /// Most connections open at once; one more is answered 503 and closed
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_connections: usize,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Registry name, hf:owner/name[@revision], or a local directory (must be pulled)
    pub model: String,
    /// Prompt length for the prefill test, in tokens
    #[arg(short = 'p', long, default_value_t = 128, value_name = "N")]
    pub prompt_tokens: usize,
    /// Tokens to generate for the decode test
    #[arg(short = 'n', long, default_value_t = 64, value_name = "N")]
    pub gen_tokens: usize,
    /// Repetitions of each test
    #[arg(short = 'r', long, default_value_t = 3, value_name = "N")]
    pub repetitions: usize,
    /// Tokens already in the KV cache when each test starts (llama-bench's -d): how fast a
    /// long conversation or document goes on
    #[arg(short = 'd', long, default_value_t = 0, value_name = "N")]
    pub depth: usize,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Registry name, hf:owner/name[@revision], or a local directory (safetensors)
    pub model: String,
    /// q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m or q5_k_m (without it: the
    /// weights as stored, 16- or 32-bit)
    #[arg(long, value_name = "QUANT", value_parser = parse_quant)]
    pub quant: Option<Scheme>,
    /// Merge a LoRA adapter into the weights before quantizing (repeatable; several add up):
    /// a PEFT adapter folder or a GGUF adapter, SCALE multiplying its own scale (default 1)
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// The GGUF file to write
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Replace FILE if it exists
    #[arg(long)]
    pub force: bool,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

#[derive(Debug, Args)]
pub struct KldArgs {
    /// Registry name, hf:owner/name[@revision], or a local directory
    pub model: String,
    /// The text to score (default: a built-in story of about 240 words)
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk; each chunk is scored as a fresh sequence
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub chunk: usize,
    /// The format to measure (--dtype), against the same weights in f32
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Print one JSON document
    #[arg(long)]
    pub json: bool,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
IN THE CHAT:
  A line of \"\"\" starts and ends a multi-line message. Ctrl-C stops an answer (what was
  said so far stays in the conversation); Ctrl-D or /exit leaves. /help lists the commands:
  /system, /set, /show, /clear, /save, /load, /stats, /exit.

When stdin is not a terminal, each line is a user message and only the answers are printed.")]
pub struct ChatArgs {
    /// Registry name, hf:owner/name[@revision], or a local directory (pulled first if needed)
    pub model: String,
    /// System prompt
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Do not print a reasoning model's thinking, only its answer
    #[arg(long)]
    pub hide_thinking: bool,
    /// Do not read or write the input history ($OWRUN_HOME/chat_history)
    #[arg(long)]
    pub no_history: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub adapters: AdapterArgs,
    /// Print timings on stderr after each answer
    #[arg(long, short)]
    pub verbose: bool,
    /// Accept the model's license without asking (the acceptance is recorded)
    #[arg(long)]
    pub accept_license: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    Auto,
    F32,
    F16,
    Bf16,
}

impl From<DTypeArg> for DTypeChoice {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::Auto => DTypeChoice::Auto,
            DTypeArg::F32 => DTypeChoice::F32,
            DTypeArg::F16 => DTypeChoice::F16,
            DTypeArg::Bf16 => DTypeChoice::BF16,
        }
    }
}

fn parse_quant(spec: &str) -> Result<Scheme, String> {
    Scheme::parse(spec).ok_or_else(|| {
        let names: Vec<String> = Scheme::ALL
            .iter()
            .map(|s| s.name().to_lowercase())
            .collect();
        format!("expected one of {}", names.join(", "))
    })
}

fn parse_kv_type(spec: &str) -> Result<KvType, String> {
    KvType::parse(spec.trim()).ok_or_else(|| format!("expected one of {}", KvType::NAMES))
}

fn parse_device(spec: &str) -> Result<DeviceChoice, String> {
    let spec = spec.trim().to_ascii_lowercase();
    match spec.as_str() {
        "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "metal" => Ok(DeviceChoice::Metal),
        "cuda" => Ok(DeviceChoice::Cuda(0)),
        s => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceChoice::Cuda)
            .ok_or_else(|| "expected auto, cpu, cuda, cuda:N or metal".to_string()),
    }
}
