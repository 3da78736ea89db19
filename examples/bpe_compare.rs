//! Trains one byte-level BPE and reports training time and compression, to choose the
//! Han pre-token length. One configuration per run, so that peak memory can be read
//! with `/usr/bin/time -v`:
//!
//! ```text
//! cargo run --example bpe_compare -- TRAIN_FILE VOCAB HAN_PIECE [EVAL_FILE...]
//! ```
//!
//! Prints one line: train file, vocab asked/got, han_piece, training seconds, then per
//! eval file bytes/token, chars/token, vocabulary use and encoding seconds.

use std::path::PathBuf;
use std::time::Instant;

use tinylm::tokenizer::bpe::{train_bpe, BpeTrainOptions};
use tinylm::tokenizer::stats::stats;
use tinylm::tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        anyhow::bail!("usage: bpe_compare TRAIN_FILE VOCAB HAN_PIECE [EVAL_FILE...]");
    }
    let train = PathBuf::from(&args[0]);
    let mut opts = BpeTrainOptions::new(args[1].parse()?);
    opts.han_piece = args[2].parse()?;
    let t0 = Instant::now();
    let bpe = train_bpe(std::slice::from_ref(&train), &opts)?;
    let train_s = t0.elapsed().as_secs_f64();
    let tok = Tokenizer::Bpe(bpe);
    let mut line = format!(
        "train={} vocab={}/{} han_piece={} train_s={:.2}",
        train.file_name().unwrap_or_default().to_string_lossy(),
        opts.vocab_size,
        tok.vocab_size(),
        opts.han_piece,
        train_s
    );
    for f in &args[3..] {
        let text = std::fs::read(f)?;
        let t1 = Instant::now();
        let s = stats(&tok, &text)?;
        let enc_s = t1.elapsed().as_secs_f64();
        line += &format!(
            " | {}: B/tok={:.3} ch/tok={:.3} used={} enc_s={:.2}",
            PathBuf::from(f)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy(),
            s.bytes_per_token,
            s.chars_per_token,
            s.vocab_used,
            enc_s
        );
    }
    println!("{line}");
    Ok(())
}
