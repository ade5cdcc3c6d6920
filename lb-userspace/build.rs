//! Builds the eBPF object (`lb-ebpf`, binary `lb`) for the BPF target with
//! aya-build and leaves it in OUT_DIR, where `datapath::object` embeds it.

use anyhow::{Context as _, anyhow};
// A build dependency only so that cargo rebuilds the object when lb-ebpf
// changes; aya-build builds it for the BPF target.
use lb_ebpf as _;

fn main() -> anyhow::Result<()> {
    let out_dir = std::path::PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    // AYA_BUILD_SKIP=1 builds the agent without a datapath (for work on the
    // model alone); loading then fails with a clear error. aya-build honours
    // the variable; we leave an empty object so that the embed compiles.
    let skip = std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v == "true");
    if skip {
        std::fs::write(out_dir.join("lb"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("package lb-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
