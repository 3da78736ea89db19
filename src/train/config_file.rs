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
    merge_toml(&mut merged, over);
    merged
        .try_into()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
