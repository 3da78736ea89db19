//! The binary, end to end on data/zh_tiny.txt, and every bad input it must refuse with a
//! one-line error and a non-zero exit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

mod bin_util;
use bin_util::{output as tinylm, utf8 as text};

/// `train --preset tiny` on data/zh_tiny.txt for `steps` steps into `run`, plus `extra`.
fn train_tiny(run: &Path, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train",
        "--data",
        "data/zh_tiny.txt",
        "--preset",
        "tiny",
        "--max-steps",
        steps,
        "--out",
        run.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    tinylm(&args)
}

/// The validation losses a run logged, in order.
fn val_losses(run: &Path) -> Vec<f64> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"].as_f64())
        .collect()
}

/// A short training run shared by the tests that need a checkpoint.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let out = train_tiny(&run, "150", &["--sample-tokens", "120"]);
        let stdout = text(&out.stdout);
        println!("{stdout}\n{}", text(&out.stderr));
        assert!(out.status.success(), "train failed: {}", text(&out.stderr));
        assert!(stdout.contains("--- a poem from"), "no poem printed");
        // The presets' `--dtype auto` says what it resolved to.
        let note = if tinylm::kernels::gemm_bf16::native() {
            "dtype auto: matrix products in bf16"
        } else {
            "dtype auto: f32 products (this CPU has no AVX512-BF16)"
        };
        assert!(stdout.contains(note), "no dtype line ({note})");
        (dir, run)
    })
    .1
}

#[test]
fn train_writes_metrics_checkpoint_and_learns() {
    let run = trained_run();
    let vals = val_losses(run);
    println!("validation losses: {vals:?}");
    let first = vals[0];
    let last = *vals.last().unwrap();
    assert!(
        (first - 256f64.ln()).abs() < 0.15,
        "initial val loss {first}"
    );
    assert!(
        last < 256f64.ln() - 1.5,
        "validation loss {last} not clearly below ln 256"
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("dtype = \"auto\""), "{config}");
    let ckpts = tinylm::train::checkpoint::list(run);
    assert!(!ckpts.is_empty(), "no checkpoint written");
    for f in ["model.safetensors", "optim.safetensors", "state.json"] {
        assert!(ckpts.last().unwrap().1.join(f).exists(), "{f} missing");
    }
}

/// `--dtype bf16`: the run says which products it ran, records the choice in its
/// config, and learns (on a CPU without AVX512-BF16 it says it ran f32 products); a
/// resume may switch it back to f32.
#[test]
fn train_with_bf16_products_learns_and_records_its_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let out = train_tiny(&run, "60", &["--dtype", "bf16", "--sample-tokens", "20"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "train failed: {}", text(&out.stderr));
    let native = tinylm::kernels::gemm_bf16::native();
    let note = if native {
        "matrix products in bf16"
    } else {
        "no AVX512-BF16"
    };
    assert!(stdout.contains(note), "no dtype line ({note}):\n{stdout}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("dtype = \"bf16\""), "{config}");
    let vals = val_losses(&run);
    println!("validation losses: {vals:?}");
    assert!(vals.last().unwrap() < &(vals[0] - 1.0), "{vals:?}");
    // A resume may change the products' precision, and says so.
    let out = tinylm(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--max-steps",
        "70",
        "--dtype",
        "f32",
        "--no-progress",
        "--sample-tokens",
        "0",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "resume failed: {}", text(&out.stderr));
    assert!(
        stdout.contains("resume changes dtype: bf16 -> f32"),
        "{stdout}"
    );
    // The checkpoints record what the products ran in, and the resume says when
    // that changes (bf16 ran only where the CPU has AVX512-BF16).
    let changed =
        stdout.contains("resume changes products: bf16 -> f32 (--dtype f32 on this machine)");
    assert_eq!(changed, native, "{stdout}");
    let ckpts = tinylm::train::checkpoint::list(&run);
    let state = std::fs::read_to_string(ckpts.last().unwrap().1.join("state.json")).unwrap();
    assert!(state.contains("\"products\": \"f32\""), "{state}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("dtype = \"f32\""), "{config}");
}

#[test]
fn sample_streams_valid_utf8() {
    let run = trained_run();
    let out = tinylm(&[
        "sample",
        "--checkpoint",
        run.to_str().unwrap(),
        "--prompt",
        "春",
        "--max-new-tokens",
        "60",
        "--num-samples",
        "2",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    println!("{s}");
    assert!(s.starts_with("--- sample 1 ---\n春"));
    assert!(s.contains("--- sample 2 ---"));
}

#[test]
fn sample_poem_stops_where_the_poem_ends() {
    let run = trained_run();
    let sample = |seed: &str, poem: bool| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "春望\n杜甫\n",
            "--max-new-tokens",
            "400",
            "--seed",
            seed,
        ];
        if poem {
            args.push("--poem");
        }
        let out = tinylm(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let mut ended = 0;
    for seed in ["1", "2", "3", "4"] {
        let (poem, whole) = (sample(seed, true), sample(seed, false));
        println!("--- seed {seed}, --poem:\n{poem}--- without:\n{whole}");
        let body = poem.strip_prefix("春望\n杜甫\n").unwrap();
        // The same tokens, cut: the poem is where the whole sample's first blank line
        // after a written line is.
        let first_end = body
            .match_indices("\n\n")
            .map(|(i, _)| i)
            .find(|&i| !body[..i].trim().is_empty());
        if let Some(end) = first_end {
            ended += 1;
            assert_eq!(end + 2, body.len(), "text after the poem ended: {body:?}");
            assert!(
                whole.starts_with(&poem),
                "{poem:?} is not a prefix of {whole:?}"
            );
        } else {
            // Never ended: all 400 tokens, the same as without --poem.
            assert_eq!(poem, whole);
        }
    }
    println!("{ended} of 4 samples ended their poem");
}

#[test]
fn eval_reports_finite_numbers() {
    let run = trained_run();
    let out = tinylm(&[
        "eval",
        "--checkpoint",
        run.to_str().unwrap(),
        "--text",
        "data/zh_tiny.txt",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    println!("{v}");
    for k in ["loss", "bits_per_byte", "bits_per_char", "perplexity"] {
        let x = v[k].as_f64().unwrap();
        assert!(x.is_finite() && x > 0.0, "{k} = {x}");
    }
    // Every byte after the first is scored once.
    assert_eq!(
        v["tokens"].as_u64().unwrap(),
        std::fs::metadata("data/zh_tiny.txt").unwrap().len() - 1
    );
    assert!(v["bits_per_byte"].as_f64().unwrap() < 8.0);
}

/// Runs tinylm expecting failure; returns its one-line error.
fn fails(args: &[&str]) -> String {
    let out = tinylm(args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: error is not one line:\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    println!("{args:?} -> {}", lines[0]);
    lines[0].to_string()
}

#[test]
fn bad_inputs_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let empty = d("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let short = d("short.txt");
    std::fs::write(&short, "春眠不觉晓\n\n处处闻啼鸟\n").unwrap();
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--preset",
            "tiny",
            "--max-steps",
            "1",
            "--no-progress",
            "--out",
        ];
        let out = d("bad-run");
        a.push(&out);
        let mut v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
        fails(&refs)
    };
    assert!(train(&["--data", &d("missing.txt")]).contains("not found"));
    assert!(train(&["--data", &empty]).contains("empty"));
    assert!(train(&["--data", &short]).contains("too short"));
    assert!(train(&[
        "--data",
        "data/zh_tiny.txt",
        "--width",
        "64",
        "--heads",
        "3"
    ])
    .contains("divide"));
    assert!(train(&["--data", "data/zh_tiny.txt", "--layers", "0"]).contains("n_layer (--layers)"));
    assert!(train(&["--data", "data/zh_tiny.txt", "--batch-size", "0"]).contains("batch_size"));
    assert!(train(&["--data", "data/zh_tiny.txt", "--lr=-1"]).contains("lr"));
    fails(&["train", "--data", "data/zh_tiny.txt", "--context=-5"]);
    assert!(train(&["--data", "data/zh_tiny.txt", "--dtype", "fp16"]).contains("auto, f32 or bf16"));
    assert!(fails(&["bench", "loss", "--dtype", "bf16"]).contains("bench train only"));
    fails(&["train", "--data", "data/zh_tiny.txt", "--preset", "huge"]);
    // A BPE is trained on UTF-8 only: a non-UTF-8 corpus is refused, not mangled.
    let latin1 = d("latin1.txt");
    let mut bytes = std::fs::read("data/zh_tiny.txt").unwrap();
    bytes[100] = 0xFF;
    std::fs::write(&latin1, &bytes).unwrap();
    assert!(train(&["--data", &latin1, "--tokenizer", "bpe:300"]).contains("UTF-8"));
    assert!(fails(&[
        "tokenizer",
        "train",
        "--data",
        &latin1,
        "--vocab-size",
        "300",
        "--out",
        &d("t.json")
    ])
    .contains("UTF-8"));
    assert!(train(&["--data", "data/zh_tiny.txt", "--tokenizer", "bpe:many"]).contains("bpe:"));
    assert!(train(&[
        "--data",
        "data/zh_tiny.txt",
        "--tokenizer",
        &d("missing.json")
    ])
    .contains("missing.json"));
    assert!(fails(&["sample", "--checkpoint", &d("nope")]).contains("not found"));
    assert!(fails(&[
        "eval",
        "--checkpoint",
        &d("nope"),
        "--text",
        "data/zh_tiny.txt"
    ])
    .contains("not found"));
}

#[test]
fn damaged_checkpoints_fail_with_one_line() {
    let run = trained_run();
    let dir = tempfile::tempdir().unwrap();
    let (_, latest) = tinylm::train::checkpoint::list(run).pop().unwrap();
    let copy = |name: &str| {
        let dst = dir.path().join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["model.safetensors", "optim.safetensors", "state.json"] {
            std::fs::copy(latest.join(f), dst.join(f)).unwrap();
        }
        dst
    };
    // Truncated weights.
    let trunc = copy("truncated");
    let bytes = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(fails(&["sample", "--checkpoint", trunc.to_str().unwrap()]).contains("truncated"));
    // A config of another shape than the weights.
    let other = copy("other-shape");
    let state = std::fs::read_to_string(other.join("state.json")).unwrap();
    std::fs::write(
        other.join("state.json"),
        state.replace("\"n_embd\": 64", "\"n_embd\": 128"),
    )
    .unwrap();
    assert!(fails(&[
        "eval",
        "--checkpoint",
        other.to_str().unwrap(),
        "--text",
        "data/zh_tiny.txt"
    ])
    .contains("shape"));
    assert!(fails(&[
        "train",
        "--resume",
        other.to_str().unwrap(),
        "--data",
        "data/zh_tiny.txt"
    ])
    .contains("shape"));
    // Garbage state.
    let garbage = copy("garbage");
    std::fs::write(garbage.join("state.json"), "{not json").unwrap();
    assert!(fails(&["sample", "--checkpoint", garbage.to_str().unwrap()]).contains("malformed"));
    // A checkpoint refuses to continue with another tokenizer, and writes nothing.
    let before = std::fs::read_dir(run).unwrap().count();
    let e = fails(&[
        "train",
        "--resume",
        run.to_str().unwrap(),
        "--tokenizer",
        "bpe:300",
        "--data",
        "data/zh_tiny.txt",
    ]);
    assert!(
        e.contains("trained with tokenizer bytes, not bpe:300"),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(run).unwrap().count(), before);
    assert!(!run.join("tokenizer.json").exists());
    // An existing run directory is not overwritten without --resume.
    assert!(fails(&[
        "train",
        "--data",
        "data/zh_tiny.txt",
        "--preset",
        "tiny",
        "--out",
        run.to_str().unwrap()
    ])
    .contains("--resume"));
}
