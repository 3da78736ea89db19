//! The form of generated verse, measured as a reader of Chinese poetry would judge it:
//! are the lines regular (5 or 7 characters a clause, the same throughout the line),
//! how long are the clauses, is the text valid UTF-8, and how much of it is copied
//! from the training text. Loss says how well the model predicts; these say whether
//! what it writes looks like a poem.
//!
//! Definitions (for a line of text):
//! - a *body line* holds Han characters and Chinese punctuation (titles and authors'
//!   names have none);
//! - a *clause* is a maximal run of Han characters;
//! - a line is *regular* when it is, whole, (L Han characters + one of `，。？！；：、`)
//!   repeated at least twice with the same L ∈ {5, 7}: `秦川雄帝宅，函谷壮皇居。`;
//! - *copied*: an 8-character n-gram of Han characters (within a line, punctuation
//!   skipped) that also occurs in the training text.

use crate::data::split_documents;
use crate::model::Gpt;
use crate::sample::{self, SamplingOptions};
use crate::tokenizer::Tokenizer;
use candle_core::Device;
use serde::Serialize;

/// The punctuation that ends a clause in a regular line.
pub const CLAUSE_END: [char; 7] = ['，', '。', '？', '！', '；', '：', '、'];

/// Characters per n-gram of the copy measure.
pub const COPY_NGRAM: usize = 8;

/// New tokens per sample of the form report (200: a poem and then some).
pub const SAMPLE_TOKENS: usize = 200;

/// Clause lengths counted one by one up to this; longer ones share the last bucket.
pub const MAX_CLAUSE_BUCKET: usize = 10;

/// Han characters: the CJK Unified Ideographs and their extensions, and the
/// compatibility ideographs.
pub fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x3134F)
}

/// The form of one line (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineForm {
    pub body: bool,
    pub regular: bool,
    /// Every clause has 5 or 7 characters (and there is at least one).
    pub five_or_seven: bool,
    /// Lengths of the clauses, in order.
    pub clauses: Vec<usize>,
}

/// Measures one line (without its line break).
pub fn line_form(line: &str) -> LineForm {
    let mut clauses = Vec::new();
    let mut run = 0;
    let (mut han, mut punct) = (false, false);
    for c in line.chars() {
        if is_han(c) {
            run += 1;
            han = true;
        } else {
            if run > 0 {
                clauses.push(run);
            }
            run = 0;
            punct |= CLAUSE_END.contains(&c);
        }
    }
    if run > 0 {
        clauses.push(run);
    }
    let body = han && punct;
    let five_or_seven = !clauses.is_empty() && clauses.iter().all(|&n| n == 5 || n == 7);
    LineForm {
        body,
        regular: body && is_regular(line),
        five_or_seven,
        clauses,
    }
}

/// (L Han + one clause end) repeated at least twice, one L ∈ {5, 7}, nothing else.
fn is_regular(line: &str) -> bool {
    let mut len = None;
    let (mut run, mut clauses) = (0usize, 0usize);
    for c in line.chars() {
        if is_han(c) {
            run += 1;
        } else if CLAUSE_END.contains(&c) {
            if run == 0 || *len.get_or_insert(run) != run {
                return false;
            }
            clauses += 1;
            run = 0;
        } else {
            return false;
        }
    }
    run == 0 && clauses >= 2 && matches!(len, Some(5 | 7))
}

/// Hashes of every [`COPY_NGRAM`]-gram of Han characters of a text (within lines,
/// punctuation skipped), sorted: the training text's, for the copy measure.
pub struct NgramIndex {
    hashes: Vec<u64>,
}

/// The Han characters of each line of `text`.
fn han_lines(text: &str) -> impl Iterator<Item = Vec<char>> + '_ {
    text.lines()
        .map(|l| l.chars().filter(|&c| is_han(c)).collect())
}

/// A 64-bit hash of an n-gram (FNV-1a over the code points; collisions among a few
/// million n-grams are ~1e-7 likely).
fn ngram_hash(chars: &[char]) -> u64 {
    chars.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl NgramIndex {
    pub fn new(text: &str) -> Self {
        let mut hashes: Vec<u64> = han_lines(text)
            .flat_map(|l| l.windows(COPY_NGRAM).map(ngram_hash).collect::<Vec<_>>())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        Self { hashes }
    }

    fn contains(&self, gram: &[char]) -> bool {
        self.hashes.binary_search(&ngram_hash(gram)).is_ok()
    }
}

/// The form figures of a set of texts.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FormStats {
    pub texts: usize,
    pub body_lines: usize,
    /// Share of body lines that are regular.
    pub regular: f64,
    /// Share of body lines whose every clause has 5 or 7 characters.
    pub five_or_seven: f64,
    /// Share of all clauses (of body lines) with 1 or 2 characters.
    pub short_clauses: f64,
    /// Clauses of body lines by length: [1, 2, ..., 9, 10 or more].
    pub clause_lengths: Vec<u64>,
    /// Share of the bytes that are part of valid UTF-8.
    pub valid_utf8: f64,
    /// Share of the Han 8-grams that also occur in the training text (None without an
    /// index).
    pub copied_8grams: Option<f64>,
    pub han_chars: usize,
}

/// Measures `texts` (raw bytes, as generated); `copies` is the training text's index.
pub fn form_stats(texts: &[Vec<u8>], copies: Option<&NgramIndex>) -> FormStats {
    let mut s = FormStats {
        texts: texts.len(),
        clause_lengths: vec![0; MAX_CLAUSE_BUCKET],
        ..Default::default()
    };
    let (mut regular, mut five_seven, mut short, mut clauses) = (0usize, 0usize, 0u64, 0u64);
    let (mut valid, mut bytes) = (0usize, 0usize);
    let (mut grams, mut copied) = (0usize, 0usize);
    for t in texts {
        bytes += t.len();
        let mut text = String::new();
        for chunk in t.utf8_chunks() {
            valid += chunk.valid().len();
            text.push_str(chunk.valid());
            if !chunk.invalid().is_empty() {
                text.push('\u{FFFD}');
            }
        }
        for line in text.lines() {
            let f = line_form(line);
            s.han_chars += f.clauses.iter().sum::<usize>();
            if !f.body {
                continue;
            }
            s.body_lines += 1;
            regular += f.regular as usize;
            five_seven += f.five_or_seven as usize;
            for &n in &f.clauses {
                clauses += 1;
                short += (n <= 2) as u64;
                s.clause_lengths[n.min(MAX_CLAUSE_BUCKET) - 1] += 1;
            }
        }
        if let Some(index) = copies {
            for l in han_lines(&text) {
                for g in l.windows(COPY_NGRAM) {
                    grams += 1;
                    copied += index.contains(g) as usize;
                }
            }
        }
    }
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.regular = share(regular, s.body_lines);
    s.five_or_seven = share(five_seven, s.body_lines);
    s.short_clauses = share(short as usize, clauses as usize);
    s.valid_utf8 = if bytes == 0 { 1.0 } else { share(valid, bytes) };
    s.copied_8grams = copies.map(|_| share(copied, grams));
    s
}

/// The prompt of a poem: its first two lines (title and author), each with its line
/// break, or None for a document of fewer than three lines.
pub fn poem_prompt(doc: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut breaks = doc
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i);
    let _title_end = breaks.next()?;
    let author_end = breaks.next()?;
    let body = &doc[author_end + 1..];
    (!body.iter().all(|b| b.is_ascii_whitespace())).then_some((&doc[..author_end + 1], body))
}

/// `n` prompts spread evenly over the poems of `val_text` (title and author lines),
/// and the bodies of all its poems (the reference the samples are compared with).
pub fn prompts_and_bodies(val_text: &[u8], n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let poems: Vec<(&[u8], &[u8])> = split_documents(val_text)
        .into_iter()
        .filter_map(poem_prompt)
        .collect();
    let prompts = if poems.is_empty() {
        Vec::new()
    } else {
        (0..n)
            .map(|i| poems[i * poems.len() / n.max(1) % poems.len()].0.to_vec())
            .collect()
    };
    let bodies = poems.iter().map(|(_, b)| b.to_vec()).collect();
    (prompts, bodies)
}

/// What [`form_report`] measured: the samples, and the real validation poems.
#[derive(Debug, Clone, Serialize)]
pub struct FormReport {
    pub samples: FormStats,
    pub real_poems: FormStats,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    /// The generated texts (bytes as text, invalid UTF-8 shown as U+FFFD).
    #[serde(skip)]
    pub texts: Vec<String>,
}

/// Generates one sample per prompt (`max_new` tokens, sampling `o` with seed
/// `o.seed + i`) and measures their form against the validation poems' bodies, with
/// copies counted against `train_text`.
#[allow(clippy::too_many_arguments)]
pub fn form_report(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u8>],
    bodies: &[Vec<u8>],
    train_text: &[u8],
    max_new: usize,
    o: &SamplingOptions,
    device: &Device,
) -> anyhow::Result<FormReport> {
    let mut samples = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        let o = SamplingOptions {
            seed: o.seed.wrapping_add(i as u64),
            ..o.clone()
        };
        let ids = tokenizer.encode(p)?;
        let out = sample::generate(model, &ids, max_new, &o, true, device, |_| {})?;
        samples.push(tokenizer.decode(&out));
    }
    let index = NgramIndex::new(&String::from_utf8_lossy(train_text));
    Ok(FormReport {
        samples: form_stats(&samples, Some(&index)),
        real_poems: form_stats(bodies, Some(&index)),
        max_new_tokens: max_new,
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        min_p: o.min_p,
        repetition_penalty: o.repetition_penalty,
        texts: samples
            .iter()
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    })
}

/// [`form_report`] on a corpus split: `n` prompts from its validation poems, copies
/// counted against its training text.
pub fn form_report_for_split(
    model: &Gpt,
    tokenizer: &Tokenizer,
    split: &crate::data::SplitText,
    n: usize,
    max_new: usize,
    o: &SamplingOptions,
    device: &Device,
) -> anyhow::Result<FormReport> {
    let (prompts, bodies) = prompts_and_bodies(&split.val, n);
    anyhow::ensure!(
        n == 0 || !prompts.is_empty(),
        "the validation text holds no poem (title, author and body lines) to prompt with"
    );
    form_report(
        model,
        tokenizer,
        &prompts,
        &bodies,
        &split.train,
        max_new,
        o,
        device,
    )
}

impl std::fmt::Display for FormReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, r) = (&self.samples, &self.real_poems);
        writeln!(
            f,
            "form of {} samples ({} tokens each; temperature {}, top-k {}, top-p {}, min-p {}, \
             repetition penalty {}) against {} validation poems:",
            s.texts,
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            self.min_p,
            self.repetition_penalty,
            r.texts
        )?;
        writeln!(f, "  {:<34} {:>8} {:>11}", "", "samples", "real poems")?;
        let rows = [
            ("body lines", s.body_lines as f64, r.body_lines as f64, 0),
            ("regular verse lines (share)", s.regular, r.regular, 3),
            (
                "every clause 5 or 7 (share)",
                s.five_or_seven,
                r.five_or_seven,
                3,
            ),
            (
                "clauses of 1-2 characters (share)",
                s.short_clauses,
                r.short_clauses,
                3,
            ),
            (
                "valid UTF-8 (share of bytes)",
                s.valid_utf8,
                r.valid_utf8,
                3,
            ),
            (
                "8-grams copied from training",
                s.copied_8grams.unwrap_or(f64::NAN),
                r.copied_8grams.unwrap_or(f64::NAN),
                3,
            ),
        ];
        for (name, a, b, p) in rows {
            writeln!(f, "  {name:<34} {a:>8.p$} {b:>11.p$}")?;
        }
        let hist = |h: &[u64]| {
            let total: u64 = h.iter().sum::<u64>().max(1);
            h.iter()
                .enumerate()
                .map(|(i, &n)| {
                    let label = if i + 1 == MAX_CLAUSE_BUCKET {
                        format!("{}+", i + 1)
                    } else {
                        (i + 1).to_string()
                    };
                    format!("{label}:{:.0}%", 100.0 * n as f64 / total as f64)
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        writeln!(
            f,
            "  clause lengths, samples:    {}",
            hist(&s.clause_lengths)
        )?;
        write!(
            f,
            "  clause lengths, real poems: {}",
            hist(&r.clause_lengths)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_lines_are_recognised() {
        for line in [
            "秦川雄帝宅，函谷壮皇居。",
            "床前明月光，疑是地上霜。",
            "朝辞白帝彩云间，千里江陵一日还。",
            "一二三四五，一二三四五，一二三四五？",
        ] {
            let f = line_form(line);
            assert!(f.body && f.regular && f.five_or_seven, "{line}: {f:?}");
        }
        for (line, body, five_seven) in [
            ("帝京篇十首 一", false, false),        // a title: no punctuation
            ("太宗皇帝", false, false),             // an author
            ("秦川雄帝宅。", true, true),           // one clause only
            ("秦川雄帝宅，函谷壮皇居", true, true), // no final punctuation
            ("秦川雄帝宅，函谷壮皇居居。", true, false), // 5 then 6
            ("朝辞白帝彩云间，函谷壮皇居。", true, true), // 7 then 5: not one L
            ("一二三四，五六七八。", true, false),  // L = 4
            ("「秦川雄帝宅，函谷壮皇居。」", true, true), // other characters
            ("秦川雄帝宅，，函谷壮皇居。", true, true), // an empty clause
            ("山，但。", true, false),
        ] {
            let f = line_form(line);
            assert!(!f.regular, "{line} is not regular: {f:?}");
            assert_eq!((f.body, f.five_or_seven), (body, five_seven), "{line}");
        }
        assert_eq!(line_form("更，三客，花，便。").clauses, [1, 2, 1, 1]);
    }

    #[test]
    fn stats_count_lines_clauses_copies_and_bad_bytes() {
        let train = "秦川雄帝宅，函谷壮皇居。\n绮殿千寻起，离宫百雉余。\n";
        let index = NgramIndex::new(train);
        let texts = vec![
            // title, author, one regular copied line, one fragment line
            "帝京篇\n太宗\n秦川雄帝宅，函谷壮皇居。\n山，但。\n"
                .as_bytes()
                .to_vec(),
            // a regular line not in the training text, and a stray byte
            ["春眠不觉晓，处处闻啼鸟。\n".as_bytes(), &[0xFF]].concat(),
        ];
        let s = form_stats(&texts, Some(&index));
        assert_eq!(s.texts, 2);
        assert_eq!(s.body_lines, 3);
        assert!((s.regular - 2.0 / 3.0).abs() < 1e-12);
        assert!((s.five_or_seven - 2.0 / 3.0).abs() < 1e-12);
        // clauses: 5,5 | 1,1 | 5,5 -> 2 of 6 short
        assert!((s.short_clauses - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.clause_lengths[0], 2);
        assert_eq!(s.clause_lengths[4], 4);
        // 8-grams: the copied line has 3 (all in training), the new one 3 (none).
        assert_eq!(s.copied_8grams, Some(0.5));
        let total: usize = texts.iter().map(Vec::len).sum();
        assert!((s.valid_utf8 - (total - 1) as f64 / total as f64).abs() < 1e-12);
    }

    #[test]
    fn prompts_are_title_and_author_of_validation_poems() {
        let val = "静夜思\n李白\n床前明月光，疑是地上霜。\n\n春晓\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n\n无题\n";
        let (prompts, bodies) = prompts_and_bodies(val.as_bytes(), 4);
        assert_eq!(prompts.len(), 4);
        // Spread evenly: with more prompts than poems, each poem in turn.
        assert_eq!(prompts[0], "静夜思\n李白\n".as_bytes());
        assert_eq!(prompts[1], "静夜思\n李白\n".as_bytes());
        assert_eq!(prompts[2], "春晓\n孟浩然\n".as_bytes());
        assert_eq!(bodies.len(), 2, "a document without a body is not a poem");
        assert_eq!(bodies[1], "春眠不觉晓，处处闻啼鸟。\n".as_bytes());
    }
}
