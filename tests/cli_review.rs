//! Hostile review of the command line, third round, against the real binary: each test
//! is one defect that was found, asserting the fixed behaviour.
//! - `train --seed` above i64::MAX is refused before the run directory exists;
//! - `sample --prompt` with `--prompt-file` is a usage error, not a silent choice;
//! - `sample --no-cache` gives the cached path's tokens past the context;
//! - `tokenizer train` refuses an unwritable `--out` before training;
//! - `bench --filter` that matches no case is an error naming the cases;
//! - a BPE smaller than asked says so.

mod bin_util;
use bin_util::*;

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

