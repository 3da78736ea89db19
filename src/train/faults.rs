//! Test hooks: faults injected through the environment variable `TINYLM_FAULT_INJECT`,
//! so that the failure paths of the real binary can be tested without a full disk or a
//! diverging model. Unset (as in every normal run) it costs one environment look-up.
//!
//! The value is a `;`-separated list of faults, each `kind:key=value,key=value`:
//!
//! - `checkpoint-write-fail:after-bytes=N`: every checkpoint save of this process
//!   fails once it has written N bytes of its files, with the error a full disk gives
//!   (ENOSPC), as if the disk filled up in the middle of the write.
//! - `checkpoint-write-delay:ms=N`: every file of a checkpoint save sleeps N ms after
//!   it is written, so that a test that kills the process at random moments often
//!   lands in the middle of a save.
//! - `nan-loss:from-step=A,to-step=B`: the A-th to B-th optimizer steps of this process
//!   (counted from 1, also in a resumed run) report a NaN loss, as a diverging model
//!   would. `to-step` defaults to "forever".
//! - `nan-weights:at-update=N`: the N-th applied update of this process leaves a NaN in
//!   the weights, as an update that overflows (an extreme rate or decay) would.
//! - `token-delay:ms=N`: `tinylm serve` sleeps N ms after each generated token, so that
//!   a test can disconnect or crowd the queue while a generation is surely running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The environment variable read by this module.
pub const ENV: &str = "TINYLM_FAULT_INJECT";

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    CheckpointWriteFail { after_bytes: u64 },
    CheckpointWriteDelay { ms: u64 },
    NanLoss { from_step: usize, to_step: usize },
    NanWeights { at_update: usize },
    TokenDelay { ms: u64 },
}

/// Parses a `TINYLM_FAULT_INJECT` value (see the module documentation).
pub fn parse(spec: &str) -> anyhow::Result<Vec<Fault>> {
    let mut out = Vec::new();
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (kind, args) = item.split_once(':').unwrap_or((item, ""));
        let mut kv = std::collections::HashMap::new();
        for a in args.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{ENV}: expected key=value, got {a:?}"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| anyhow::anyhow!("{ENV}: {k} must be a number, got {v:?}"))?;
            kv.insert(k, v);
        }
        let take = |k: &str, kv: &mut std::collections::HashMap<&str, u64>| kv.remove(k);
        let fault = match kind {
            "checkpoint-write-fail" => Fault::CheckpointWriteFail {
                after_bytes: take("after-bytes", &mut kv).unwrap_or(0),
            },
            "checkpoint-write-delay" => Fault::CheckpointWriteDelay {
                ms: take("ms", &mut kv).unwrap_or(0),
            },
            "nan-loss" => Fault::NanLoss {
                from_step: take("from-step", &mut kv).unwrap_or(1) as usize,
                to_step: take("to-step", &mut kv).map_or(usize::MAX, |v| v as usize),
            },
            "nan-weights" => Fault::NanWeights {
                at_update: take("at-update", &mut kv).unwrap_or(1) as usize,
            },
            "token-delay" => Fault::TokenDelay {
                ms: take("ms", &mut kv).unwrap_or(0),
            },
            other => anyhow::bail!(
                "{ENV}: unknown fault {other:?} (known: checkpoint-write-fail, checkpoint-write-delay, nan-loss, nan-weights, token-delay)"
            ),
        };
        if let Some(k) = kv.keys().next() {
            anyhow::bail!("{ENV}: fault {kind} takes no {k:?}");
        }
        out.push(fault);
    }
    Ok(out)
}

/// The faults of this process: those of a valid `TINYLM_FAULT_INJECT`, else none
/// (`check_env` reports an invalid one).
pub fn active() -> &'static [Fault] {
    static FAULTS: OnceLock<Vec<Fault>> = OnceLock::new();
    FAULTS.get_or_init(|| {
        std::env::var(ENV)
            .ok()
            .and_then(|s| parse(&s).ok())
            .unwrap_or_default()
    })
}

/// Refuses an invalid `TINYLM_FAULT_INJECT`, so that a misspelt hook cannot make a
/// fault test pass by injecting nothing.
pub fn check_env() -> anyhow::Result<()> {
    match std::env::var(ENV) {
        Ok(s) => parse(&s).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Bytes after which checkpoint writes fail, if that fault is injected.
pub fn checkpoint_write_limit() -> Option<u64> {
    active().iter().find_map(|f| match f {
        Fault::CheckpointWriteFail { after_bytes } => Some(*after_bytes),
        _ => None,
    })
}

/// Sleeps as `checkpoint-write-delay` asks, if injected.
pub fn checkpoint_write_pause() {
    for f in active() {
        if let Fault::CheckpointWriteDelay { ms } = f {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}

/// Sleeps as `token-delay` asks, if injected.
pub fn token_pause() {
    for f in active() {
        if let Fault::TokenDelay { ms } = f {
            std::thread::sleep(std::time::Duration::from_millis(*ms));
        }
    }
}

/// Counts an optimizer step of this process; true when its loss is to be NaN.
pub fn nan_loss_next_step() -> bool {
    static STEPS: AtomicUsize = AtomicUsize::new(0);
    let faults = active();
    if faults.is_empty() {
        return false;
    }
    let n = STEPS.fetch_add(1, Ordering::Relaxed) + 1;
    faults.iter().any(|f| match f {
        Fault::NanLoss { from_step, to_step } => (*from_step..=*to_step).contains(&n),
        _ => false,
    })
}

/// Counts an applied update of this process; true when it is to leave NaN weights.
pub fn nan_weights_after_update() -> bool {
    static UPDATES: AtomicUsize = AtomicUsize::new(0);
    let faults = active();
    if faults.is_empty() {
        return false;
    }
    let n = UPDATES.fetch_add(1, Ordering::Relaxed) + 1;
    faults
        .iter()
        .any(|f| matches!(f, Fault::NanWeights { at_update } if *at_update == n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            parse("checkpoint-write-fail:after-bytes=1000; nan-loss:from-step=3,to-step=5")
                .unwrap(),
            vec![
                Fault::CheckpointWriteFail { after_bytes: 1000 },
                Fault::NanLoss {
                    from_step: 3,
                    to_step: 5
                }
            ]
        );
        assert_eq!(
            parse("nan-loss").unwrap(),
            vec![Fault::NanLoss {
                from_step: 1,
                to_step: usize::MAX
            }]
        );
        assert_eq!(
            parse("token-delay:ms=20").unwrap(),
            vec![Fault::TokenDelay { ms: 20 }]
        );
        assert_eq!(
            parse("nan-weights:at-update=4").unwrap(),
            vec![Fault::NanWeights { at_update: 4 }]
        );
        assert!(parse("").unwrap().is_empty());
        for bad in [
            "disk-full",
            "nan-loss:from=3",
            "nan-loss:from-step=x",
            "nan-loss:3",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            println!("{bad:?} -> {e}");
            assert!(e.contains(ENV));
        }
    }
}
