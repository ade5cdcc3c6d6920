//! Development tasks: `cargo xtask build-ebpf`, and the bench crate's
//! `cargo xtask bench` (a thin entry point, as in aya: the bench is its own
//! crate, bench/).

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the eBPF object alone (for inspection with llvm-objdump,
    /// bpftool, or `ferry` loading it), and print its path.
    BuildEbpf {
        /// Build without optimisations (the verifier may reject it).
        #[arg(long)]
        debug: bool,
    },
    /// The bench's tasks (`bench`, `bench-inputs`, `bench-packets`), from
    /// the bench crate.
    #[cfg(feature = "bench")]
    #[command(flatten)]
    Bench(Box<bench::Task>),
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn build_ebpf(debug: bool) -> Result<()> {
    let root = workspace_root();
    let target_dir = root.join("target").join("ebpf");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("lb-ebpf"))
        .args(["+nightly", "build", "--package", "lb-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // The same flags aya-build uses when lb-userspace embeds the object:
        // full debug info and BTF, which the loader needs for relocations.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                "-Cdebuginfo=2".into(),
                "-Clink-arg=--btf".into(),
            ]
            .join("\x1f"),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    if !debug {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo +nightly")?;
    if !status.success() {
        bail!("building lb-ebpf failed ({status})");
    }
    let profile = if debug { "debug" } else { "release" };
    let object = target_dir
        .join("bpfel-unknown-none")
        .join(profile)
        .join("lb");
    println!("{}", object.display());
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::BuildEbpf { debug } => build_ebpf(debug),
        #[cfg(feature = "bench")]
        Task::Bench(task) => bench::run_task(*task),
    }
}
