//! Encoding speed: the `tokenizers` pipeline (`encode_reference`, one call) against
//! `encode` (direct path, chunks on rayon; set RAYON_NUM_THREADS), alternated in
//! rounds to see the noise; asserts equal ids.
//!
//! ```text
//! cargo run --example bpe_speed -- TOKENIZER.json TEXT_FILE
//! ```

use std::time::Instant;

use tinylm::tokenizer::bpe::BpeTokenizer;
use tokenizers::{PreTokenizedString, PreTokenizer};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let tok = BpeTokenizer::load(std::path::Path::new(&args[0]))?;
    let text = std::fs::read_to_string(&args[1])?;
    let mb = text.len() as f64 / 1e6;
    let pt = tok.inner().get_pre_tokenizer().expect("has one");
    let gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    for (name, pat) in [
        ("ours", tinylm::tokenizer::bpe::split_pattern(2)),
        ("gpt2", gpt2.to_string()),
        ("han only", r"\p{Han}{1,2}|[^\p{Han}]+".to_string()),
    ] {
        let re = tokenizers::utils::SysRegex::new(&pat).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        let n = re.find_iter(&text).count();
        println!(
            "regex {name}: {:.2} MB/s ({n} matches)",
            mb / t.elapsed().as_secs_f64()
        );
    }
    for round in 0..3 {
        let t = Instant::now();
        let mut pts = PreTokenizedString::from(text.as_str());
        pt.pre_tokenize(&mut pts)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let pre = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let reference = tok.encode_reference(&text)?;
        let full = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let ours = tok.encode(text.as_bytes())?;
        let direct = t.elapsed().as_secs_f64();
        assert_eq!(reference, ours);
        println!(
            "round {round}: pipeline pre-tokenizer alone {:.2} MB/s | encode_reference {:.2} MB/s | encode {:.2} MB/s | ratio {:.1}x | {} tokens",
            mb / pre,
            mb / full,
            mb / direct,
            full / direct,
            ours.len()
        );
    }
    Ok(())
}
