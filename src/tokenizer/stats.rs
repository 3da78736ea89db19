//! How well a tokenizer compresses a text: bytes and characters per token, and how
//! much of the vocabulary the text uses.

use super::Tokenizer;

/// Number of characters in a byte string: code points of the valid UTF-8 runs, plus
/// one per maximal invalid sequence (what `String::from_utf8_lossy` would show as
/// U+FFFD). Bits per character everywhere in tinylm divide by this count.
pub fn count_chars(bytes: &[u8]) -> usize {
    bytes
        .utf8_chunks()
        .map(|c| c.valid().chars().count() + usize::from(!c.invalid().is_empty()))
        .sum()
}

/// Compression statistics of one tokenizer on one text.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerStats {
    /// The tokenizer's `describe()`.
    pub tokenizer: String,
    pub bytes: usize,
    pub chars: usize,
    pub tokens: usize,
    pub bytes_per_token: f64,
    pub chars_per_token: f64,
    /// Distinct token ids that occur in the text.
    pub vocab_used: usize,
    pub vocab_size: usize,
}

/// Encodes `text` and counts.
pub fn stats(tok: &Tokenizer, text: &[u8]) -> anyhow::Result<TokenizerStats> {
    let ids = tok.encode(text)?;
    let vocab_size = tok.vocab_size();
    let mut used = vec![false; vocab_size];
    for &id in &ids {
        if let Some(u) = used.get_mut(id as usize) {
            *u = true;
        }
    }
    let chars = count_chars(text);
    let per = |n: usize| {
        if ids.is_empty() {
            0.0
        } else {
            n as f64 / ids.len() as f64
        }
    };
    Ok(TokenizerStats {
        tokenizer: tok.describe(),
        bytes: text.len(),
        chars,
        tokens: ids.len(),
        bytes_per_token: per(text.len()),
        chars_per_token: per(chars),
        vocab_used: used.iter().filter(|&&u| u).count(),
        vocab_size,
    })
}

impl std::fmt::Display for TokenizerStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = if self.vocab_size == 0 {
            0.0
        } else {
            100.0 * self.vocab_used as f64 / self.vocab_size as f64
        };
        writeln!(f, "tokenizer        {}", self.tokenizer)?;
        writeln!(f, "bytes            {}", self.bytes)?;
        writeln!(f, "characters       {}", self.chars)?;
        writeln!(f, "tokens           {}", self.tokens)?;
        writeln!(f, "bytes/token      {:.3}", self.bytes_per_token)?;
        writeln!(f, "chars/token      {:.3}", self.chars_per_token)?;
        write!(
            f,
            "vocabulary used  {} of {} ({pct:.1}%)",
            self.vocab_used, self.vocab_size
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_count_code_points_and_invalid_runs() {
        assert_eq!(count_chars("春a".as_bytes()), 2);
        assert_eq!(count_chars(b""), 0);
        // One maximal invalid subpart per U+FFFD, as from_utf8_lossy does.
        let bad = b"a\xE6\x98\xFFb\x80\x80";
        let lossy = String::from_utf8_lossy(bad).chars().count();
        println!("count_chars = {}, lossy = {lossy}", count_chars(bad));
        assert_eq!(count_chars(bad), lossy);
    }

    #[test]
    fn bytes_tokenizer_stats() {
        let s = stats(&Tokenizer::Bytes, "春眠 ab".as_bytes()).unwrap();
        println!("{s}");
        assert_eq!((s.bytes, s.chars, s.tokens), (9, 5, 9));
        assert_eq!(s.bytes_per_token, 1.0);
        assert_eq!(s.vocab_used, 9);
        assert_eq!(s.vocab_size, 256);
    }
}
