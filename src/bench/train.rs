//! `tinylm bench train`: not written yet.

use super::BenchArgs;

/// Runs the train bench cases.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("tinylm bench train is not implemented yet")
}
