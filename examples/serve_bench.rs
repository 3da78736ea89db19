//! Generation speed through `tinylm serve` against `tinylm sample`'s loop on the same
//! checkpoint (BENCHMARKS.md, "Serving"). Start the server first, then:
//!
//!   tinylm serve --checkpoint RUN --threads 2 &
//!   cargo run --release --example serve_bench -- --checkpoint RUN \
//!       --url http://127.0.0.1:8080 [--tokens 200] [--streams 1,8] [--rounds 3]
//!
//! In process: the sampling loop of `tinylm sample` (KV cache, same sampling), timed
//! from the call to the first token and to the last. Through the server: K streaming
//! completions sent at once, each timed from its request to its first text chunk and
//! to `[DONE]`; tokens/s is all streams' tokens over the wall time of the round.

use std::io::{BufRead, BufReader};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Stream {
    ttft_s: f64,
    total_s: f64,
    tokens: u64,
}

fn one_stream(url: &str, prompt: &str, tokens: usize, seed: u64) -> anyhow::Result<Stream> {
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": tokens, "temperature": 0.8, "top_p": 0.95,
        "seed": seed, "stream": true,
    });
    let t0 = Instant::now();
    let r = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()?;
    anyhow::ensure!(r.status().is_success(), "status {}", r.status());
    let mut ttft = None;
    let mut n = 0;
    for line in BufReader::new(r).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data)?;
        if ttft.is_none()
            && v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        {
            ttft = Some(t0.elapsed().as_secs_f64());
        }
        if let Some(c) = v["usage"]["completion_tokens"].as_u64() {
            n = c;
        }
    }
    Ok(Stream {
        ttft_s: ttft.unwrap_or(f64::NAN),
        total_s: t0.elapsed().as_secs_f64(),
        tokens: n,
    })
}

fn main() -> anyhow::Result<()> {
    tinylm::cpu::tune_glibc_malloc();
    let mut checkpoint = None;
    let mut url = "http://127.0.0.1:8080".to_string();
    let mut tokens = 200usize;
    let mut streams = vec![1usize, 8];
    let mut rounds = 3usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--checkpoint" => checkpoint = Some(std::path::PathBuf::from(val()?)),
            "--url" => url = val()?,
            "--tokens" => tokens = val()?.parse()?,
            "--rounds" => rounds = val()?.parse()?,
            "--streams" => {
                streams = val()?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let checkpoint = checkpoint.ok_or_else(|| anyhow::anyhow!("--checkpoint is required"))?;
    anyhow::ensure!(
        rounds > 0 && tokens > 0,
        "--rounds and --tokens must be positive"
    );
    let prompt = "\n";

    // In process, as `tinylm sample` generates (2 threads, as the server was started).
    tinylm::device::set_threads(2)?;
    let device = candle_core::Device::Cpu;
    let tinylm::train::LoadedModel {
        model,
        tokenizer: tok,
        ..
    } = tinylm::train::load_model(&checkpoint, &device)?;
    let ids = tok.encode(prompt.as_bytes())?;
    let (mut rate, mut first) = (Vec::new(), Vec::new());
    for r in 0..=rounds {
        let o = tinylm::sample::SamplingOptions {
            seed: r as u64,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut t_first = None;
        let out = tinylm::sample::generate(&model, &ids, tokens, &o, true, &device, |_| {
            t_first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        })?;
        let s = t0.elapsed().as_secs_f64();
        if r > 0 {
            // Round 0 warms up.
            rate.push(out.len() as f64 / s);
            first.push(t_first.unwrap_or(f64::NAN));
        }
    }
    println!(
        "in process (tinylm sample's loop): {:.0} tokens/s, first token {:.1} ms (median of {rounds})",
        median(rate),
        median(first) * 1e3
    );

    for &k in &streams {
        let _ = one_stream(&url, prompt, 8, 0)?; // warm-up
        let (mut agg, mut per, mut ttft, mut ttft_max) = (vec![], vec![], vec![], vec![]);
        for r in 0..rounds {
            let t0 = Instant::now();
            let handles: Vec<_> = (0..k)
                .map(|i| {
                    let url = url.clone();
                    std::thread::spawn(move || {
                        one_stream(&url, prompt, tokens, (r * 100 + i) as u64)
                    })
                })
                .collect();
            let res: Vec<Stream> = handles
                .into_iter()
                .map(|h| h.join().expect("stream thread"))
                .collect::<Result<_, _>>()?;
            let wall = t0.elapsed().as_secs_f64();
            let total: u64 = res.iter().map(|s| s.tokens).sum();
            agg.push(total as f64 / wall);
            per.push(median(
                res.iter()
                    .map(|s| s.tokens as f64 / (s.total_s - s.ttft_s))
                    .collect(),
            ));
            ttft.push(median(res.iter().map(|s| s.ttft_s).collect()));
            ttft_max.push(res.iter().map(|s| s.ttft_s).fold(0.0, f64::max));
        }
        println!(
            "server, {k} stream(s): {:.0} tokens/s in all, {:.0} tokens/s per stream after its first token, \
             first text {:.1} ms median / {:.1} ms slowest (median of {rounds} rounds)",
            median(agg),
            median(per),
            median(ttft) * 1e3,
            median(ttft_max) * 1e3
        );
    }
    Ok(())
}
