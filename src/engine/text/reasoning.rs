//! Reasoning models (DeepSeek-R1 distills, Qwen3) think inside `<think> … </think>` before they
//! answer; R1's chat template even opens the `<think>` in the prompt. This splits the generated
//! text into reasoning and answer as it streams, holding back only what could be a tag.

use super::held_back::held_back;

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Answer(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Nothing seen yet: the text may still open with `<think>`.
    Start,
    Thinking,
    Answering,
}

pub struct Splitter {
    state: State,
    pending: String,
}

impl Splitter {
    /// `prefilled`: the prompt ends inside an opened `<think>` (the template wrote it).
    pub fn new(prefilled: bool) -> Self {
        Splitter {
            state: if prefilled {
                State::Thinking
            } else {
                State::Start
            },
            pending: String::new(),
        }
    }

    /// Whether the rendered prompt leaves the model inside a `<think>` block.
    pub fn prompt_opens_thinking(prompt: &str) -> bool {
        prompt.trim_end().ends_with(OPEN)
    }

    pub fn feed(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.pending.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(OPEN) {
                        self.pending = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(trimmed) {
                        return out; // could still become `<think>`
                    } else {
                        self.state = State::Answering;
                    }
                }
                State::Thinking => {
                    if let Some(at) = self.pending.find(CLOSE) {
                        let reasoning = self.pending[..at].to_string();
                        self.pending = self.pending[at + CLOSE.len()..].to_string();
                        if !reasoning.is_empty() {
                            out.push(Piece::Reasoning(reasoning));
                        }
                        self.state = State::Answering;
                        continue;
                    }
                    let keep = held_back(&self.pending, CLOSE);
                    let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
                    if !ready.is_empty() {
                        out.push(Piece::Reasoning(ready));
                    }
                    return out;
                }
                State::Answering => {
                    if !self.pending.is_empty() {
                        out.push(Piece::Answer(std::mem::take(&mut self.pending)));
                    }
                    return out;
                }
            }
        }
    }

    /// What is still held back when generation ends.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        if rest.is_empty() {
            return Vec::new();
        }
        vec![match self.state {
            State::Thinking => Piece::Reasoning(rest),
            _ => Piece::Answer(rest),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prefilled: bool, chunks: &[&str]) -> (String, String) {
        let mut s = Splitter::new(prefilled);
        let (mut r, mut a) = (String::new(), String::new());
        let pieces = chunks
            .iter()
            .flat_map(|c| s.feed(c))
            .collect::<Vec<_>>()
            .into_iter()
            .chain(s.finish());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => r.push_str(&t),
                Piece::Answer(t) => a.push_str(&t),
            }
        }
        (r, a)
    }

    #[test]
    fn prefilled_thinking_splits_at_the_closing_tag_even_across_chunks() {
        let (r, a) = run(true, &["Let me ", "think.</th", "ink>\n\nHello!"]);
        assert_eq!(r, "Let me think.");
        assert_eq!(a, "\n\nHello!");
    }

    #[test]
    fn a_model_may_open_the_block_itself_or_not_at_all() {
        assert_eq!(
            run(false, &["<th", "ink>hmm</think>ok"]),
            ("hmm".into(), "ok".into())
        );
        assert_eq!(
            run(false, &["<b>bold</b>"]),
            ("".into(), "<b>bold</b>".into())
        );
        assert_eq!(run(false, &["Hi"]), ("".into(), "Hi".into()));
        // Never closed: all of it was reasoning.
        assert_eq!(
            run(true, &["still thinking"]),
            ("still thinking".into(), "".into())
        );
    }
}
