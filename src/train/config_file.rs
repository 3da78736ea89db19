//! Reading a `--config` TOML file: its fields override a preset, key by key. Kept in
//! the library (not the binary) so that it can be fuzzed: any text gives a config or an
//! error, never a panic.

use super::config::TrainConfig;

/// Merges TOML table `over` into `base`, key by key.
fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_toml(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The first key of `over` that `base` lacks ("model.layers"), at any depth.
fn unknown_key(base: &toml::Value, over: &toml::Value, prefix: &str) -> Option<String> {
    let (toml::Value::Table(b), toml::Value::Table(o)) = (base, over) else {
        return None;
    };
    o.iter().find_map(|(k, v)| match b.get(k) {
        None => Some(format!("{prefix}{k}")),
        Some(bv) => unknown_key(bv, v, &format!("{prefix}{k}.")),
    })
}

/// Files larger than this are refused unread: a config is a few hundred bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The `preset` a config's TOML `text` names, if any (malformed TOML is left for
/// [`config_from_toml`] to report; a `preset` that is not a string is an error here).
pub fn preset_of(text: &str) -> anyhow::Result<Option<String>> {
    let Ok(toml::Value::Table(t)) = toml::from_str::<toml::Value>(text) else {
        return Ok(None);
    };
    match t.get("preset") {
        None => Ok(None),
        Some(toml::Value::String(name)) => Ok(Some(name.clone())),
        Some(other) => anyhow::bail!(
            "invalid config: `preset` must be a preset's name, not {}",
            other.type_str()
        ),
    }
}

/// The `[model] vocab_size` a config's TOML `text` sets, if any: a new run's vocabulary
/// is its tokenizer's, so a different one here is replaced (and said so).
pub fn vocab_size_of(text: &str) -> Option<i64> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("model")?.get("vocab_size")?.as_integer()
}

/// `base` with the fields of the TOML `text` overriding it. Unknown fields, wrong types
/// and malformed TOML are errors that say which; the result is not yet validated.
pub fn config_from_toml(base: &TrainConfig, text: &str) -> anyhow::Result<TrainConfig> {
    anyhow::ensure!(
        text.len() <= MAX_CONFIG_BYTES,
        "{} bytes, too large to be a config",
        text.len()
    );
    // toml's own message spans several lines (a source excerpt); errors here are one.
    let over: toml::Value = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        anyhow::anyhow!(
            "malformed TOML{}: {}",
            line.map(|l| format!(" at line {l}")).unwrap_or_default(),
            e.message().trim()
        )
    })?;
    let mut merged = toml::Value::try_from(base)?;
    // Checked here rather than left to serde: a misspelt field in any table (e.g.
    // `[model] layers = 3`) must not be silently ignored.
    if let Some(k) = unknown_key(&merged, &over, "") {
        anyhow::bail!("invalid config: unknown field `{k}`");
    }
    let written_before_positions = over
        .get("model")
        .and_then(|m| m.as_table())
        .is_some_and(|m| {
            ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"]
                .iter()
                .all(|k| m.contains_key(*k))
                && !m.contains_key("positions")
        });
    // Likewise a whole run config (every training field) without `optimizer` was
    // written before Muon was a choice: it trained with AdamW; and one without `dtype`,
    // before the products' precision was a choice: it ran f32 products.
    let whole_run_without = |field: &str| {
        over.as_table().is_some_and(|t| {
            [
                "lr",
                "min_lr",
                "batch_size",
                "weight_decay",
                "grad_clip",
                "model",
            ]
            .iter()
            .all(|k| t.contains_key(*k))
                && !t.contains_key(field)
        })
    };
    let (written_before_optimizer, written_before_dtype) =
        (whole_run_without("optimizer"), whole_run_without("dtype"));
    merge_toml(&mut merged, over);
    if written_before_optimizer {
        merged["optimizer"] = toml::Value::String("adamw".into());
    }
    if written_before_dtype {
        merged["dtype"] = toml::Value::String("f32".into());
    }
    if written_before_positions {
        // A whole [model] table without `positions` was written by a tinylm that had
        // only learned positions (a run's config.toml): it means learned, not the
        // preset's current choice.
        merged["model"]["positions"] = toml::Value::String("learned".into());
    }
    merged
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_table_from_before_rotary_positions_means_learned() {
        use crate::model::Positions;
        let base = TrainConfig::preset("default").unwrap();
        assert_eq!(base.model.positions, Positions::Rotary);
        let old =
            "[model]\nvocab_size = 256\nblock_size = 64\nn_layer = 2\nn_head = 2\nn_embd = 64\n";
        let c = config_from_toml(&base, old).unwrap();
        assert_eq!(c.model.positions, Positions::Learned);
        // A partial model table changes only what it names.
        let c = config_from_toml(&base, "[model]\nn_layer = 3\n").unwrap();
        assert_eq!((c.model.n_layer, c.model.positions), (3, Positions::Rotary));
        let c = config_from_toml(&base, &format!("{old}positions = \"rotary\"\n")).unwrap();
        assert_eq!(c.model.positions, Positions::Rotary);
    }

    /// A run's config.toml from before Muon reproduces its AdamW run on today's
    /// default (Muon) base; a partial file keeps the base's optimizer.
    #[test]
    fn a_run_config_from_before_muon_means_adamw() {
        use crate::train::config::UpdateRule;
        let base = TrainConfig::preset("default").unwrap();
        assert_eq!(base.optimizer, UpdateRule::Muon);
        let old = include_str!("../../benches/results/verse/lr3b.config.toml");
        assert!(!old.contains("optimizer"));
        let c = config_from_toml(&base, old).unwrap();
        assert_eq!(
            (c.optimizer, c.lr, c.batch_size),
            (UpdateRule::AdamW, 3e-3, 8)
        );
        let c = config_from_toml(&base, "lr = 0.004\n").unwrap();
        assert_eq!(c.optimizer, UpdateRule::Muon);
        let c = config_from_toml(&base, &format!("optimizer = \"muon\"\n{old}")).unwrap();
        assert_eq!(c.optimizer, UpdateRule::Muon);
    }

    /// A run's config.toml from before `dtype` ran f32 products, and says so again
    /// through `--config`; a partial file keeps the preset's `auto`.
    #[test]
    fn a_run_config_from_before_dtype_means_f32() {
        use crate::train::config::Dtype;
        let base = TrainConfig::preset("default").unwrap();
        assert_eq!(base.dtype, Dtype::Auto);
        let old = include_str!("../../benches/results/verse/lr3b.config.toml");
        assert!(!old.contains("dtype"));
        assert_eq!(config_from_toml(&base, old).unwrap().dtype, Dtype::F32);
        let c = config_from_toml(&base, "lr = 0.004\n").unwrap();
        assert_eq!(c.dtype, Dtype::Auto);
        let c = config_from_toml(&base, &format!("dtype = \"auto\"\n{old}")).unwrap();
        assert_eq!(c.dtype, Dtype::Auto);
    }

    #[test]
    fn overrides_merge_key_by_key() {
        let base = TrainConfig::preset("tiny").unwrap();
        let c = config_from_toml(&base, "lr = 0.01\n[model]\nn_layer = 3\n").unwrap();
        assert_eq!(c.lr, 0.01);
        assert_eq!(c.model.n_layer, 3);
        assert_eq!(c.model.n_embd, base.model.n_embd);
        for (bad, want) in [
            ("lr = ", "malformed"),
            ("lr = \"x\"", "invalid"),
            ("nonsense = 1", "unknown field `nonsense`"),
            ("[model]\nlayers = 3", "unknown field `model.layers`"),
            ("[model]\nn_layer = -1", "invalid"),
        ] {
            let e = config_from_toml(&base, bad).unwrap_err().to_string();
            println!("{bad:?} -> {}", e.lines().next().unwrap());
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }
}
