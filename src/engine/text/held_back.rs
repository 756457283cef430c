//! Streaming text that may hold the start of a marker (a stop string, a `</think>` tag) at its
//! end: that tail is held back until the next text says whether the marker follows.

/// Length in bytes of the longest tail of `text` that is a proper prefix of `marker` (0: none),
/// cut only where both strings have character boundaries.
pub fn held_back(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            marker.is_char_boundary(n)
                && text.is_char_boundary(text.len() - n)
                && text.ends_with(&marker[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_proper_prefix_at_the_end_is_held() {
        assert_eq!(held_back("hello </th", "</think>"), 4);
        assert_eq!(held_back("hello <", "</think>"), 1);
        assert_eq!(held_back("hello", "</think>"), 0);
        // A whole marker is not a proper prefix: finding it is the caller's job.
        assert_eq!(held_back("x</think>", "</think>"), 0);
        // Multi-byte characters: never cut inside one.
        assert_eq!(held_back("café", "é!"), 2);
        assert_eq!(held_back("caf\u{e9}", "\u{e8}"), 0);
    }
}
