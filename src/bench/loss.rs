//! `tinylm bench loss`: not written yet.

use super::BenchArgs;

/// Runs the loss bench cases.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("tinylm bench loss is not implemented yet")
}
