//! What the page and `/v1/models` say about the served run: its preset, shape, steps
//! and validation scores, read from the checkpoint and the run's `metrics.jsonl`.

use crate::train::config::{TrainConfig, PRESETS};
use crate::train::LoadedModel;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct RunFacts {
    /// The model id of the API: the run directory's name.
    pub model: String,
    pub checkpoint: String,
    /// The preset the run directory's name starts with (`default-2026...`), else the
    /// preset whose model shape this is, else "custom".
    pub preset: String,
    pub step: usize,
    pub params: usize,
    pub context: usize,
    pub layers: usize,
    pub heads: usize,
    pub width: usize,
    pub vocab: usize,
    pub tokenizer: String,
    /// Validation loss (nats/token) at this checkpoint's step, when evaluated there.
    pub val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// Validation bits per byte at this checkpoint's step, else at the last evaluation.
    pub val_bpb: Option<f64>,
}

impl RunFacts {
    pub fn of(loaded: &LoadedModel) -> Self {
        let dir = &loaded.dir;
        // A checkpoint directory lives in its run directory.
        let run_dir = dir.parent().filter(|p| p.join("metrics.jsonl").exists());
        let run_name = run_dir
            .unwrap_or(dir)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tinylm".to_string());
        let s = &loaded.state;
        let m = &s.config.model;
        Self {
            model: run_name.clone(),
            checkpoint: dir.display().to_string(),
            preset: preset_of(&run_name, &s.config),
            step: s.step,
            params: m.num_params(),
            context: m.block_size,
            layers: m.n_layer,
            heads: m.n_head,
            width: m.n_embd,
            vocab: m.vocab_size,
            tokenizer: s.config.tokenizer.clone(),
            val_loss: s.val_loss,
            best_val_loss: s.best_val_loss,
            val_bpb: run_dir.and_then(|r| val_bpb(&r.join("metrics.jsonl"), s.step)),
        }
    }
}

fn preset_of(run_name: &str, config: &TrainConfig) -> String {
    // The preset the run recorded; then its directory's name; then its shape (the
    // vocabulary aside: a BPE run's is the tokenizer's, not the preset's).
    if let Some(p) = &config.preset {
        return p.clone();
    }
    if let Some(p) = PRESETS
        .iter()
        .find(|p| run_name == **p || run_name.starts_with(&format!("{p}-")))
    {
        return p.to_string();
    }
    PRESETS
        .iter()
        .find(|p| {
            TrainConfig::preset(p).is_ok_and(|c| {
                let v = config.model.vocab_size;
                crate::model::GptConfig {
                    vocab_size: v,
                    ..c.model
                } == config.model
            })
        })
        .map(|p| format!("{p} (by shape)"))
        .unwrap_or_else(|| "custom".to_string())
}

/// `val_bpb` of the evaluation row at `step`, else of the last evaluation row. A
/// missing or damaged file gives None: the facts are for show, never a reason to fail.
fn val_bpb(path: &Path, step: usize) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rows: Vec<(u64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_u64()?, v.get("val_bpb")?.as_f64()?)))
        .collect();
    rows.iter()
        .rev()
        .find(|(s, _)| *s == step as u64)
        .or(rows.last())
        .map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_recorded_then_from_name_then_shape() {
        let recorded = TrainConfig::preset("tiny").unwrap();
        assert_eq!(preset_of("default-20260101-120000", &recorded), "tiny");
        // Configs written before the preset was recorded.
        let tiny = TrainConfig {
            preset: None,
            ..recorded
        };
        assert_eq!(preset_of("default-20260101-120000", &tiny), "default");
        assert_eq!(preset_of("run", &tiny), "tiny (by shape)");
        let mut odd = tiny.clone();
        odd.model.n_layer = 3;
        assert_eq!(preset_of("run", &odd), "custom");
        // A BPE run's vocabulary is its tokenizer's, not the preset's.
        let mut poet = TrainConfig::preset("poet").unwrap();
        poet.preset = None;
        poet.model.vocab_size = 8192;
        assert_eq!(preset_of("run", &poet), "poet (by shape)");
    }

    #[test]
    fn bpb_of_the_checkpoint_step_else_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"step\":10,\"val_bpb\":3.5}\n{\"step\":15,\"train_loss\":2}\n{\"step\":20,\"val_bpb\":3.1}\nnot json\n",
        )
        .unwrap();
        assert_eq!(val_bpb(&p, 10), Some(3.5));
        assert_eq!(val_bpb(&p, 15), Some(3.1));
        assert_eq!(val_bpb(&dir.path().join("none"), 10), None);
    }
}
