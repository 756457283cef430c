//! One module per subcommand. They share the [`Ctx`] (settings and registry) and nothing else.

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::engine::quant::Scheme;
use crate::license::{self, License};
use crate::registry::{ModelRef, Registry};
use crate::settings::Settings;
use crate::store::{Snapshot, Store};

mod bench;
mod chat;
mod display;
mod kld;
mod license_cmd;
mod list;
pub mod pull;
mod quantize;
mod rm;
mod run;
mod serve;
mod show;

/// What every command starts from.
pub struct Ctx {
    pub settings: Settings,
    pub registry: Registry,
}

impl Ctx {
    pub fn store(&self) -> Store {
        Store::new(self.settings.hub_cache.clone())
    }

    pub fn resolve(&self, name: &str) -> Result<ModelRef> {
        crate::registry::resolve(&self.registry, name)
    }

    /// The folder a model runs from, if it is on disk and complete.
    pub fn local_snapshot(&self, model: &ModelRef) -> Option<Snapshot> {
        match model {
            ModelRef::Local { path } => Some(Snapshot {
                dir: path.clone(),
                commit: None,
            }),
            ModelRef::Registry { entry, .. } if entry.builtin.is_some() => {
                let asset = crate::builtin::find(entry.builtin.as_deref()?)?;
                match asset.folder_in(&self.settings.data_dir) {
                    Ok(dir) => Some(Snapshot { dir, commit: None }),
                    Err(e) => {
                        eprintln!("owrun: {e:#}");
                        None
                    }
                }
            }
            _ => {
                let (repo, revision) = model.hub_repo()?;
                let repo = self.store().repo(repo);
                match model.gguf() {
                    Some(tag) => repo.complete_gguf_snapshot(revision, tag),
                    None => repo.complete_snapshot(revision),
                }
            }
        }
    }
}

pub fn dispatch(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "owrun", &mut std::io::stdout());
        return Ok(());
    }
    let settings = Settings::from_env()?;
    let mut explicit = Vec::new();
    explicit.extend(settings.env_registry());
    explicit.extend(cli.registry.iter().cloned());
    let registry = Registry::load(&settings.user_registry(), &explicit)?;
    let ctx = Ctx { settings, registry };
    match cli.command {
        Command::List(args) => list::run(&ctx, &args),
        Command::Show(args) => show::run(&ctx, &args),
        Command::Pull(args) => pull::run(&ctx, &args),
        Command::Rm(args) => rm::run(&ctx, &args),
        Command::License(cmd) => license_cmd::run(&ctx, cmd),
        Command::Run(args) => run::run(&ctx, &args),
        Command::Bench(args) => bench::run(&ctx, &args),
        Command::Kld(args) => kld::run(&ctx, &args),
        Command::Quantize(args) => quantize::run(&ctx, &args),
        Command::Chat(args) => chat::run(&ctx, &args),
        Command::Serve(args) => serve::run(&ctx, &args),
        Command::Completions { .. } => unreachable!("handled before the settings load"),
    }
}

/// The key acceptances of this model are recorded under: its Hub repo, or its directory.
pub fn acceptance_key(model: &ModelRef) -> String {
    match model {
        ModelRef::Local { path } => std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        _ => model
            .hub_repo()
            .map(|(r, _)| r.to_string())
            .unwrap_or_default(),
    }
}

/// The license terms that apply to a model: the registry's ids, plus the license its model card
/// declares when the card is on disk and says something else. A model with neither is "unknown".
pub fn licenses_of(model: &ModelRef, snapshot: Option<&Snapshot>) -> Vec<License> {
    let mut ids: Vec<String> = match model {
        ModelRef::Registry { entry, .. } => entry.license_ids(),
        _ => Vec::new(),
    };
    if let Some(card_id) = snapshot
        .and_then(|s| std::fs::read_to_string(s.dir.join("README.md")).ok())
        .and_then(|text| license::license_from_model_card(&text))
    {
        if !ids.contains(&card_id) {
            ids.push(card_id);
        }
    }
    // A GGUF file says its license in its metadata (general.license), as converters copy it
    // from the model card.
    if let Some(id) = snapshot
        .filter(|s| run::is_gguf(&s.dir))
        .and_then(|s| crate::engine::gguf::GgufFile::open(&s.dir).ok())
        .and_then(|g| match g.meta("general.license") {
            Some(candle_core::quantized::gguf_file::Value::String(l)) => Some(l.to_lowercase()),
            _ => None,
        })
    {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        ids.push("unknown".into());
    }
    ids.iter().map(|id| license::lookup(id)).collect()
}

/// What the weights take in 16 bits and in each quantization `--quant` offers.
pub fn variant_sizes(params: u64) -> Vec<(String, u64)> {
    let mut v = vec![("bf16".to_string(), params * 2)];
    for s in [Scheme::Q8_0, Scheme::Q6K, Scheme::Q5KM, Scheme::Q4KM] {
        v.push((
            s.name().to_string(),
            (params as f64 * s.bits_per_weight() / 8.0) as u64,
        ));
    }
    v
}

/// Print a table with left-aligned columns, the header first.
pub fn print_table(out: &mut impl std::io::Write, rows: &[Vec<String>]) -> std::io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
