//! `owrun serve [MODEL…]`: the OpenAI-compatible server, with models from the registry and the
//! store, behind the license gate.

use std::time::Duration;

use anyhow::Result;

use crate::cli::ServeArgs;
use crate::error::usage;
use crate::open::Opener;
use crate::registry::AdapterRef;
use crate::server::catalog::{Catalog, ServedAdapter};
use crate::server::models::{Models, Options};
use crate::server::{Limits, ServeOptions};

pub fn run(opener: &Opener, args: &ServeArgs) -> Result<()> {
    // Before any model loads: see `memory::keep_freed_memory`.
    crate::memory::serve_returns_idle_memory();
    if args.parallel == Some(0) || args.parallel.is_some_and(|p| p > 256) {
        return Err(usage("--parallel must be between 1 and 256"));
    }
    if args.queue == 0 {
        return Err(usage("--queue must be at least 1"));
    }
    if args.max_models == 0 {
        return Err(usage("--max-models must be at least 1"));
    }
    if args.models.len() > args.max_models {
        return Err(usage(format!(
            "{} models named but --max-models is {}",
            args.models.len(),
            args.max_models
        )));
    }
    let keep_alive = parse_keep_alive(&args.keep_alive)?;
    if args.max_connections == 0 {
        return Err(usage("--max-connections must be at least 1"));
    }
    let limits = Limits {
        header: parse_limit("--header-timeout", &args.header_timeout)?,
        body: parse_limit("--body-timeout", &args.body_timeout)?,
        idle: parse_limit("--idle-timeout", &args.idle_timeout)?,
        max_connections: args.max_connections,
    };
    let body_limit = crate::memory::parse_size(&args.max_body)
        .filter(|&b| b >= 1024)
        .ok_or_else(|| {
            usage(format!(
                "--max-body {:?}: give a size such as 8M",
                args.max_body
            ))
        })?;
    let choices = args.load.choices()?;
    // The kernels' threads, before the server's own threads start.
    crate::engine::use_threads(choices.threads);
    let mut catalog = Catalog::new(opener.clone(), choices, args.models.clone());
    // Models named on the command line are checked now, so a typo or a license stops the
    // start with the usual exit code instead of a server that answers 404.
    // An adapter entry of the registry is served as its base with its adapter, by its own name.
    let mut served_as = Vec::new();
    let mut adapters = Vec::new();
    for name in &args.models {
        let model = opener.resolve(name)?;
        let Some(adapter) = opener.entry_adapter(&model) else {
            served_as.push(catalog.check(name)?.0.display_name());
            continue;
        };
        let base = opener.base_of(&model)?.display_name();
        served_as.push(catalog.check(&base)?.0.display_name());
        let (path, licenses) = opener.pulled_adapter(&adapter)?;
        adapters.push(ServedAdapter {
            name: model.display_name(),
            path,
            scale: 1.0,
            licenses,
            entry: true,
        });
    }
    for (name, adapter, scale) in adapter_specs(&args.lora)? {
        if adapters.iter().any(|a| a.name == name) {
            return Err(usage(format!("--lora: the name {name:?} is taken")));
        }
        let (path, licenses) = opener.pulled_adapter(&adapter)?;
        adapters.push(ServedAdapter {
            name,
            path,
            scale,
            licenses,
            entry: false,
        });
    }
    if !adapters.is_empty() {
        let [model] = &served_as[..] else {
            return Err(usage(format!(
                "LoRA adapters (--lora, or an adapter entry) are for one model named on the \
                 command line ({} named)",
                served_as.len()
            )));
        };
        catalog = catalog.with_adapters(model.clone(), adapters);
    }
    let hooks = opener.settings.test_hooks;
    let models = Models::new(
        catalog,
        Options {
            parallel: args.parallel,
            queue: args.queue,
            keep_alive,
            max_models: args.max_models,
            memory_limit: opener.settings.memory_limit,
            hooks,
        },
    );
    crate::server::serve(
        models,
        ServeOptions {
            host: args.host,
            port: args.port,
            api_key: args.api_key.clone().filter(|k| !k.is_empty()),
            cors_origins: args.cors_origins.clone(),
            body_limit: body_limit as usize,
            limits,
            preload: args.models.clone(),
        },
    )
}

/// `--lora NAME=SPEC`, each: SPEC as `run --lora` takes it (a path or `hf:owner/name`, with
/// `:SCALE`); names unique, usable in `MODEL+NAME`.
fn adapter_specs(specs: &[String]) -> Result<Vec<(String, AdapterRef, f32)>> {
    let mut out: Vec<(String, AdapterRef, f32)> = Vec::new();
    for spec in specs {
        let Some((name, rest)) = spec.split_once('=') else {
            return Err(usage(format!(
                "--lora {spec:?}: give NAME=PATH[:SCALE] (the name requests use)"
            )));
        };
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(usage(format!(
                "--lora {spec:?}: a name is 1 to 64 letters, digits, '-', '_' or '.'"
            )));
        }
        if out.iter().any(|(n, ..)| n == name) {
            return Err(usage(format!("--lora: the name {name:?} is given twice")));
        }
        let (adapter, scale) = crate::registry::resolve_adapter(rest)?;
        out.push((name.to_string(), adapter, scale));
    }
    Ok(out)
}

/// `30s`, `5m`, `1h`, a number of seconds, `0`; `-1` or `forever`: None (never unloaded).
fn parse_keep_alive(s: &str) -> Result<Option<Duration>> {
    let s = s.trim();
    if s == "-1" || s.eq_ignore_ascii_case("forever") {
        return Ok(None);
    }
    parse_duration(s).map(Some).ok_or_else(|| {
        usage(format!(
            "--keep-alive {s:?}: give a duration such as 30s, 5m or 1h, 0, or -1 for never"
        ))
    })
}

/// A time limit of the server's (`--header-timeout 10s`): a duration above zero.
fn parse_limit(flag: &str, s: &str) -> Result<Duration> {
    parse_duration(s.trim())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            usage(format!(
                "{flag} {s:?}: give a duration such as 500ms, 10s or 2m"
            ))
        })
}

/// `500ms`, `30s`, `5m`, `1h`, or a number of seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let n = number.parse::<f64>().ok().filter(|n| n.is_finite())?;
    Duration::try_from_secs_f64(n * scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_durations() {
        assert_eq!(
            parse_keep_alive("5m").unwrap(),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_keep_alive("30").unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_keep_alive("0").unwrap(), Some(Duration::ZERO));
        assert_eq!(parse_keep_alive("-1").unwrap(), None);
        assert!(parse_keep_alive("5 parsecs").is_err());
        assert_eq!(
            parse_limit("--idle-timeout", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_limit("--idle-timeout", "2m").unwrap(),
            Duration::from_secs(120)
        );
        assert!(parse_limit("--idle-timeout", "0").is_err());
        assert!(parse_limit("--idle-timeout", "1e400").is_err());
    }
}
