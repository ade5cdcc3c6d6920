//! Building this crate has an undeclared dependency on the `bpf-linker`
//! binary: rebuild when it changes.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
