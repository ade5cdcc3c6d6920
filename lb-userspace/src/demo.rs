//! `ferry demo` (placeholder until the demo topology lands).
pub fn run(_requests: u32) -> anyhow::Result<()> {
    anyhow::bail!("demo not built yet")
}
