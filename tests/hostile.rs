//! Hostile input, second round, against the real binary: one test per class.
//! - a run never touches what is not its own (files it did not write, other branches);
//! - every option is range-checked before any work, and a resume says what it changed;
//! - hostile tokenizers and input files give one-line errors, not panics or hangs;
//! - what used to be silently wrong (NaN weights, a vocabulary that does not match its
//!   tokenizer, CRLF text) is now refused or handled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tinylm::train::checkpoint;

mod bin_util;
use bin_util::*;

/// Every file under `dir` (recursively) with its bytes: nothing may change in it.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.insert(p, Vec::new());
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A directory of files that look like a run's leftovers but are not a run's.
fn foreign_dir(root: &Path) -> PathBuf {
    let d = root.join("home");
    std::fs::create_dir_all(d.join(".step-00000001.tmp-3")).unwrap();
    for (name, body) in [
        (".bashrc.tmp-1", "keep me"),
        (".notes.deleting-2", "keep me too"),
        (".config.toml.tmp-9", "mine, not tinylm's"),
        ("config.toml", "[not] = 'a tinylm config'"),
    ] {
        std::fs::write(d.join(name), body).unwrap();
    }
    d
}

#[test]
fn a_run_never_touches_what_is_not_its_own() {
    let root = tempfile::tempdir().unwrap();
    let home = foreign_dir(root.path());
    let before = tree(&home);
    let h = home.to_str().unwrap();
    // A new run into a directory of other files, failing early or not: refused, and
    // nothing in it deleted, renamed or written (not even a lock file).
    for extra in [
        &["--data", "nope.txt"][..],
        &["--data", "data/zh_tiny.txt"][..],
        &["--data", "data/zh_tiny.txt", "--tokenizer", "bpe:300"][..],
    ] {
        let e = run_fails(&train_args(&home, extra), &[]);
        assert!(e.contains("not empty") || e.contains("not found"), "{e}");
        assert_eq!(tree(&home), before, "{extra:?} changed the directory");
    }
    // --resume of a directory that is not a run: refused, untouched.
    let e = run_fails(&train_args(&home, &["--resume", h]), &[]);
    assert!(e.contains("no checkpoint"), "{e}");
    assert_eq!(tree(&home), before);

    // A real run: its own leftovers are tidied on resume, lookalikes are not.
    let run = root.path().join("run");
    run_ok(&train_args(&run, &["--max-steps", "4"]), &[]);
    let own = run.join(".step-00000099.tmp-4242");
    std::fs::create_dir(&own).unwrap();
    std::fs::write(own.join("model.safetensors"), "half").unwrap();
    for name in [".bashrc.tmp-1", ".step-1.tmp-2", ".step-00000099.tmp-x"] {
        std::fs::write(run.join(name), "not tinylm's").unwrap();
    }
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "6"],
        ),
        &[],
    );
    assert!(out.contains("removed 1 leftovers"), "{out}");
    assert!(!own.exists());
    for name in [".bashrc.tmp-1", ".step-1.tmp-2", ".step-00000099.tmp-x"] {
        assert!(run.join(name).exists(), "{name} was removed");
    }
    // A hand-edited config.toml is left as it is, and the run says so.
    let cfg = run.join("config.toml");
    let edited = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("lr = ", "lr = 9e-9 # was ");
    std::fs::write(&cfg, &edited).unwrap();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "7"],
        ),
        &[],
    );
    assert!(out.contains("was edited; it is left as it is"), "{out}");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), edited);

    // `tokenizer train --out` does not replace an existing file without --force.
    let target = home.join("config.toml");
    let e = run_fails(
        &strs(&[
            "tokenizer",
            "train",
            "--data",
            "data/zh_tiny.txt",
            "--vocab-size",
            "300",
            "--out",
            target.to_str().unwrap(),
        ]),
        &[],
    );
    assert!(e.contains("--force"), "{e}");
    assert_eq!(tree(&home), before);
}

#[test]
fn resuming_an_older_checkpoint_forks_or_refuses() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    run_ok(
        &train_args(&run, &["--max-steps", "8", "--checkpoint-interval", "3"]),
        &[],
    );
    let steps: Vec<usize> = checkpoint::list(&run).iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [6, 8], "keep_last 2");
    let older = run.join("step-00000006");
    let before = tree(&run);
    // In place: refused, with the way to fork; nothing written.
    let e = run_fails(
        &train_args(
            &run,
            &["--resume", older.to_str().unwrap(), "--max-steps", "10"],
        ),
        &[],
    );
    assert!(
        e.contains("goes on to step 8") && e.contains("--out"),
        "{e}"
    );
    assert_eq!(tree(&run), before);
    // --out a new directory: a fork continues from step 6 there; the run is untouched.
    let fork = root.path().join("fork");
    let out = run_ok(
        &train_args(
            &fork,
            &[
                "--resume",
                older.to_str().unwrap(),
                "--out",
                fork.to_str().unwrap(),
                "--max-steps",
                "10",
            ],
        ),
        &[],
    );
    assert!(
        out.contains("forking") && out.contains("at step 6"),
        "{out}"
    );
    assert!(out.contains("done after 10 steps"), "{out}");
    assert_eq!(tree(&run), before, "the fork changed the original run");
    let fork_steps: Vec<usize> = checkpoint::list(&fork).iter().map(|(s, _)| *s).collect();
    assert_eq!(fork_steps.last(), Some(&10));
    // The fork's first logged step is 7: it continued, it did not start over.
    let metrics = std::fs::read_to_string(fork.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(first["step"], 7, "{metrics}");
    // Forking into an existing run is refused too.
    let e = run_fails(
        &train_args(
            &run,
            &[
                "--resume",
                older.to_str().unwrap(),
                "--out",
                fork.to_str().unwrap(),
            ],
        ),
        &[],
    );
    assert!(e.contains("is already a run"), "{e}");
}

#[test]
fn every_option_is_range_checked_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("never");
    let train_cases: &[(&[&str], &str)] = &[
        (&["--threads", "1000000"], "--threads must be in [1,"),
        (
            &["--grad-accum", "18446744073709551615"],
            "grad_accum (--grad-accum)",
        ),
        (&["--weight-decay", "1e30"], "weight_decay (--weight-decay)"),
        (&["--weight-decay", "inf"], "weight_decay (--weight-decay)"),
        (&["--lr", "1e10"], "lr (--lr) must be in (0, 1]"),
        (&["--lr", "0.5", "--weight-decay", "5"], "lr x weight_decay"),
        (&["--tokenizer", "bpe:1000000000"], "bpe_vocab_size"),
        (&["--context", "0"], "model.block_size (--context)"),
        (&["--width", "1000000"], "model.n_embd (--width)"),
        (&["--max-steps", "0"], "max_steps (--max-steps)"),
        (&["--time-budget", "nan"], "time_budget_s (--time-budget)"),
        (&["--sample-tokens", "99999999"], "sample_tokens"),
        (&["--form-samples", "99999999"], "form_samples"),
        (
            &["--batch-size", "65536", "--grad-accum", "65536"],
            "tokens a step",
        ),
    ];
    for (flags, want) in train_cases {
        let e = run_fails(&train_args(&out, flags), &[]);
        assert!(e.contains(want), "{flags:?}: {e}");
        assert!(!out.exists(), "{flags:?} created the run directory");
    }
    // Values outside a flag's choices are clap's one line, exit 2.
    for (flags, want) in [
        (["--optimizer", "sgd"], "expected adamw or muon"),
        (["--positions", "sideways"], "expected learned or rotary"),
    ] {
        let args = train_args(&out, &flags);
        let o = cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(want),
            "{flags:?}: {err}"
        );
        assert!(!out.exists(), "{flags:?} created the run directory");
    }
    let other: &[(&[&str], &str)] = &[
        (
            &[
                "tokenizer",
                "train",
                "--data",
                "data/zh_tiny.txt",
                "--vocab-size",
                "2147483647",
            ],
            "bpe_vocab_size",
        ),
        (
            &[
                "tokenizer",
                "train",
                "--data",
                "data/zh_tiny.txt",
                "--vocab-size",
                "300",
                "--han-piece",
                "0",
            ],
            "han_piece",
        ),
        (
            &["sample", "--checkpoint", "x", "--temperature=-1"],
            "temperature",
        ),
        (&["sample", "--checkpoint", "x", "--top-p", "2"], "top_p"),
        (
            &["sample", "--checkpoint", "x", "--num-samples", "0"],
            "num_samples",
        ),
        (
            &["eval", "--checkpoint", "x", "--samples", "99999999"],
            "form_samples",
        ),
        (
            &[
                "sample",
                "--checkpoint",
                "x",
                "--max-new-tokens",
                "100000000",
            ],
            "max_new_tokens",
        ),
        (
            &[
                "eval",
                "--checkpoint",
                "x",
                "--text",
                "x",
                "--batch-size",
                "0",
            ],
            "eval_batch_size",
        ),
    ];
    for (args, want) in other {
        let e = run_fails(&strs(args), &[]);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // The README's table is the one the code checks.
    let readme = std::fs::read_to_string("README.md").unwrap();
    assert!(
        readme.contains(&tinylm::limits::ranges_markdown()),
        "README's range table differs from limits::ranges_markdown():\n{}",
        tinylm::limits::ranges_markdown()
    );
}

#[test]
fn a_resume_takes_only_its_flags_and_says_what_it_changed() {
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    // A time-budget run (no step count), then --max-steps on resume: the run now
    // counts steps and goes on to that step (before, the spent budget ended it at once).
    let out = run_ok(
        &train_args(
            &run,
            &[
                "--preset",
                "default",
                "--tokenizer",
                "bytes",
                "--layers",
                "1",
                "--heads",
                "2",
                "--time-budget",
                "2",
            ],
        ),
        &[],
    );
    let done: usize = out
        .split("done after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let end = (done + 5).to_string();
    let out = run_ok(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", &end],
        ),
        &[],
    );
    assert!(
        out.contains(&format!("resume changes max_steps: none -> {end}")),
        "{out}"
    );
    assert!(
        out.contains("resume changes time_budget_s: 2 -> none"),
        "{out}"
    );
    assert!(out.contains(&format!("done after {end} steps")), "{out}");
    // Flags that shape the training are refused on a resume, naming each, and the
    // run directory is not touched.
    let before = tree(&run);
    let e = run_fails(
        &train_args(
            &run,
            &[
                "--resume",
                run.to_str().unwrap(),
                "--width",
                "128",
                "--layers",
                "3",
                "--lr",
                "0.5",
            ],
        ),
        &[],
    );
    assert!(
        e.contains("--layers, --width, --lr cannot change on --resume"),
        "{e}"
    );
    let e = run_fails(
        &train_args(
            &run,
            &["--resume", run.to_str().unwrap(), "--max-steps", "1"],
        ),
        &[],
    );
    assert!(e.contains("is not beyond the checkpoint's step"), "{e}");
    assert_eq!(tree(&run), before);
}

#[test]
fn hostile_tokenizers_and_inputs_fail_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    // A BPE run, whose tokenizer.json we then make hostile: a regex that backtracks
    // past Oniguruma's retry limit on a long run of one letter.
    let run = d.join("bpe");
    run_ok(
        &train_args(&run, &["--max-steps", "2", "--tokenizer", "bpe:300"]),
        &[],
    );
    let mut tok: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("tokenizer.json")).unwrap()).unwrap();
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a|aa)+b".into();
    let evil = d.join("evil.json");
    std::fs::write(&evil, serde_json::to_vec(&tok).unwrap()).unwrap();
    let letters = d.join("letters.txt");
    std::fs::write(&letters, "a".repeat(30_000) + "\n").unwrap();
    let e = run_fails(
        &strs(&[
            "tokenizer",
            "stats",
            "--tokenizer",
            evil.to_str().unwrap(),
            "--text",
            letters.to_str().unwrap(),
        ]),
        &[],
    );
    assert!(e.contains("retry-limit"), "{e}");
    let e = run_fails(
        &train_args(
            &d.join("evil-run"),
            &[
                "--data",
                letters.to_str().unwrap(),
                "--tokenizer",
                evil.to_str().unwrap(),
            ],
        ),
        &[],
    );
    assert!(e.contains("retry-limit"), "{e}");
    // Degenerate text: one letter repeated becomes pre-tokens of at most 32 letters
    // (so BPE training stays linear in the text, not quadratic in the run).
    let one = d.join("one-letter.txt");
    std::fs::write(&one, "a".repeat(400_000) + "\n").unwrap();
    let out = run_ok(
        &strs(&[
            "tokenizer",
            "train",
            "--data",
            one.to_str().unwrap(),
            "--vocab-size",
            "1000",
            "--out",
            d.join("one.json").to_str().unwrap(),
        ]),
        &[],
    );
    let bpt: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("bytes/token"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(bpt <= 32.01, "pre-tokens longer than 32 bytes: {bpt}");
    // Inputs that never end are refused after the limit, not read until memory runs out.
    let e = run_fails(&train_args(&d.join("zero"), &["--data", "/dev/zero"]), &[]);
    assert!(e.contains("is more than"), "{e}");
    // CRLF text: split into poems like LF text, and a BPE trains on it.
    let crlf = d.join("crlf.txt");
    let lf = std::fs::read_to_string("data/zh_tiny.txt").unwrap();
    std::fs::write(&crlf, lf.replace('\n', "\r\n")).unwrap();
    let out = run_ok(
        &train_args(
            &d.join("crlf-run"),
            &[
                "--data",
                crlf.to_str().unwrap(),
                "--max-steps",
                "2",
                "--tokenizer",
                "bpe:300",
            ],
        ),
        &[],
    );
    assert!(
        out.contains("(875 poems)") && out.contains("(22 poems)"),
        "{out}"
    );
}

/// Rewrites a checkpoint's weights file with `edit` applied to tensor `name`'s values,
/// with a matching manifest (an altered file, as a hostile user would make it).
fn alter_weights(ckpt: &Path, name: &str, edit: impl Fn(&mut [f32])) {
    let loaded = checkpoint::load(ckpt, false, &candle_core::Device::Cpu).unwrap();
    let mut tensors = loaded.model.clone();
    let t = &tensors[name];
    let mut v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    edit(&mut v);
    let shape = t.shape().clone();
    tensors.insert(
        name.to_string(),
        candle_core::Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap(),
    );
    let path = ckpt.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let state_path = ckpt.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["files"]["model.safetensors"] = serde_json::json!({
        "bytes": bytes.len(),
        "xxh64": format!("{:016x}", checkpoint::xxh64(&bytes)),
    });
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
}

#[test]
fn what_was_silently_wrong_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let run = d.join("run");
    run_ok(&train_args(&run, &["--max-steps", "3"]), &[]);
    let (_, ckpt) = checkpoint::list(&run).pop().unwrap();
    // NaN weights: sample and eval refuse them (before, sample printed garbage).
    let nan = d.join("nan");
    std::fs::create_dir(&nan).unwrap();
    for f in ["model.safetensors", "optim.safetensors", "state.json"] {
        std::fs::copy(ckpt.join(f), nan.join(f)).unwrap();
    }
    alter_weights(&nan, "h.0.attn.c_attn.weight", |v| v[7] = f32::NAN);
    let e = sample_fails(&nan);
    assert!(
        e.contains("non-finite weights") && e.contains("h.0.attn.c_attn.weight"),
        "{e}"
    );
    // An update that leaves NaN weights stops the run; no checkpoint holds them.
    let poisoned = d.join("poisoned");
    let e = run_fails(
        &train_args(
            &poisoned,
            &["--max-steps", "10", "--checkpoint-interval", "2"],
        ),
        &[("TINYLM_FAULT_INJECT", "nan-weights:at-update=5")],
    );
    assert!(
        e.contains("made weights NaN or infinite") && e.contains("step-00000004"),
        "{e}"
    );
    for (_, c) in checkpoint::list(&poisoned) {
        checkpoint::load(&c, false, &candle_core::Device::Cpu).unwrap();
    }
    // A vocabulary that differs from the tokenizer's: a byte-level checkpoint whose
    // state claims a BPE (and the reverse) is refused at load, with both sizes.
    let bpe_run = d.join("bpe");
    run_ok(
        &train_args(&bpe_run, &["--max-steps", "2", "--tokenizer", "bpe:300"]),
        &[],
    );
    let (_, bpe_ckpt) = checkpoint::list(&bpe_run).pop().unwrap();
    let fingerprint = {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bpe_ckpt.join("state.json")).unwrap()).unwrap();
        s["tokenizer"].as_str().unwrap().to_string()
    };
    let mixed = d.join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for f in ["model.safetensors", "optim.safetensors", "state.json"] {
        std::fs::copy(ckpt.join(f), mixed.join(f)).unwrap();
    }
    std::fs::copy(bpe_run.join("tokenizer.json"), mixed.join("tokenizer.json")).unwrap();
    let state_path = mixed.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["tokenizer"] = fingerprint.into();
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
    let e = run_fails(
        &strs(&[
            "eval",
            "--checkpoint",
            mixed.to_str().unwrap(),
            "--text",
            "data/zh_tiny.txt",
        ]),
        &[],
    );
    assert!(
        e.contains("vocabulary of 256 but its tokenizer has 300 tokens"),
        "{e}"
    );
    // An empty prompt on a BPE checkpoint starts from that tokenizer's line break.
    let out = cmd(&[
        "sample",
        "--checkpoint",
        bpe_run.to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A resume trains on the text its run recorded (and refuses another), keeps the run's
/// metrics one record per step, and prunes only the checkpoints it wrote; a config's
/// `preset` is the preset it overrides, checked like the flag.
#[test]
fn a_resume_keeps_its_text_its_records_and_the_users_files() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let corpus = d.join("corpus.txt");
    std::fs::copy("data/zh_tiny.txt", &corpus).unwrap();
    let run = d.join("run");
    let c = corpus.to_str().unwrap();
    run_ok(
        &train_args(
            &run,
            &[
                "--data",
                c,
                "--max-steps",
                "4",
                "--checkpoint-interval",
                "2",
            ],
        ),
        &[],
    );
    // What a user keeps beside checkpoints, under names like theirs.
    for dir in ["step-1", "step-00000001"] {
        std::fs::create_dir(run.join(dir)).unwrap();
        std::fs::write(run.join(dir).join("notes.txt"), "mine").unwrap();
    }
    std::fs::write(run.join("step-00000003"), "mine").unwrap();
    // The run went past its last checkpoint (step 7 logged), then a write was cut.
    let metrics = run.join("metrics.jsonl");
    let mut m = std::fs::read_to_string(&metrics).unwrap();
    m.push_str("{\"step\":7,\"train_loss\":1.0}\n{\"step\":8,\"train_l");
    std::fs::write(&metrics, m).unwrap();
    // No --data: the recorded text, not data/zh_corpus.txt of the working directory.
    let resume = |extra: &[&str]| {
        let mut v = strs(&[
            "train",
            "--no-progress",
            "--sample-tokens",
            "0",
            "--log-interval",
            "1",
            "--checkpoint-interval",
            "2",
            "--resume",
            run.to_str().unwrap(),
        ]);
        v.extend(strs(extra));
        v
    };
    let out = run_ok(&resume(&["--max-steps", "8"]), &[]);
    assert!(out.contains(&format!("corpus {c}:")), "{out}");
    assert!(out.contains("dropped 1 record after step 4"), "{out}");
    assert!(out.contains("dropped a cut last line"), "{out}");
    let steps: Vec<(u64, bool)> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON lines");
            (v["step"].as_u64().unwrap(), v["train_loss"].is_number())
        })
        .collect();
    let trained: Vec<u64> = steps.iter().filter(|s| s.1).map(|s| s.0).collect();
    assert_eq!(trained, (1..=8).collect::<Vec<u64>>(), "{steps:?}");
    for f in [
        "step-1/notes.txt",
        "step-00000001/notes.txt",
        "step-00000003",
    ] {
        assert_eq!(std::fs::read_to_string(run.join(f)).unwrap(), "mine", "{f}");
    }
    let kept: Vec<usize> = checkpoint::list(&run).iter().map(|(s, _)| *s).collect();
    assert!(kept.contains(&8) && !kept.contains(&2), "{kept:?}");
    // Another text under the recorded name is refused, before anything is written.
    std::fs::write(
        &corpus,
        "床前明月光\n疑是地上霜\n\n举头望明月\n低头思故乡\n",
    )
    .unwrap();
    let before = tree(&run);
    let e = run_fails(&resume(&["--max-steps", "10"]), &[]);
    assert!(e.contains("is not the text checkpoint"), "{e}");
    assert_eq!(tree(&run), before);
    // Moved: found again with --data, and only if it is the same text.
    let moved = d.join("moved.txt");
    std::fs::copy("data/zh_tiny.txt", &moved).unwrap();
    std::fs::remove_file(&corpus).unwrap();
    let e = run_fails(&resume(&["--max-steps", "10"]), &[]);
    assert!(e.contains("give its new path with --data"), "{e}");
    run_ok(
        &resume(&["--max-steps", "10", "--data", moved.to_str().unwrap()]),
        &[],
    );
    // A config's preset: an unknown one, or one the flag contradicts, is refused.
    for (toml, flag, want) in [
        ("preset = \"nonsense\"\n", None, "unknown preset"),
        ("preset = \"tiny\"\n", Some("default"), "disagree"),
    ] {
        let cfg = d.join("c.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut args = train_args(
            &d.join("new"),
            &["--max-steps", "1", "--config", cfg.to_str().unwrap()],
        );
        if let Some(p) = flag {
            let i = args.iter().position(|a| a == "--preset").unwrap();
            args[i + 1] = p.to_string();
        }
        let e = run_fails(&args, &[]);
        assert!(e.contains(want), "{e}");
        assert!(!d.join("new").exists());
    }
}
