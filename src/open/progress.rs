//! Download progress on stderr: a bar for the whole pull and one for the current file on a
//! terminal; a line per file otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::hub::{HubError, Progress};
use crate::store::format_bytes;

/// Progress on stderr: a bar for the whole pull and one for the current file on a terminal;
/// a line per file otherwise.
pub struct Bars {
    multi: MultiProgress,
    pub total: ProgressBar,
    terminal: bool,
}

impl Bars {
    pub fn new() -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        Bars {
            multi,
            total,
            terminal,
        }
    }

    pub fn note(&self, msg: &str) {
        if self.terminal {
            let _ = self.multi.println(format!("owrun: {msg}"));
        } else {
            eprintln!("owrun: {msg}");
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
    }
}

pub struct FileProgress<'a> {
    bars: &'a Bars,
    bar: ProgressBar,
    name: String,
    size: u64,
    pub downloaded: u64,
    started: Instant,
    /// Bytes of this file already counted in the total bar.
    counted: u64,
}

impl<'a> FileProgress<'a> {
    pub fn new(bars: &'a Bars, name: &str, size: u64) -> Self {
        let bar = bars
            .multi
            .insert_before(&bars.total, ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(truncate_name(name, 20));
        FileProgress {
            bars,
            bar,
            name: name.to_string(),
            size,
            downloaded: 0,
            started: Instant::now(),
            counted: 0,
        }
    }

    pub fn finish(self) {
        self.bar.finish_and_clear();
        if !self.bars.terminal {
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "owrun: {} {} in {secs:.1}s ({}/s)",
                self.name,
                format_bytes(self.size),
                format_bytes((self.downloaded as f64 / secs) as u64)
            );
        }
    }
}

impl Progress for FileProgress<'_> {
    fn start(&mut self, offset: u64) {
        if offset > 0 && self.counted == 0 {
            self.bars.note(&format!(
                "resuming {} at {} of {}",
                self.name,
                format_bytes(offset),
                format_bytes(self.size)
            ));
        }
        self.bar.set_position(offset);
        // Keep the total bar honest when a retry restarts from another offset.
        if offset >= self.counted {
            self.bars.total.inc(offset - self.counted);
        } else {
            self.bars
                .total
                .set_position(self.bars.total.position() - (self.counted - offset));
        }
        self.counted = offset;
    }

    fn advance(&mut self, bytes: u64) {
        self.bar.inc(bytes);
        self.bars.total.inc(bytes);
        self.downloaded += bytes;
        self.counted += bytes;
    }

    fn retry(&mut self, err: &HubError, wait: Duration) {
        self.bars.note(&format!(
            "{}: {err}; retrying in {:.1}s",
            self.name,
            wait.as_secs_f64()
        ));
    }
}

fn truncate_name(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let tail: String = name
            .chars()
            .rev()
            .take(max - 1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
