//! Hostile review of the command line, third round, against the real binary: each test
//! is one defect that was found, asserting the fixed behaviour.
//! - `train --seed` above i64::MAX is refused before the run directory exists;
//! - `sample --prompt` with `--prompt-file` is a usage error, not a silent choice;
//! - `sample --no-cache` gives the cached path's tokens past the context;
//! - `tokenizer train` refuses an unwritable `--out` before training, and with
//!   `--force` replaces only a regular file;
//! - `bench --filter` that matches no case is an error naming the cases;
//! - a BPE smaller than asked says so.

use std::path::Path;

mod bin_util;
use bin_util::*;

/// Runs expecting clap's usage error: exit 2, one line naming `want`.
fn usage_error(args: &[&str], want: &str) {
    let o = cmd(args).output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        err.starts_with("error: ") && err.contains(want),
        "{args:?}: {err}"
    );
    println!("-> {}", err.trim_end());
}

#[test]
fn train_seed_above_i64_max_is_refused_before_any_work() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("o");
    for seed in ["9223372036854775808", "18446744073709551615"] {
        let e = run_fails(
            &train_args(&out, &["--max-steps", "1", "--seed", seed]),
            &[],
        );
        assert!(
            e.contains("--seed must be in [0, 9223372036854775807]") && e.contains(seed),
            "{e}"
        );
        assert!(!out.exists(), "--seed {seed} created the run directory");
    }
    // The largest allowed seed trains, and config.toml keeps it.
    run_ok(
        &train_args(
            &out,
            &[
                "--max-steps",
                "1",
                "--form-samples",
                "0",
                "--seed",
                "9223372036854775807",
            ],
        ),
        &[],
    );
    let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(config.contains("seed = 9223372036854775807"), "{config}");
    // sample keeps the whole u64 range (its seed is never stored).
    let o = cmd(&[
        "sample",
        "--checkpoint",
        out.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--seed",
        "18446744073709551615",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn sample_prompt_and_prompt_file_conflict() {
    let root = tempfile::tempdir().unwrap();
    let f = root.path().join("p.txt");
    std::fs::write(&f, "床前").unwrap();
    // Refused while parsing, before the checkpoint is even looked for.
    usage_error(
        &[
            "sample",
            "--checkpoint",
            "nope",
            "--prompt",
            "X",
            "--prompt-file",
            f.to_str().unwrap(),
        ],
        "--prompt-file",
    );
}

/// A 3-step model of context 32: enough to sample from.
fn tiny_run(root: &Path) -> std::path::PathBuf {
    let run = root.join("run");
    run_ok(
        &train_args(
            &run,
            &["--max-steps", "3", "--form-samples", "0", "--threads", "1"],
        ),
        &[],
    );
    run
}

#[test]
fn sample_no_cache_gives_the_cached_tokens_past_the_context() {
    let root = tempfile::tempdir().unwrap();
    let run = tiny_run(root.path());
    let sample = |n: &str, no_cache: bool| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            run.to_str().unwrap(),
            "--prompt",
            "床前",
            "--max-new-tokens",
            n,
            "--seed",
            "7",
            "--threads",
            "1",
        ];
        if no_cache {
            args.push("--no-cache");
        }
        let o = cmd(&args).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        o.stdout
    };
    // Context 32: 100 and 150 new tokens restart the window several times.
    for n in ["20", "100", "150"] {
        let (cached, full) = (sample(n, false), sample(n, true));
        assert!(cached.len() > 6 + 20, "{n}: short sample");
        assert_eq!(
            text(&cached),
            text(&full),
            "--no-cache differs with {n} tokens"
        );
    }
}

/// The one-line error of `tokenizer train --data DATA --vocab-size 300 --out OUT`.
fn tokenizer_train_fails(data: &Path, out: &Path, force: bool) -> String {
    let mut a = strs(&[
        "tokenizer",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ]);
    if force {
        a.push("--force".into());
    }
    run_fails(&a, &[])
}

#[test]
fn tokenizer_train_refuses_an_unwritable_out_before_training() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    // A corpus that would take minutes to train were training to come first: the
    // refusal must come before it is read (a missing --data here proves that too).
    let missing = d.join("missing.txt");
    let train = |out: &Path, force: bool| tokenizer_train_fails(&missing, out, force);
    let e = train(&d.join("nodir").join("x.json"), false);
    assert!(e.contains("nodir") && e.contains("does not exist"), "{e}");
    let file = d.join("file");
    std::fs::write(&file, "keep").unwrap();
    let e = train(&file.join("x.json"), false);
    assert!(e.contains("is not a directory"), "{e}");
    let dir = d.join("existing_dir.json");
    std::fs::create_dir(&dir).unwrap();
    for force in [false, true] {
        let e = train(&dir, force);
        assert!(e.contains("is a directory"), "--force {force}: {e}");
    }
    let e = train(&file, false);
    assert!(e.contains("--force"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    // Nothing was left behind (no probe file).
    let mut names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["existing_dir.json", "file"]);
    // A writable --out still gets past the check (to the missing corpus).
    let e = train(&d.join("ok.json"), false);
    assert!(e.contains("missing.txt"), "{e}");
}

/// `tokenizer train` follows `plot`'s rule: with `--force` it replaces a regular file
/// only, never a symbolic link (to a file, or dangling) or a FIFO, and leaves them as
/// they were; refused before the corpus is read.
#[cfg(unix)]
#[test]
fn tokenizer_train_replaces_only_a_regular_file_even_forced() {
    use std::os::unix::fs::FileTypeExt;
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let missing = d.join("missing.txt");
    let target = d.join("target.json");
    std::fs::write(&target, "precious").unwrap();
    let link = d.join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = d.join("dangling.json");
    std::os::unix::fs::symlink(d.join("nowhere.json"), &dangling).unwrap();
    let fifo = d.join("fifo.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, kind) in [
        (&link, "a symbolic link"),
        (&dangling, "a symbolic link"),
        (&fifo, "not a regular file"),
    ] {
        for force in [false, true] {
            let e = tokenizer_train_fails(&missing, path, force);
            assert!(
                e.contains(path.to_str().unwrap()) && e.contains("--force"),
                "{e}"
            );
            if force {
                assert!(e.contains(kind) && e.contains("only a regular file"), "{e}");
            }
            assert!(!e.contains("missing.txt"), "the corpus was read first: {e}");
        }
    }
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    assert_eq!(
        std::fs::read_link(&dangling).unwrap(),
        d.join("nowhere.json")
    );
    assert!(!d.join("nowhere.json").exists());
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn bench_filter_that_matches_nothing_is_an_error() {
    for (what, some_case) in [
        ("loss", "ce_fwd_512x256"),
        ("attention", "attn_fwd_2x2x128x32"),
        ("train", "bench-ref"),
    ] {
        let args = strs(&[
            "bench",
            what,
            "--quick",
            "--json",
            "--threads",
            "1",
            "--filter",
            "zzz",
        ]);
        let e = run_fails(&args, &[]);
        assert!(
            e.contains("--filter zzz matches no case; cases are: ") && e.contains(some_case),
            "{what}: {e}"
        );
    }
}

#[test]
fn a_bpe_smaller_than_asked_says_why() {
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let one = d.join("one-byte.txt");
    std::fs::write(&one, "a").unwrap();
    let out = d.join("t.json");
    let o = cmd(&[
        "tokenizer",
        "train",
        "--data",
        one.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let (so, se) = (text(&o.stdout), text(&o.stderr));
    assert!(o.status.success(), "{se}");
    assert!(so.contains("trained bpe:256"), "{so}");
    let notes: Vec<&str> = se.lines().collect();
    assert_eq!(notes.len(), 1, "{se}");
    assert!(
        notes[0].starts_with("note: ")
            && notes[0].contains("256 tokens, fewer than the 300 asked")
            && notes[0].contains("no more pairs to merge"),
        "{se}"
    );
    // A vocabulary the text can fill: no note.
    let o = cmd(&[
        "tokenizer",
        "train",
        "--data",
        "data/zh_tiny.txt",
        "--vocab-size",
        "300",
        "--out",
        out.to_str().unwrap(),
        "--force",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
}
