//! `tinylm bench attention`: not written yet.

use super::BenchArgs;

/// Runs the attention bench cases.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("tinylm bench attention is not implemented yet")
}
