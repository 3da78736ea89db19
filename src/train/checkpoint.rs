//! Checkpoints: a directory `step-NNNNNNNN/` in the run directory holding
//! `model.safetensors` (weights), `optim.safetensors` (AdamW moments) and `state.json`
//! (config, step, sampler state, tokenizer, best validation loss).
//!
//! Written atomically: everything goes into a temporary directory, each file is fsynced,
//! then the directory is renamed into place and the run directory fsynced. A crash at
//! any moment leaves either the old set of checkpoints or the new one, never half of one.

use super::config::TrainConfig;
use crate::data::SamplerState;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What besides tensors a checkpoint records.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    pub config: TrainConfig,
    /// Optimizer steps completed.
    pub step: usize,
    /// The step horizon of the learning-rate schedule.
    pub horizon: usize,
    pub sampler: SamplerState,
    /// "bytes" or "bpe:<vocab>": a checkpoint refuses another tokenizer.
    pub tokenizer: String,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// Training wall-clock seconds so far (evaluation included).
    pub elapsed_s: f64,
    /// Validation loss at this step, if evaluated here.
    pub val_loss: Option<f64>,
    /// Elapsed seconds when warmup ended: the start of a time-budget run's decay.
    #[serde(default)]
    pub warmup_end_s: Option<f64>,
}

/// A checkpoint read back: its state, the weights and the optimizer moments.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: TrainState,
    pub model: HashMap<String, Tensor>,
    pub optim: HashMap<String, Tensor>,
}

const MODEL_FILE: &str = "model.safetensors";
const OPTIM_FILE: &str = "optim.safetensors";
const STATE_FILE: &str = "state.json";
/// Larger state files are refused unread: ours are a few kilobytes.
const MAX_STATE_BYTES: u64 = 1 << 20;

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn write_file_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes bytes to `path` atomically (temporary file, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    write_file_synced(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, path))
        .and_then(|_| fsync_dir(dir))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        })
}

fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> anyhow::Result<Vec<u8>> {
    // Sorted names: the same tensors always give the same bytes.
    let mut named: Vec<(&String, &Tensor)> = tensors.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    let views = named
        .into_iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, None)?)
}

/// Saves a checkpoint for `state.step` in `run_dir`; returns its directory.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    model: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
) -> anyhow::Result<PathBuf> {
    let final_dir = run_dir.join(step_dir_name(state.step));
    let tmp_dir = run_dir.join(format!(
        ".{}.tmp-{}",
        step_dir_name(state.step),
        std::process::id()
    ));
    let result = (|| -> anyhow::Result<()> {
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir)?;
        write_file_synced(&tmp_dir.join(MODEL_FILE), &safetensors_bytes(model)?)?;
        write_file_synced(&tmp_dir.join(OPTIM_FILE), &safetensors_bytes(optim)?)?;
        write_file_synced(
            &tmp_dir.join(STATE_FILE),
            serde_json::to_string_pretty(state)?.as_bytes(),
        )?;
        fsync_dir(&tmp_dir)?;
        if final_dir.exists() {
            // Re-saving the same step (e.g. Ctrl-C right after a periodic checkpoint).
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp_dir, &final_dir)?;
        fsync_dir(run_dir)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp_dir);
        anyhow::bail!("cannot write checkpoint {}: {e}", final_dir.display());
    }
    Ok(final_dir)
}

/// Checkpoint directories of a run, oldest first.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep_last` checkpoints, never the one of `best_step`.
pub fn prune(run_dir: &Path, keep_last: usize, best_step: Option<usize>) -> anyhow::Result<()> {
    let all = list(run_dir);
    let n = all.len();
    for (i, (step, dir)) in all.into_iter().enumerate() {
        if i + keep_last.max(1) < n && Some(step) != best_step {
            fs::remove_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!("cannot delete old checkpoint {}: {e}", dir.display())
            })?;
        }
    }
    Ok(())
}

/// Which checkpoint a path names: a checkpoint directory itself, or a run directory
/// (then its best checkpoint if `prefer_best`, else its latest).
pub fn resolve(path: &Path, prefer_best: bool) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(path.exists(), "checkpoint {} not found", path.display());
    if path.join(STATE_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let all = list(path);
    let (_, latest) = all
        .last()
        .ok_or_else(|| anyhow::anyhow!("no checkpoint in {}", path.display()))?;
    if prefer_best {
        if let Ok(state) = read_state(latest) {
            if let Some(best) = state.best_step {
                if let Some((_, dir)) = all.iter().find(|(s, _)| *s == best) {
                    return Ok(dir.clone());
                }
            }
        }
    }
    Ok(latest.clone())
}

fn read_state(dir: &Path) -> anyhow::Result<TrainState> {
    let path = dir.join(STATE_FILE);
    let meta =
        fs::metadata(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_STATE_BYTES,
        "{} is {} bytes, too large to be a checkpoint state",
        path.display(),
        meta.len()
    );
    let text = fs::read_to_string(&path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("malformed checkpoint state {}: {e}", path.display()))
}

fn read_tensors(path: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes =
        fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "corrupt or truncated checkpoint file {}: {e}",
            path.display()
        )
    })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        anyhow::ensure!(
            view.dtype() == safetensors::Dtype::F32,
            "{}: tensor {name} has dtype {:?}, expected F32",
            path.display(),
            view.dtype()
        );
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, Tensor::from_vec(data, view.shape(), device)?);
    }
    Ok(out)
}

/// Loads a checkpoint (see [`resolve`] for what `path` may name).
pub fn load(path: &Path, prefer_best: bool, device: &Device) -> anyhow::Result<Loaded> {
    let dir = resolve(path, prefer_best)?;
    let state = read_state(&dir)?;
    state
        .config
        .validate()
        .map_err(|e| anyhow::anyhow!("checkpoint {} has an invalid config: {e}", dir.display()))?;
    let model = read_tensors(&dir.join(MODEL_FILE), device)?;
    let optim_path = dir.join(OPTIM_FILE);
    let optim = if optim_path.exists() {
        read_tensors(&optim_path, device)?
    } else {
        HashMap::new()
    };
    Ok(Loaded {
        dir,
        state,
        model,
        optim,
    })
}
