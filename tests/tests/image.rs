//! The container image built here, FROM scratch with no registry
//! (`scripts/build-image.sh`): it builds, and `ferry --version` runs from
//! its root filesystem (chroot: `podman run` needs CAP_SYS_RESOURCE for
//! crun's setrlimit). The image and the working container are removed.
//! Root (buildah mount, chroot) and buildah (.ci/install-deps installs it).

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use tests::*;

#[test]
fn the_image_builds_from_scratch_and_ferry_runs_from_its_root_filesystem() -> Result<()> {
    require_root();
    let _serial = serial();
    if Command::new("buildah").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: buildah is not installed (apt-get install buildah; .ci/install-deps does)"
        );
        return Ok(());
    }
    let root = tests::ferry::workspace_root();
    let bin = tests::ferry::ferry_binary()?;
    let version = Command::new(&bin).arg("--version").output()?;
    let version = String::from_utf8(version.stdout)?.trim().to_string();
    let tag = format!("localhost/ferry-image-test:{}", std::process::id());
    let out = Command::new("bash")
        .arg(root.join("scripts/build-image.sh"))
        .arg("--remove")
        .arg(&tag)
        .env("FERRY_BIN", &bin)
        .output()
        .context("running scripts/build-image.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "build-image.sh failed: {stdout}{stderr}"
    );
    eprintln!("FIGURES {}", stdout.trim());
    assert!(
        stdout.contains(&format!("ferry --version: {version}")),
        "{stdout}"
    );
    for file in [
        "./usr/local/bin/ferry",
        "./lib64/ld-linux-x86-64.so.2",
        "libc.so.6",
    ] {
        assert!(stdout.contains(file), "{file} not in the image: {stdout}");
    }
    // Nothing left behind: neither the image nor its working container.
    let images = Command::new("buildah").args(["images", "-n"]).output()?;
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(!images.contains("ferry-image-test"), "{images}");
    let containers = Command::new("buildah")
        .args(["containers", "-n"])
        .output()?;
    let containers = String::from_utf8_lossy(&containers.stdout);
    assert!(!containers.contains(&tag), "{containers}");
    Ok(())
}
