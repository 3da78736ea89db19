//! Small driver for checking the BPE by hand (the real CLI is `tinylm tokenizer`):
//!
//! ```text
//! cargo run --example bpe_tool -- train TEXT_FILE VOCAB OUT.json [HAN_PIECE]
//! cargo run --example bpe_tool -- encode TOKENIZER.json TEXT_FILE OUT_IDS.txt
//! cargo run --example bpe_tool -- stats TOKENIZER.json TEXT_FILE
//! ```
//!
//! `encode` writes the ids one per line, for comparison with the Python `tokenizers`:
//! `Tokenizer.from_file(json).encode(text).ids`.

use std::io::Write;
use std::path::{Path, PathBuf};

use tinylm::tokenizer::bpe::{train_bpe, BpeTokenizer, BpeTrainOptions};
use tinylm::tokenizer::stats::stats;
use tinylm::tokenizer::Tokenizer;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["train", text, vocab, out, rest @ ..] => {
            let mut opts = BpeTrainOptions::new(vocab.parse()?);
            opts.progress = true;
            if let Some(h) = rest.first() {
                opts.han_piece = h.parse()?;
            }
            let tok = train_bpe(&[PathBuf::from(text)], &opts)?;
            tok.save(Path::new(out))?;
        }
        ["encode", tok, text, out] => {
            let tok = BpeTokenizer::load(Path::new(tok))?;
            let ids = tok.encode(&std::fs::read(text)?)?;
            let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
            for id in ids {
                writeln!(w, "{id}")?;
            }
        }
        ["stats", tok, text] => {
            let tok = Tokenizer::load(tok)?;
            println!("{}", stats(&tok, &std::fs::read(text)?)?);
        }
        _ => anyhow::bail!("usage: see the doc comment of examples/bpe_tool.rs"),
    }
    Ok(())
}
