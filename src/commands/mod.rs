//! One module per subcommand. Each starts from the [`Opener`] (settings and registry), and the
//! commands that run models open them through it; they share nothing else but the terminal
//! rendering of generated text (`display`) and the table printer below.

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::engine::quantize::Scheme;
use crate::open::Opener;
use crate::registry::Registry;
use crate::settings::Settings;

mod bench;
mod chat;
mod display;
mod input;
mod kld;
mod license_cmd;
mod list;
mod pull;
mod quantize;
mod rm;
mod run;
mod serve;
mod show;

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
    let ctx = Opener { settings, registry };
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
