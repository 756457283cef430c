//! `owrun chat MODEL`: a conversation in the terminal, or line by line from stdin.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustyline::error::ReadlineError;

use super::display::{generate_shown, note_folded_system, show_notes, Shown};
use super::input::read_messages;
use crate::cli::ChatArgs;
use crate::engine::generate::decoding::{Finish, GenerateParams, Timings};
use crate::engine::generate::sampler::{Sampler, SamplingParams};
use crate::engine::generate::session::Session;
use crate::engine::text::template::Message;
use crate::engine::Engine;
use crate::open::Opener;
use crate::settings::write_atomic;

const HELP: &str = "\
/system TEXT       set the system prompt (without TEXT: show it)
/set KEY VALUE     temperature, top-k, top-p, min-p, repeat-penalty, seed, max-tokens
/show              model, license, parameters, context used
/clear             start a new conversation (the system prompt stays)
/save FILE         save the conversation as JSON messages (what `owrun run --messages` reads)
/load FILE         load a conversation saved with /save
/stats             the last answer's time to first token, prefill and decode speed
/exit              leave (also Ctrl-D)
A line of \"\"\" starts and ends a multi-line message. Ctrl-C stops an answer.";

struct Stats {
    timings: Timings,
    new_prompt_tokens: usize,
    reused_tokens: usize,
    generated: usize,
}

struct Chat {
    engine: Engine,
    session: Session,
    messages: Vec<Message>,
    params: SamplingParams,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    hide_thinking: bool,
    colour: bool,
    verbose: bool,
    cancel: Arc<AtomicBool>,
    told_overflow: bool,
    told_folded: bool,
    last: Option<Stats>,
    /// A test hook: slow answers down, so tests can interrupt one mid-way.
    delay: Option<std::time::Duration>,
    name: String,
    license_line: String,
}

pub fn run(opener: &Opener, args: &ChatArgs) -> Result<()> {
    let mut choices = args.load.choices()?;
    args.adapters.choose(&mut choices);
    let adapters = args.adapters.specs()?;
    let model = opener.resolve(&args.model)?;
    let (path, adapters) = opener.ready_with_adapters(&model, &adapters, args.accept_license)?;
    choices.adapters = adapters;
    let mut engine = opener.load(&path, &choices)?;
    show_notes(&engine);
    let snapshot = opener.local_snapshot(&model);
    let license_line = opener
        .licenses(&model, snapshot.as_ref())
        .iter()
        .map(|l| format!("{} ({})", l.name, l.id))
        .collect::<Vec<_>>()
        .join(" + ");
    let interactive = std::io::stdin().is_terminal();
    let mut chat = Chat {
        params: args.sampling.overrides().apply(engine.sampling.clone()),
        session: Session::new(&mut engine.model),
        engine,
        messages: args
            .system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect(),
        max_tokens: args.sampling.max_tokens,
        stop: args.sampling.stop.clone(),
        hide_thinking: args.hide_thinking,
        colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        verbose: args.verbose,
        cancel: Arc::new(AtomicBool::new(false)),
        told_overflow: false,
        told_folded: false,
        last: None,
        delay: opener.settings.test_hooks.token_delay,
        name: model.display_name(),
        license_line,
    };
    if interactive {
        let history = (!args.no_history).then(|| opener.settings.chat_history_file());
        chat.interactive(history)
    } else {
        chat.piped()
    }
}

impl Chat {
    /// stdin is not a terminal: every line is a user message; print only the answers.
    fn piped(&mut self) -> Result<()> {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let line = line.context("cannot read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            self.answer(line)?;
        }
        Ok(())
    }

    fn interactive(&mut self, history: Option<std::path::PathBuf>) -> Result<()> {
        let cancel = self.cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C handler")?;
        // The prompt and line editing go to the terminal itself, never to stdout.
        let config = rustyline::Config::builder()
            .behavior(rustyline::config::Behavior::PreferTerm)
            .auto_add_history(false)
            .build();
        let mut rl = rustyline::DefaultEditor::with_config(config)?;
        if let Some(h) = &history {
            let _ = rl.load_history(h);
        }
        eprintln!(
            "owrun chat: {} — {}\nType a message, /help for commands, Ctrl-D to leave.",
            self.name, self.license_line
        );
        loop {
            let line = match rl.readline(">>> ") {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    eprintln!("(Ctrl-D or /exit leaves the chat)");
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            };
            let text = if line.trim() == "\"\"\"" {
                match read_block(&mut rl)? {
                    Some(t) => t,
                    None => break,
                }
            } else {
                line
            };
            if text.trim().is_empty() {
                continue;
            }
            let _ = rl.add_history_entry(text.as_str());
            if let Some(h) = &history {
                if let Some(parent) = h.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = rl.save_history(h);
            }
            if let Some(cmd) = text.trim_start().strip_prefix('/') {
                match self.command(cmd) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        eprintln!("owrun: {e:#}");
                        continue;
                    }
                }
            }
            if let Err(e) = self.answer(text) {
                if crate::error::is_broken_pipe(&e) {
                    return Err(e);
                }
                eprintln!("owrun: error: {e:#}");
            }
        }
        Ok(())
    }

    /// A slash command; returns false to leave the chat.
    fn command(&mut self, cmd: &str) -> Result<bool> {
        let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let rest = rest.trim();
        match name {
            "help" | "?" => eprintln!("{HELP}"),
            "exit" | "bye" | "quit" => return Ok(false),
            "system" if rest.is_empty() => match self.messages.first() {
                Some(m) if m.role == "system" => eprintln!("{}", m.content),
                _ => eprintln!("(no system prompt)"),
            },
            "system" => {
                self.messages.retain(|m| m.role != "system");
                self.messages
                    .insert(0, Message::new("system", rest.to_string()));
                eprintln!("(system prompt set)");
            }
            "set" => self.set(rest)?,
            "show" => {
                let p = &self.params;
                eprintln!(
                    "model:    {}\nlicense:  {}\ncontext:  {} of {} tokens used\n\
                     sampling: temperature {} top-k {} top-p {} min-p {} repeat-penalty {} seed {} max-tokens {}",
                    self.name,
                    self.license_line,
                    self.session.cached_tokens(),
                    self.engine.model.context(),
                    p.temperature,
                    p.top_k,
                    p.top_p,
                    p.min_p,
                    p.repeat_penalty,
                    p.seed,
                    self.max_tokens
                        .map_or("until the end of the answer".into(), |n| n.to_string()),
                );
            }
            "clear" => {
                self.messages.retain(|m| m.role == "system");
                self.session.reset(&mut self.engine.model)?;
                self.told_overflow = false;
                eprintln!("(new conversation)");
            }
            "save" => {
                anyhow::ensure!(!rest.is_empty(), "usage: /save FILE");
                let json = serde_json::to_string_pretty(&self.messages)?;
                write_atomic(std::path::Path::new(rest), json.as_bytes())?;
                eprintln!("(saved {} messages to {rest})", self.messages.len());
            }
            "load" => {
                anyhow::ensure!(!rest.is_empty(), "usage: /load FILE");
                self.messages = read_messages(std::path::Path::new(rest))?;
                self.session.reset(&mut self.engine.model)?;
                eprintln!("(loaded {} messages from {rest})", self.messages.len());
            }
            "stats" => match &self.last {
                Some(s) => eprintln!("{}", describe(s)),
                None => eprintln!("(no answer yet)"),
            },
            other => eprintln!("unknown command /{other}: /help lists the commands"),
        }
        Ok(true)
    }

    fn set(&mut self, rest: &str) -> Result<()> {
        let (key, value) = rest
            .split_once(char::is_whitespace)
            .map(|(k, v)| (k, v.trim()))
            .context("usage: /set KEY VALUE (see /help)")?;
        let bad = || anyhow::anyhow!("/set {key}: {value:?} is not a valid value");
        let p = &mut self.params;
        match key {
            "temperature" => p.temperature = value.parse().map_err(|_| bad())?,
            "top-k" | "top_k" => p.top_k = value.parse().map_err(|_| bad())?,
            "top-p" | "top_p" => p.top_p = value.parse().map_err(|_| bad())?,
            "min-p" | "min_p" => p.min_p = value.parse().map_err(|_| bad())?,
            "repeat-penalty" => p.repeat_penalty = value.parse().map_err(|_| bad())?,
            "seed" => p.seed = value.parse().map_err(|_| bad())?,
            "max-tokens" | "max_tokens" => {
                self.max_tokens = Some(value.parse().map_err(|_| bad())?)
            }
            other => anyhow::bail!("/set: unknown parameter {other} (see /help)"),
        }
        eprintln!("({key} = {value})");
        Ok(())
    }

    /// Answer one user message, streaming to stdout.
    fn answer(&mut self, text: String) -> Result<()> {
        self.messages.push(Message::new("user", text));
        let context = self.engine.model.context();
        // Room kept for the answer when deciding whether the conversation still fits.
        let reserve = self
            .max_tokens
            .unwrap_or(context / 4)
            .min(context / 4)
            .max(1);
        let turn = loop {
            let turn =
                self.session
                    .prepare(&mut self.engine.model, &self.engine.text, &self.messages)?;
            if turn.prompt.tokens.len() + reserve <= context {
                break turn;
            }
            // Drop the oldest exchange, never the system prompt nor the new message.
            let first = self.messages.iter().position(|m| m.role != "system");
            match first {
                Some(i) if i + 1 < self.messages.len() => {
                    self.messages.remove(i);
                    while self.messages.len() > i + 1 && self.messages[i].role == "assistant" {
                        self.messages.remove(i);
                    }
                    self.session.reset(&mut self.engine.model)?;
                    if !self.told_overflow {
                        eprintln!(
                            "owrun: the conversation no longer fits the context window ({context} \
                             tokens): dropping the oldest turns"
                        );
                        self.told_overflow = true;
                    }
                }
                _ => {
                    self.messages.pop();
                    anyhow::bail!(
                        "this message does not fit the context window: {} tokens, the model \
                         has {context}",
                        turn.prompt.tokens.len()
                    );
                }
            }
        };
        if turn.prompt.folded_system && !self.told_folded {
            note_folded_system();
            self.told_folded = true;
        }
        self.cancel.store(false, Ordering::SeqCst);
        let sampler = Sampler::new(self.params.clone());
        let eos = self.engine.text.eos.clone();
        let params = GenerateParams {
            max_tokens: self.max_tokens,
            stop: &self.stop,
            eos: &eos,
            cancel: Some(&self.cancel),
        };
        let mut out = std::io::stdout().lock();
        let mut shown = Shown::new(
            true,
            self.hide_thinking,
            self.colour,
            turn.prompt.opens_thinking,
        );
        let delay = self.delay;
        let gen = generate_shown(
            &mut self.engine,
            self.session.seq(),
            sampler,
            turn.new_tokens(),
            &params,
            &mut shown,
            &mut out,
            &mut |_| {
                if let Some(d) = delay {
                    std::thread::sleep(d);
                }
            },
        )?;
        if !shown.answer.ends_with('\n') {
            writeln!(out)?;
        }
        out.flush()?;
        if gen.finish == Finish::Cancelled {
            eprintln!("(interrupted)");
        }
        // The next turn cuts the cache back to what its prompt shares with it (a stop string's
        // tokens, or an answer the template rewrites, are simply not shared).
        self.session.record(&turn, &gen);
        self.messages.push(Message::new("assistant", shown.answer));
        let stats = Stats {
            timings: gen.timings,
            new_prompt_tokens: turn.new_tokens().len(),
            reused_tokens: turn.start,
            generated: gen.tokens.len(),
        };
        if self.verbose {
            eprintln!("{}", describe(&stats));
        }
        self.last = Some(stats);
        Ok(())
    }
}

fn describe(s: &Stats) -> String {
    format!(
        "time to first token {:.3}s, prompt {} new tokens ({} reused from the cache) at {:.1} tok/s, \
         {} generated at {:.1} tok/s",
        s.timings.time_to_first_token_s,
        s.new_prompt_tokens,
        s.reused_tokens,
        s.timings.prefill_tokens_per_s,
        s.generated,
        s.timings.decode_tokens_per_s
    )
}

/// The lines of a `"""` block, up to the closing `"""`. None at end of input.
fn read_block(rl: &mut rustyline::DefaultEditor) -> Result<Option<String>> {
    let mut lines = Vec::new();
    loop {
        match rl.readline("... ") {
            Ok(l) if l.trim() == "\"\"\"" => return Ok(Some(lines.join("\n"))),
            Ok(l) => lines.push(l),
            Err(ReadlineError::Interrupted) => return Ok(Some(String::new())),
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}
