//! Checkpoints: a directory `step-NNNNNNNN/` in the run directory holding
//! `model.safetensors` (weights), `optim.safetensors` (AdamW moments; Muon's momentum)
//! and `state.json` (config, step, sampler state, tokenizer, best validation loss, the
//! training text's path, size and xxHash64, and the size and xxHash64 of both tensor
//! files).
//!
//! Written atomically: everything goes into a temporary directory, each file is fsynced,
//! then the directory is renamed into place and the run directory fsynced. A crash at
//! any moment leaves either the old set of checkpoints or the new one, never half of one.
//! Replacing or deleting a checkpoint first renames it to a hidden name, so a crash
//! never leaves a half-deleted `step-*` directory; `clean_stale` (run under the run's
//! lock) tidies what a crash left behind.
//!
//! Reading treats every file as hostile: sizes are checked against the recorded ones
//! before anything is read, the checksums are verified, the state is size-limited and
//! strictly parsed, and the config is checked against the tensors actually present
//! before any shape is derived from it, so no untrusted number sizes an allocation.

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
    /// AdamW updates applied (its bias-correction t): fewer than `step` when
    /// non-finite steps were skipped. Absent in older checkpoints: then `step`.
    #[serde(default)]
    pub optimizer_steps: Option<u64>,
    /// The training text: a resume reads it again from here and refuses a text that
    /// changed. Absent in older checkpoints.
    #[serde(default)]
    pub corpus: Option<CorpusRecord>,
    /// The precision the step's products ran in (what `dtype` resolved to on the
    /// machine that wrote this), so that a resume elsewhere can say it changes. Absent
    /// in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub products: Option<crate::model::Precision>,
}

/// Which text a run trained on: its path as given, its size and its checksum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusRecord {
    pub path: PathBuf,
    pub bytes: u64,
    /// xxHash64 (seed 0) of the whole text, 16 lowercase hex digits.
    pub xxh64: String,
}

impl CorpusRecord {
    pub fn of(path: &Path, text: &[u8]) -> Self {
        Self {
            path: path.to_path_buf(),
            bytes: text.len() as u64,
            xxh64: format!("{:016x}", xxh64(text)),
        }
    }

    /// Whether `other` is the same text (wherever it lives now).
    pub fn same_text(&self, other: &CorpusRecord) -> bool {
        self.bytes == other.bytes && self.xxh64 == other.xxh64
    }
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
/// The key of `state.json` that records the tensor files' sizes and checksums.
const FILES_KEY: &str = "files";
/// Larger state files are refused unread: ours are a few kilobytes.
const MAX_STATE_BYTES: u64 = 1 << 20;
/// The lock file of a run directory.
pub const LOCK_FILE: &str = ".lock";

/// Size and checksum of a file of a checkpoint, as recorded in its `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub bytes: u64,
    /// xxHash64 (seed 0) of the whole file, 16 lowercase hex digits.
    pub xxh64: String,
}

impl FileSum {
    fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            xxh64: format!("{:016x}", xxh64(bytes)),
        }
    }
}

/// xxHash64 with seed 0 (Yann Collet's specification, as `xxhash.xxh64` in Python):
/// detects any bit flip in a checkpoint file at ~GB/s, where a byte-at-a-time hash
/// would slow every save of a large model.
pub fn xxh64(data: &[u8]) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    let u64_at = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let round = |acc: u64, lane: u64| {
        acc.wrapping_add(lane.wrapping_mul(P2))
            .rotate_left(31)
            .wrapping_mul(P1)
    };
    let merge = |acc: u64, v: u64| (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4);
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v = [P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (i, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, u64_at(&rest[8 * i..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        P5
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h = (h ^ round(0, u64_at(rest)))
            .rotate_left(27)
            .wrapping_mul(P1)
            .wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let w = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as u64;
        h = (h ^ w.wrapping_mul(P1))
            .rotate_left(23)
            .wrapping_mul(P2)
            .wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h = (h ^ (b as u64).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes and fsyncs a file. `budget` is the test hook of `TINYLM_FAULT_INJECT`
/// (`checkpoint-write-fail`): the bytes still allowed before writes fail as on a full
/// disk.
fn write_file_synced(path: &Path, bytes: &[u8], budget: &mut Option<u64>) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    super::faults::checkpoint_write_pause();
    if let Some(left) = budget {
        let n = (*left).min(bytes.len() as u64) as usize;
        f.write_all(&bytes[..n])?;
        *left -= n as u64;
        if n < bytes.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "No space left on device (injected by {})",
                    super::faults::ENV
                ),
            ));
        }
    } else {
        f.write_all(bytes)?;
    }
    f.sync_all()
}

/// Writes bytes to `path` atomically (temporary file, fsync, rename, fsync directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = crate::data::dir_of(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    write_file_synced(&tmp, bytes, &mut None)
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

/// `state.json`'s text: the state plus the sizes and checksums of the tensor files.
fn state_json(state: &TrainState, files: &[(&str, &[u8])]) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(state)?;
    let sums: std::collections::BTreeMap<&str, FileSum> =
        files.iter().map(|(n, b)| (*n, FileSum::of(b))).collect();
    v.as_object_mut()
        .expect("a struct serialises to an object")
        .insert(FILES_KEY.to_string(), serde_json::to_value(sums)?);
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Saves a checkpoint for `state.step` in `run_dir`; returns its directory.
pub fn save(
    run_dir: &Path,
    state: &TrainState,
    model: &HashMap<String, Tensor>,
    optim: &HashMap<String, Tensor>,
) -> anyhow::Result<PathBuf> {
    let final_dir = run_dir.join(step_dir_name(state.step));
    let pid = std::process::id();
    let tmp_dir = run_dir.join(format!(".{}.tmp-{pid}", step_dir_name(state.step)));
    let mut budget = super::faults::checkpoint_write_limit();
    let result = (|| -> anyhow::Result<()> {
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir)?;
        let model_bytes = safetensors_bytes(model)?;
        let optim_bytes = safetensors_bytes(optim)?;
        let state_text = state_json(
            state,
            &[(MODEL_FILE, &model_bytes), (OPTIM_FILE, &optim_bytes)],
        )?;
        write_file_synced(&tmp_dir.join(MODEL_FILE), &model_bytes, &mut budget)?;
        write_file_synced(&tmp_dir.join(OPTIM_FILE), &optim_bytes, &mut budget)?;
        write_file_synced(
            &tmp_dir.join(STATE_FILE),
            state_text.as_bytes(),
            &mut budget,
        )?;
        fsync_dir(&tmp_dir)?;
        if final_dir.exists() {
            // Re-saving the same step (e.g. an evaluation right after a periodic
            // checkpoint): the old one is moved aside, not deleted, until the new one
            // is in place; `clean_stale` puts it back if a crash comes in between.
            let aside = run_dir.join(format!(".{}.replaced-{pid}", step_dir_name(state.step)));
            fs::rename(&final_dir, &aside)?;
            fs::rename(&tmp_dir, &final_dir)?;
            fsync_dir(run_dir)?;
            fs::remove_dir_all(&aside)?;
        } else {
            fs::rename(&tmp_dir, &final_dir)?;
        }
        fsync_dir(run_dir)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp_dir);
        anyhow::bail!("cannot write checkpoint {}: {e}", final_dir.display());
    }
    Ok(final_dir)
}

/// Checkpoint directories of a run, oldest first: only what [`save`] writes, a real
/// directory named exactly `step-NNNNNNNN` holding a `state.json` file. Anything else
/// that merely looks like one (`step-1/`, a plain file `step-00000003`, a symlink, a
/// directory of the user's notes) is not a checkpoint, so that pruning and resuming
/// never touch it.
pub fn list(run_dir: &Path) -> Vec<(usize, PathBuf)> {
    let mut out: Vec<(usize, PathBuf)> = fs::read_dir(run_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            let ours = name == step_dir_name(step)
                && e.file_type().is_ok_and(|t| t.is_dir())
                && fs::symlink_metadata(e.path().join(STATE_FILE)).is_ok_and(|m| m.is_file());
            ours.then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// Deletes all but the newest `keep_last` checkpoints, never the one of `best_step`.
/// Each is first renamed to a hidden name, so that a crash mid-delete leaves no
/// half-deleted checkpoint where `list` would find it.
pub fn prune(run_dir: &Path, keep_last: usize, best_step: Option<usize>) -> anyhow::Result<()> {
    let all = list(run_dir);
    let n = all.len();
    for (i, (step, dir)) in all.into_iter().enumerate() {
        // Saturating: a huge keep_last from a hostile config must keep all, not wrap.
        if i.saturating_add(keep_last.max(1)) < n && Some(step) != best_step {
            let doomed = run_dir.join(format!(
                ".{}.deleting-{}",
                step_dir_name(step),
                std::process::id()
            ));
            fs::rename(&dir, &doomed)
                .and_then(|_| fs::remove_dir_all(&doomed))
                .map_err(|e| {
                    anyhow::anyhow!("cannot delete old checkpoint {}: {e}", dir.display())
                })?;
        }
    }
    Ok(())
}

/// The marker file of a run directory: written when a run starts, before anything
/// else. Only a directory holding it (or, for runs made before the marker existed, a
/// checkpoint) is ever tidied, so a run never removes what it did not write.
pub const RUN_MARKER: &str = ".tinylm-run";

/// The files a run writes with [`write_atomic`]; only their temporary names are tidied.
const ATOMIC_FILES: &[&str] = &[
    "config.toml",
    "tokenizer.json",
    "curves.svg",
    "metrics.jsonl",
];

/// True when `dir` is a tinylm run directory: it holds the run marker, or (a run from
/// before the marker) at least one checkpoint with its `state.json`.
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(RUN_MARKER).is_file() || !list(dir).is_empty()
}

/// Marks `dir` as a run directory (see [`RUN_MARKER`]).
pub fn mark_run_dir(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(RUN_MARKER);
    if path.is_file() {
        return Ok(());
    }
    write_atomic(
        &path,
        b"This directory is a tinylm run: its checkpoints, config and metrics.\n",
    )
}

/// The records a run writes beside its checkpoints (metrics, config, tokenizer,
/// curves); [`remove_run_records`] removes only these, by name.
pub const RUN_RECORDS: &[&str] = &[
    "metrics.jsonl",
    "config.toml",
    "tokenizer.json",
    "curves.svg",
];

/// Removes a run's records ([`RUN_RECORDS`]) from `run_dir`, a run directory without
/// checkpoints that a new run starts over in (call it holding the lock). Returns how
/// many were there.
pub fn remove_run_records(run_dir: &Path) -> anyhow::Result<usize> {
    anyhow::ensure!(
        run_dir.join(RUN_MARKER).is_file() && list(run_dir).is_empty(),
        "{} is not a run without checkpoints",
        run_dir.display()
    );
    let mut n = 0;
    for name in RUN_RECORDS {
        let p = run_dir.join(name);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
            fs::remove_file(&p)
                .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// What a leftover of an interrupted write is, parsed from its exact name: only names
/// of the forms this module writes (`.step-NNNNNNNN.tmp-PID`, `.step-NNNNNNNN.deleting-PID`,
/// `.step-NNNNNNNN.replaced-PID`, `.config.toml.tmp-PID`, ...) qualify.
#[derive(Debug, PartialEq)]
enum Leftover {
    /// A temporary file or directory, or a checkpoint being deleted: remove it.
    Remove,
    /// A checkpoint moved aside for replacement: put it back as this step directory
    /// if its replacement never arrived, else remove it.
    Replaced(String),
}

fn parse_leftover(name: &str) -> Option<Leftover> {
    let hidden = name.strip_prefix('.')?;
    let (base, kind_pid) = hidden.rsplit_once('.')?;
    let (kind, pid) = kind_pid.split_once('-')?;
    if pid.is_empty() || pid.len() > 10 || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step_dir = base
        .strip_prefix("step-")
        .is_some_and(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()));
    match kind {
        "tmp" if step_dir || ATOMIC_FILES.contains(&base) || base == RUN_MARKER => {
            Some(Leftover::Remove)
        }
        "deleting" if step_dir => Some(Leftover::Remove),
        "replaced" if step_dir => Some(Leftover::Replaced(base.to_string())),
        _ => None,
    }
}

/// Tidies what an interrupted run left in `run_dir` (call it holding the run's lock):
/// temporary files and checkpoint directories are deleted, a checkpoint moved aside
/// for replacement is put back if its replacement never arrived, and a checkpoint
/// being deleted is finished off. Only entries whose exact names this module writes
/// are touched, and only in a run directory ([`is_run_dir`]); anything else is left
/// alone. Returns how many entries it handled.
pub fn clean_stale(run_dir: &Path) -> anyhow::Result<usize> {
    if !is_run_dir(run_dir) {
        return Ok(0);
    }
    let mut handled = 0;
    for entry in fs::read_dir(run_dir).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(what) = parse_leftover(&name) else {
            continue;
        };
        let path = entry.path();
        let remove = |p: &Path| {
            // symlink_metadata: a link named like a leftover is removed, never followed.
            if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            }
        };
        let result = match what {
            Leftover::Remove => remove(&path),
            Leftover::Replaced(step_dir) => {
                let original = run_dir.join(step_dir);
                if original.exists() {
                    remove(&path)
                } else {
                    fs::rename(&path, &original)
                }
            }
        };
        result.map_err(|e| anyhow::anyhow!("cannot tidy {}: {e}", path.display()))?;
        handled += 1;
    }
    if handled > 0 {
        fsync_dir(run_dir)
            .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", run_dir.display()))?;
    }
    Ok(handled)
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
        if let Ok((state, _)) = read_state(latest) {
            if let Some(best) = state.best_step {
                if let Some((_, dir)) = all.iter().find(|(s, _)| *s == best) {
                    return Ok(dir.clone());
                }
            }
        }
    }
    Ok(latest.clone())
}

/// Parses `state.json`'s bytes: the state and, when recorded, the tensor files' sizes
/// and checksums. Refuses malformed JSON, unknown fields and implausible values.
pub fn parse_state(bytes: &[u8]) -> anyhow::Result<(TrainState, HashMap<String, FileSum>)> {
    anyhow::ensure!(
        bytes.len() as u64 <= MAX_STATE_BYTES,
        "{} bytes, too large to be a checkpoint state",
        bytes.len()
    );
    let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
    let files = match v.as_object_mut().and_then(|o| o.remove(FILES_KEY)) {
        Some(f) => serde_json::from_value(f)?,
        None => HashMap::new(),
    };
    let state: TrainState = serde_json::from_value(v)?;
    anyhow::ensure!(
        state.elapsed_s.is_finite() && state.elapsed_s >= 0.0,
        "elapsed_s {} is not a duration",
        state.elapsed_s
    );
    // One step per microsecond for a century is still below this.
    anyhow::ensure!(
        state.step <= 1 << 52,
        "step {} is implausibly large",
        state.step
    );
    Ok((state, files))
}

fn read_state(dir: &Path) -> anyhow::Result<(TrainState, HashMap<String, FileSum>)> {
    let path = dir.join(STATE_FILE);
    let meta =
        fs::metadata(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_STATE_BYTES,
        "{} is {} bytes, too large to be a checkpoint state",
        path.display(),
        meta.len()
    );
    let bytes =
        fs::read(&path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    parse_state(&bytes)
        .map_err(|e| anyhow::anyhow!("malformed checkpoint state {}: {e}", path.display()))
}

/// Parses a safetensors file's bytes into f32 tensors on `device`. Refuses a corrupt
/// or truncated file, any dtype but F32, and a header that does not match the data.
pub fn parse_tensors(bytes: &[u8], device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("corrupt or truncated: {e}"))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        anyhow::ensure!(
            view.dtype() == safetensors::Dtype::F32,
            "tensor {name} has dtype {:?}, expected F32",
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

/// Reads a tensor file, first checking its size against `sum` (so that a truncated or
/// swollen file is refused unread) and then its checksum.
fn read_tensors(
    path: &Path,
    sum: Option<&FileSum>,
    device: &Device,
) -> anyhow::Result<HashMap<String, Tensor>> {
    let len = fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        .len();
    if let Some(sum) = sum {
        anyhow::ensure!(
            len == sum.bytes,
            "corrupt or truncated checkpoint file {}: {len} bytes, but {} were written",
            path.display(),
            sum.bytes
        );
    }
    let bytes =
        fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if let Some(sum) = sum {
        let got = format!("{:016x}", xxh64(&bytes));
        anyhow::ensure!(
            got == sum.xxh64,
            "corrupt checkpoint file {}: checksum {got} differs from the {} recorded when \
             it was written (a damaged or altered file)",
            path.display(),
            sum.xxh64
        );
    }
    parse_tensors(&bytes, device).map_err(|e| {
        anyhow::anyhow!(
            "corrupt or truncated checkpoint file {}: {e}",
            path.display()
        )
    })
}

/// Refuses a config that does not describe the model file's tensors, before anything
/// derives shapes from it: the layer count must match the number of tensors and the
/// parameter count the number of values (both computed without overflow).
fn check_config_fits(
    state: &TrainState,
    model: &HashMap<String, Tensor>,
    dir: &Path,
) -> anyhow::Result<()> {
    let m = &state.config.model;
    let values: usize = model.values().map(|t| t.elem_count()).sum();
    let expected =
        super::memory::estimate(&state.config, 0, super::memory::StepKind::Native).params;
    let tensors = m
        .n_layer
        .checked_mul(crate::model::params::PER_BLOCK)
        .and_then(|x| {
            x.checked_add(3 + (m.positions == crate::model::Positions::Learned) as usize)
        });
    anyhow::ensure!(
        tensors == Some(model.len()) && expected == values as f64,
        "checkpoint {} does not fit its config: the config has {} layers and {expected} \
         parameters, the weights file {} tensors and {values} values (wrong shape)",
        dir.display(),
        m.n_layer,
        model.len()
    );
    Ok(())
}

/// Refuses weights holding NaN or infinity: such a checkpoint can only print garbage.
fn check_finite(model: &HashMap<String, Tensor>, dir: &Path) -> anyhow::Result<()> {
    let mut names: Vec<&String> = model.keys().collect();
    names.sort();
    for name in names {
        let bad = model[name]
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|x| !x.is_finite())
            .count();
        anyhow::ensure!(
            bad == 0,
            "checkpoint {} holds {bad} non-finite weights (NaN or infinity) in {name}: the run \
             that wrote it diverged or the file was altered",
            dir.display()
        );
    }
    Ok(())
}

/// Loads a checkpoint (see [`resolve`] for what `path` may name).
pub fn load(path: &Path, prefer_best: bool, device: &Device) -> anyhow::Result<Loaded> {
    let dir = resolve(path, prefer_best)?;
    let (state, files) = read_state(&dir)?;
    state
        .config
        .validate()
        .map_err(|e| anyhow::anyhow!("checkpoint {} has an invalid config: {e}", dir.display()))?;
    // The manifest is what makes a flipped bit detectable: without it the checkpoint
    // is damaged, not unchecked.
    let sum = |file: &str| {
        files.get(file).ok_or_else(|| {
            anyhow::anyhow!(
                "damaged checkpoint {}: its state.json records no size and checksum for {file}",
                dir.display()
            )
        })
    };
    let model = read_tensors(&dir.join(MODEL_FILE), Some(sum(MODEL_FILE)?), device)?;
    check_config_fits(&state, &model, &dir)?;
    check_finite(&model, &dir)?;
    let optim_path = dir.join(OPTIM_FILE);
    let optim = if optim_path.exists() || files.contains_key(OPTIM_FILE) {
        read_tensors(&optim_path, Some(sum(OPTIM_FILE)?), device)?
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

/// Exclusive use of a run directory: the file `.lock` in it, created with `create_new`,
/// holding the owner's PID and process start time. A lock whose process is gone (or
/// whose PID now belongs to another process) is stale and taken over; the file is
/// removed when the lock is dropped, on success and on error alike.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    token: String,
}

/// The start time of process `pid` in clock ticks since boot (field 22 of
/// /proc/PID/stat), or None when there is no such live process.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3): a zombie has exited already.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

impl RunLock {
    /// Takes the lock of `run_dir` (which must exist). Returns the lock and, when a
    /// stale lock was taken over, a line saying so.
    pub fn acquire(run_dir: &Path) -> anyhow::Result<(RunLock, Option<String>)> {
        let path = run_dir.join(LOCK_FILE);
        let pid = std::process::id();
        let token = format!("{pid} {}\n", process_start_time(pid).unwrap_or(0));
        let mut note = None;
        for _ in 0..3 {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(token.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    return Ok((RunLock { path, token }, note));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => anyhow::bail!("cannot create lock file {}: {e}", path.display()),
            }
            let (owner, alive) = lock_owner(&path);
            if alive {
                return Err(in_use(run_dir, owner));
            }
            note = Some(format!(
                "taking over the stale lock of process {}, which is no longer running",
                owner.map_or("?".to_string(), |p| p.to_string())
            ));
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove stale lock {}: {e}", path.display()),
            }
        }
        anyhow::bail!(
            "cannot take the lock {}: another process keeps taking it",
            path.display()
        )
    }
}

/// The process named in a lock file, and whether it is alive (the same process: its
/// start time matches).
fn lock_owner(path: &Path) -> (Option<u32>, bool) {
    let text = read_lock(path).unwrap_or_default();
    let mut it = text.split_whitespace();
    let owner: Option<u32> = it.next().and_then(|s| s.parse().ok());
    let started: Option<u64> = it.next().and_then(|s| s.parse().ok());
    // Without /proc (not Linux) nothing can be known: assume it runs.
    let have_proc = Path::new("/proc/self/stat").exists();
    let alive = match owner {
        Some(_) if !have_proc => true,
        Some(p) => match process_start_time(p) {
            None => false,
            Some(t) => started.is_none_or(|s| s == 0 || s == t),
        },
        None => false,
    };
    (owner, alive)
}

fn in_use(run_dir: &Path, owner: Option<u32>) -> anyhow::Error {
    anyhow::anyhow!(
        "run directory {} is in use by process {} (lock file {}): wait for it to end or \
         stop it, then continue with --resume (delete the lock file only if that process \
         is not a tinylm run)",
        run_dir.display(),
        owner.map_or("?".to_string(), |p| p.to_string()),
        run_dir.join(LOCK_FILE).display()
    )
}

/// Refuses a run directory whose lock a live process holds (before anything in it is
/// read: a run that has not written its first checkpoint yet is still in use).
pub fn check_not_in_use(run_dir: &Path) -> anyhow::Result<()> {
    let path = run_dir.join(LOCK_FILE);
    if !path.exists() {
        return Ok(());
    }
    match lock_owner(&path) {
        (owner, true) => Err(in_use(run_dir, owner)),
        _ => Ok(()),
    }
}

/// The start of a lock file: ours are ~20 bytes, and a larger file is not read whole.
fn read_lock(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    fs::File::open(path)?.take(64).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Removes the lock file at `path` if it still holds `token`: never a lock another
/// process took over meanwhile.
fn release_lock(path: &Path, token: &str) {
    if read_lock(path).is_ok_and(|t| t == token) {
        let _ = fs::remove_file(path);
    }
}

impl RunLock {
    /// A function that releases this lock, for an exit that skips destructors (a
    /// signal handler that calls `process::exit`).
    pub fn releaser(&self) -> impl Fn() + Send + Sync + 'static {
        let (path, token) = (self.path.clone(), self.token.clone());
        move || release_lock(&path, &token)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        release_lock(&self.path, &self.token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Python: `xxhash.xxh64(s).hexdigest()` (xxhash 3.x).
    #[test]
    fn xxh64_matches_reference() {
        let long: Vec<u8> = (0..3).flat_map(|_| 0..=255u8).chain(*b"xyz").collect();
        for (data, want) in [
            (&b""[..], 0xef46db3751d8e999u64),
            (b"a", 0xd24ec4f1a98c6e5b),
            (b"abc", 0x44bc2cf5ad770999),
            (b"0123456789abcdef0123456789abcdef", 0x642a94958e71e6c5),
            (&long, 0xe921a1b45bd779f8),
        ] {
            let got = xxh64(data);
            println!("len {:>3}: {got:016x} want {want:016x}", data.len());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn lock_is_exclusive_stale_locks_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, note) = RunLock::acquire(dir.path()).unwrap();
        assert!(note.is_none());
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        println!("{e}");
        assert!(e.contains("in use by process") && e.contains(&std::process::id().to_string()));
        drop(lock);
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "lock not removed on drop"
        );
        // A PID that cannot be running (above the kernel's pid_max limit of 2^22).
        fs::write(dir.path().join(LOCK_FILE), "4194305 123\n").unwrap();
        let (lock, note) = RunLock::acquire(dir.path()).unwrap();
        println!("{note:?}");
        assert!(note.unwrap().contains("stale lock of process 4194305"));
        drop(lock);
        // Our own PID with another start time: the PID was reused, the lock is stale.
        fs::write(
            dir.path().join(LOCK_FILE),
            format!("{} 1\n", std::process::id()),
        )
        .unwrap();
        assert!(RunLock::acquire(dir.path()).is_ok());
    }

    #[test]
    fn prune_touches_only_checkpoints_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        mark_run_dir(d).unwrap();
        for step in [2, 4, 6, 8] {
            let c = d.join(step_dir_name(step));
            fs::create_dir(&c).unwrap();
            fs::write(c.join(STATE_FILE), "{}").unwrap();
        }
        // The user's, named like checkpoints: a short name, a directory of notes with
        // no state.json, a plain file, a symlink to a real checkpoint.
        fs::create_dir(d.join("step-1")).unwrap();
        fs::write(d.join("step-1/notes.txt"), "mine").unwrap();
        fs::create_dir(d.join("step-00000001")).unwrap();
        fs::write(d.join("step-00000001/notes.txt"), "mine").unwrap();
        fs::write(d.join("step-00000003"), "mine").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(d.join("step-00000002"), d.join("step-00000005")).unwrap();
        let steps: Vec<usize> = list(d).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [2, 4, 6, 8]);
        prune(d, 1, Some(4)).unwrap();
        let steps: Vec<usize> = list(d).iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [4, 8]);
        assert_eq!(
            fs::read_to_string(d.join("step-1/notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(
            fs::read_to_string(d.join("step-00000001/notes.txt")).unwrap(),
            "mine"
        );
        assert_eq!(fs::read_to_string(d.join("step-00000003")).unwrap(), "mine");
        #[cfg(unix)]
        assert!(fs::symlink_metadata(d.join("step-00000005"))
            .unwrap()
            .file_type()
            .is_symlink());
        // A directory without the marker counts as a run only through a real checkpoint.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("step-00000001")).unwrap();
        assert!(!is_run_dir(other.path()));
    }

    #[test]
    fn clean_stale_restores_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for p in [
            ".step-00000004.tmp-99",
            ".step-00000002.deleting-99",
            ".step-00000006.replaced-99",
            ".step-00000008.replaced-99",
            "step-00000008",
        ] {
            fs::create_dir(d.join(p)).unwrap();
        }
        fs::write(d.join(".config.toml.tmp-99"), "x").unwrap();
        fs::write(d.join(LOCK_FILE), "1 1\n").unwrap();
        // Not ours: look like leftovers but are not names this module writes.
        for p in [
            ".bashrc.tmp-1",
            ".notes.deleting-2",
            ".x.replaced-3",
            ".step-1.tmp-4",
            ".step-00000004.tmp-",
            ".step-00000004.tmp-12a",
            ".config.toml.tmp-1.bak",
        ] {
            fs::write(d.join(p), "keep").unwrap();
        }
        // Outside a run directory nothing is touched at all.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join(".config.toml.tmp-5"), "keep").unwrap();
        assert_eq!(clean_stale(outside.path()).unwrap(), 0);
        assert!(outside.path().join(".config.toml.tmp-5").exists());
        mark_run_dir(d).unwrap();
        assert_eq!(clean_stale(d).unwrap(), 5);
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".bashrc.tmp-1",
                ".config.toml.tmp-1.bak",
                ".lock",
                ".notes.deleting-2",
                ".step-00000004.tmp-",
                ".step-00000004.tmp-12a",
                ".step-1.tmp-4",
                RUN_MARKER,
                ".x.replaced-3",
                "step-00000006",
                "step-00000008"
            ]
        );
    }
}
