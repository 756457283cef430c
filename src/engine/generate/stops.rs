//! Stop strings: text is shown only once it cannot be the start of one, and cut at the first.

use crate::engine::text::held_back::held_back;

/// Holds back text that could be the start of a stop string, and cuts at the first stop string.
pub struct StopMatcher {
    stop: Vec<String>,
    pending: String,
    /// A stop string was found: nothing more is shown.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stop: Vec<String>) -> Self {
        StopMatcher {
            stop,
            pending: String::new(),
            stopped: false,
        }
    }

    /// Add text; returns what may be shown now, and whether a stop string was found.
    pub fn feed(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(text);
        let first_stop = self
            .stop
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let keep = self
            .stop
            .iter()
            .map(|s| held_back(&self.pending, s))
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_cut_and_prefixes_held_back() {
        let stop = vec!["END".to_string(), "\n\n".to_string()];
        let mut m = StopMatcher::new(stop.clone());
        assert_eq!(m.feed("hello E"), ("hello ".into(), false));
        assert_eq!(m.feed("N"), ("".into(), false));
        assert_eq!(m.feed("Dless"), ("".into(), true));
        assert_eq!(m.feed("more"), ("".into(), true));

        let mut m = StopMatcher::new(stop.clone());
        assert_eq!(m.feed("a\n"), ("a".into(), false));
        assert_eq!(m.feed("b"), ("\nb".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_matching_respects_utf8() {
        let stop = vec!["é!".to_string()];
        let mut m = StopMatcher::new(stop.clone());
        assert_eq!(m.feed("café"), ("caf".into(), false));
        assert_eq!(m.feed("?"), ("é?".into(), false));
    }
}
