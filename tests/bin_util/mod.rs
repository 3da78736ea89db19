//! Running the real `tinylm` binary from tests: a command with a fixed thread count, a
//! small fast training command, and assertions that a failure is one clean line.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use tinylm::train::checkpoint;

pub const BIN: &str = env!("CARGO_BIN_EXE_tinylm");

pub fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env_remove(tinylm::train::faults::ENV)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// Owned arguments, as `run_ok` / `run_fails` take them.
pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The binary's output, run to the end.
pub fn output(args: &[&str]) -> Output {
    cmd(args).output().expect("run tinylm")
}

/// Output that must be valid UTF-8 (the streaming decoder's promise).
pub fn utf8(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("output is valid UTF-8")
}

/// A small, fast training command into `run` (~20-50 ms a step on 2 cores); flags in
/// `extra` replace the defaults of the same name.
pub fn train_args(run: &Path, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--data", "data/zh_tiny.txt"),
        ("--preset", "tiny"),
        ("--context", "32"),
        ("--width", "32"),
        ("--batch-size", "4"),
        ("--eval-batches", "1"),
        ("--sample-tokens", "0"),
        ("--log-interval", "1"),
    ];
    let mut v = vec!["train".to_string(), "--no-progress".to_string()];
    // A resume keeps its checkpoint's model and batch (and refuses flags for them).
    let resume = extra.contains(&"--resume");
    let new_run_only = [
        "--preset",
        "--context",
        "--width",
        "--batch-size",
        "--eval-batches",
    ];
    for (flag, value) in defaults {
        let skip = extra.contains(&flag) || (resume && new_run_only.contains(&flag));
        if !skip {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    if !extra.contains(&"--resume") {
        v.extend(["--out".to_string(), run.display().to_string()]);
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

pub fn run_ok(args: &[String], env: &[(&str, &str)]) -> String {
    let out = cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (so, se) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{args:?} failed:\n{so}\n{se}");
    so
}

/// Runs expecting failure: one line on stderr, no panic, a non-zero exit.
pub fn run_fails(args: &[String], env: &[(&str, &str)]) -> String {
    let out = cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    one_line_error(args, &out)
}

pub fn one_line_error(args: &[String], out: &Output) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(out.status.code(), Some(1), "{args:?}: exit status");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: error is not one line:\n{err}");
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    println!("-> {}", lines[0]);
    lines[0].to_string()
}

pub fn sample_fails(ckpt: &Path) -> String {
    let args: Vec<String> = ["sample", "--checkpoint", ckpt.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run_fails(&args, &[])
}

pub fn sample_works(ckpt: &Path) {
    let out = cmd(&[
        "sample",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--max-new-tokens",
        "5",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "sample from {} failed: {}",
        ckpt.display(),
        text(&out.stderr)
    );
}

/// Hidden leftovers of interrupted writes in a run directory (the lock excluded).
pub fn leftovers(run: &Path) -> Vec<String> {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') && n != checkpoint::LOCK_FILE && n != checkpoint::RUN_MARKER)
        .collect()
}

/// Every file of a checkpoint directory, for before/after comparisons.
pub fn snapshot(dir: &Path) -> HashMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}
