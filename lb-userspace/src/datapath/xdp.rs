//! Attaching `ferry_external_xdp` to the external interfaces
//! (`--xdp-mode`), in front of tc's `ferry_external` on the same ones.
//!
//! XDP runs the same flow logic before an skb exists, for the packets it
//! can send out of another external interface; it passes everything else
//! to tc untouched. So tc alone is always a complete datapath, and XDP
//! only makes it cheaper: an interface without XDP for a moment (attach,
//! mode change) loses nothing.
//!
//! An interface holds one XDP program, so a restart cannot attach the new
//! one beside the old: it swaps the program inside the pinned link
//! (`bpf_link_update`, atomic). Links are pinned as
//! `links/ferry_external_xdp@if<ifindex>@<mode>`; a pin of another mode is
//! replaced by a fresh attachment in the mode asked for.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLink};
use lb_common::programs;

use super::loader::{LoadError, typed_program, unpin_link};
use super::paths::BpffsDir;
use super::tc::Interface;
use crate::netutil;

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpMode {
    /// Native where the driver supports it, else generic (logged).
    Auto,
    /// In the driver; an interface whose driver cannot is reported.
    Native,
    /// In the stack (`XDP_FLAGS_SKB_MODE`), for any driver: little faster
    /// than tc, useful to test.
    Generic,
    /// No XDP: tc alone.
    Off,
}

/// The mode an attachment was made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attached {
    Native,
    Generic,
}

impl Attached {
    fn name(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
        }
    }

    fn aya(self) -> AyaXdpMode {
        match self {
            Attached::Native => AyaXdpMode::Driver,
            Attached::Generic => AyaXdpMode::Skb,
        }
    }
}

fn pin_name(ifindex: u32, mode: Attached) -> String {
    format!("{}@if{ifindex}@{}", programs::EXTERNAL_XDP, mode.name())
}

/// (ifindex, mode, path) of every XDP pin under `bpffs`.
fn xdp_pins(bpffs: &BpffsDir) -> Vec<(u32, Attached, PathBuf)> {
    let Ok(entries) = fs::read_dir(bpffs.links()) else {
        return Vec::new();
    };
    let prefix = format!("{}@if", programs::EXTERNAL_XDP);
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (index, mode) = name.strip_prefix(&prefix)?.split_once('@')?;
            let mode = match mode {
                "native" => Attached::Native,
                "generic" => Attached::Generic,
                _ => return None,
            };
            Some((index.parse().ok()?, mode, e.path()))
        })
        .collect()
}

/// The XDP program of this agent and where it is attached.
pub struct XdpPrograms {
    netns: Option<PathBuf>,
    mode: XdpMode,
    /// ifindex → mode, as attached now.
    attached: BTreeMap<u32, Attached>,
}

impl XdpPrograms {
    /// Loads the program (attached nowhere yet). With `XdpMode::Off`,
    /// detaches whatever a previous run attached.
    pub fn load(
        ebpf: &mut Ebpf,
        bpffs: &BpffsDir,
        netns: Option<PathBuf>,
        mode: XdpMode,
    ) -> Result<Self, LoadError> {
        if mode == XdpMode::Off {
            Self::detach_all(bpffs);
        } else {
            let name = programs::EXTERNAL_XDP;
            typed_program::<Xdp>(ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(Self {
            netns,
            mode,
            attached: BTreeMap::new(),
        })
    }

    /// Attaches to the `external` interfaces not attached yet (taking
    /// over a previous run's pinned link in place), and detaches from the
    /// ones no longer external. Returns the interfaces that failed, with
    /// why; they are served by tc alone.
    pub fn refresh(
        &mut self,
        ebpf: &mut Ebpf,
        bpffs: &BpffsDir,
        external: &[Interface],
    ) -> Vec<String> {
        if self.mode == XdpMode::Off {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let pins = xdp_pins(bpffs);
        let mode = self.mode;
        let attached = self.attached.clone();
        let links = bpffs.links();
        let result = netutil::in_netns(self.netns.as_deref(), || {
            let mut now = BTreeMap::new();
            let mut failed = Vec::new();
            for iface in external {
                if let Some(m) = attached.get(&iface.index) {
                    now.insert(iface.index, *m);
                    continue;
                }
                let pinned: Vec<_> = pins.iter().filter(|p| p.0 == iface.index).collect();
                match attach(ebpf, &links, iface, mode, &pinned) {
                    Ok(m) => {
                        now.insert(iface.index, m);
                    }
                    Err(e) => failed.push(format!("{} (XDP): {e}", iface.name)),
                }
            }
            Ok((now, failed))
        });
        match result {
            Ok((now, failed)) => {
                // Interfaces no longer external (or gone): tc's rules for
                // them change too; XDP leaves.
                for (ifindex, m, path) in &pins {
                    if now.get(ifindex) != Some(m) {
                        unpin_link(path);
                    }
                }
                self.attached = now;
                errors.extend(failed);
            }
            Err(e) => errors.push(format!("XDP: entering the node's namespace: {e}")),
        }
        errors
    }

    /// ifindex → "native" / "generic", as attached now.
    pub fn attached(&self) -> BTreeMap<u32, &'static str> {
        self.attached.iter().map(|(i, m)| (*i, m.name())).collect()
    }

    /// Unpins every XDP link under `bpffs`, which detaches them.
    pub fn detach_all(bpffs: &BpffsDir) {
        for (_, _, path) in xdp_pins(bpffs) {
            unpin_link(&path);
        }
    }
}

/// Attaches to `iface`: into a pinned link of the mode asked for when
/// there is one (the program swapped in place), else fresh (after
/// unpinning links of another mode: one XDP program per interface).
fn attach(
    ebpf: &mut Ebpf,
    links: &Path,
    iface: &Interface,
    mode: XdpMode,
    pinned: &[&(u32, Attached, PathBuf)],
) -> Result<Attached, String> {
    let prog = typed_program::<Xdp>(ebpf, programs::EXTERNAL_XDP).map_err(|e| e.to_string())?;
    let wanted: &[Attached] = match mode {
        XdpMode::Native => &[Attached::Native],
        XdpMode::Generic => &[Attached::Generic],
        XdpMode::Auto => &[Attached::Native, Attached::Generic],
        XdpMode::Off => &[],
    };
    for (_, m, path) in pinned {
        if wanted.contains(m) {
            let link = PinnedLink::from_pin(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| format!("{e}"))?;
            let id = prog
                .attach_to_link(link)
                .map_err(|e| format!("replacing the program in {}: {e}", path.display()))?;
            // The pin holds the link; aya's handle can go.
            drop(prog.take_link(id));
            return Ok(*m);
        }
        unpin_link(path);
    }
    let mut last = String::new();
    for (i, m) in wanted.iter().enumerate() {
        match prog.attach_to_if_index(iface.index, m.aya()) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|e| format!("{e}"))?;
                let link = FdLink::try_from(link)
                    .map_err(|e| format!("not a bpf_link (Linux < 5.9?): {e}"))?;
                let path = links.join(pin_name(iface.index, *m));
                let _ = fs::remove_file(&path);
                link.pin(&path)
                    .map_err(|e| format!("pinning {}: {e}", path.display()))?;
                if i > 0 {
                    tracing::info!(
                        interface = %iface.name,
                        native_error = %last,
                        "XDP: the driver has no native mode; attached in generic mode"
                    );
                }
                return Ok(*m);
            }
            Err(e) => last = format!("attaching in {} mode: {e}", m.name()),
        }
    }
    Err(last)
}
