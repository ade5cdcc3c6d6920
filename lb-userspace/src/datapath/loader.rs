//! Loading the programs, attaching them to the cgroup and pinning
//! everything, so that translation goes on while no agent runs.
//!
//! A restart never leaves a gap: the new programs are attached next to the
//! old ones (cgroup bpf_links always run every attached program in order,
//! and a destination the first one translated is no frontend for the
//! second), and the old links are unpinned, which detaches them, only when
//! the new generation's maps hold the desired state ([`Handover`], after
//! the agent's first sync). Pinned maps of this version's layout are
//! simply reused, so then the overlap changes nothing. A pinned map of
//! another layout (left by another Ferry version) cannot be reused: its pin
//! is moved to `retired/`, the new generation gets a fresh map, and the old
//! programs go on translating with the old map (they hold it, not its pin)
//! until the handover; then the retired pins are removed.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, MapType},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{
    maps as names,
    programs::{self, ProgramType},
};
use thiserror::Error;

use super::{
    contract::{self, ContractError},
    object::OBJECT,
    paths::{BpffsDir, PathError},
};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this ferry was built without its eBPF object (AYA_BUILD_SKIP)")]
    NoObject,
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("loading the eBPF object: {0}")]
    Ebpf(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {name} missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("program {name}: {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("pinning the link of {name}: {source}")]
    Pin {
        name: &'static str,
        source: aya::pin::PinError,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pinned map's shape: what must match for a pin to be reused.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Layout {
    map_type: Option<MapType>,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
    /// Whether the map carries BTF key/value types (every map since they
    /// became BTF maps; earlier versions' maps had none).
    typed: bool,
}

/// The layout each pinned map has in this version, from its declaration
/// in lb-common (which [`contract::check_embedded`] holds the object to).
/// A pin whose layout differs was left by another version of Ferry: aya
/// would reuse it blindly, so it is retired and a new map created instead.
fn expected_layout(name: &str) -> Option<Layout> {
    let def = names::def(name).filter(|m| m.pinned)?;
    Some(Layout {
        map_type: Some(contract::aya_map_type(def.map_type)),
        key_size: def.key_size,
        value_size: def.value_size,
        max_entries: def.max_entries,
        flags: def.flags,
        // A map of maps is created without BTF key/value types (its values
        // are map fds, which BTF does not describe), so only its shape
        // tells it apart.
        typed: def.inner.is_none(),
    })
}

/// The layout of a pinned map, or None when it cannot be read.
fn pinned_layout(path: &Path) -> Option<Layout> {
    let info = MapInfo::from_pin(path).ok()?;
    Some(Layout {
        map_type: info.map_type().ok(),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
        typed: has_btf_types(path).unwrap_or(false),
    })
}

/// The start of the kernel's `struct bpf_map_info` (uapi/linux/bpf.h), up
/// to the BTF type ids; the kernel fills what fits in the length given.
#[repr(C)]
#[derive(Default)]
struct MapInfoPrefix {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    name: [u8; 16],
    ifindex: u32,
    btf_vmlinux_value_type_id: u32,
    netns_dev: u64,
    netns_ino: u64,
    btf_id: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_id: u32,
}

/// The bpf(2) system call with attribute `attr`.
///
/// # Safety
/// `attr` must be the attribute `cmd` takes, and every buffer it points to
/// must be valid for what `cmd` does with it.
pub(crate) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
    // SAFETY: as the caller guarantees.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a pinned map has a BTF value type. aya 0.14's `MapInfo` does
/// not expose the BTF ids, hence BPF_OBJ_GET_INFO_BY_FD by hand.
fn has_btf_types(path: &Path) -> std::io::Result<bool> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let map = MapData::from_pin(path).map_err(std::io::Error::other)?;
    let mut info = MapInfoPrefix::default();
    let mut attr = InfoAttr {
        bpf_fd: map.fd().as_fd().as_raw_fd() as u32,
        info_len: size_of::<MapInfoPrefix>() as u32,
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: the attribute and the buffer it points to outlive the call,
    // and info_len is the buffer's size.
    unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)? };
    Ok(info.btf_value_type_id != 0)
}

/// Moves out of `maps/` every pin this version cannot reuse: maps of
/// another layout, and maps this version no longer defines. Returns the
/// retired pins' new paths.
fn retire_incompatible_pins(bpffs: &BpffsDir, generation: u128) -> Result<Vec<PathBuf>, LoadError> {
    let mut retired = Vec::new();
    let Ok(entries) = fs::read_dir(bpffs.maps()) else {
        return Ok(retired);
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let expected = expected_layout(&name);
        let found = pinned_layout(&path);
        if expected.is_some() && found == expected {
            continue;
        }
        tracing::warn!(
            map = name,
            ?found,
            ?expected,
            "pinned map has another layout or is no longer used (left by another Ferry \
             version); a new map replaces it once it is filled"
        );
        let to = bpffs.retired().join(format!("{name}@{generation}"));
        fs::rename(&path, &to).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        retired.push(to);
    }
    Ok(retired)
}

/// The previous generation, still attached, and the pins only it uses:
/// detached and removed by [`Handover::complete`] once the new generation's
/// maps hold the desired state.
#[derive(Debug, Default)]
#[must_use = "the previous generation stays attached until the handover completes"]
pub struct Handover {
    old_links: Vec<PathBuf>,
    retired_maps: Vec<PathBuf>,
}

impl Handover {
    /// Whether the new generation replaced any map (a layout change).
    pub fn replaced_maps(&self) -> usize {
        self.retired_maps.len()
    }

    /// Detaches the previous generation and removes the pins of the maps
    /// it alone used.
    pub fn complete(self) {
        for path in &self.old_links {
            unpin_link(path);
        }
        for path in &self.retired_maps {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "removing a retired map pin");
            }
        }
        if !self.old_links.is_empty() || !self.retired_maps.is_empty() {
            tracing::info!(
                links = self.old_links.len(),
                maps = self.retired_maps.len(),
                "previous datapath generation detached"
            );
        }
    }
}

pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Pinned cgroup link files of earlier generations: every
/// `links/<program>@<generation>` but the tc programs' (which `tc` hands
/// over itself), including programs this version no longer has.
fn previous_cgroup_links(bpffs: &BpffsDir) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(bpffs.links()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let program = name.split('@').next().unwrap_or_default();
            // The north-south links hand over on their own (tc.rs, xdp.rs).
            !programs::ALL
                .iter()
                .any(|p| p.name == program && !p.program_type.is_cgroup())
        })
        .map(|e| e.path())
        .collect()
}

/// Unpins a link; the kernel detaches it when the last reference goes.
pub(crate) fn unpin_link(path: &Path) {
    match PinnedLink::from_pin(path) {
        Ok(link) => match link.unpin() {
            Ok(fd_link) => drop(fd_link),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "unpinning link"),
        },
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "opening pinned link; removing the pin");
            let _ = fs::remove_file(path);
        }
    }
}

/// Loads program `$name` as `$ty`, attaches it to the cgroup and returns its
/// link as an `FdLink`, ready to pin. (A macro because the program types
/// share these methods without sharing a trait.)
macro_rules! attach_as {
    ($ebpf:expr, $name:expr, $ty:ty, $cgroup:expr) => {{
        let name = $name;
        let err = |source| LoadError::Program { name, source };
        let prog: &mut $ty = $ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(err)?;
        prog.load().map_err(err)?;
        // bpf_link attachments to cgroups are always multi-program; the
        // kernel rejects any flag for them, hence Single (no flag).
        let id = prog
            .attach($cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        FdLink::try_from(link).map_err(|source| LoadError::Link { name, source })?
    }};
}

/// Loads the object (programs not loaded yet) with every map but the
/// per-run scratch buffer pinned by name under `bpffs`: BTF map
/// definitions carry no pinning attribute. Pins that exist are reused as
/// they are; [`load_and_attach`] first retires those of another layout.
pub fn load_pinned(bpffs: &BpffsDir) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    contract::check_embedded()?;
    let pins: Vec<(&str, PathBuf)> = names::ALL
        .iter()
        .filter(|m| m.pinned)
        .map(|m| (m.name, bpffs.map(m.name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    Ok(loader.load(OBJECT)?)
}

/// Loads the object with its maps pinned under `bpffs`, attaches every
/// cgroup program to `cgroup` and pins the new links. The previous
/// generation stays attached: the returned [`Handover`] detaches it once
/// the maps are filled. Returns the loaded object too, whose tc programs
/// `tc::TcPrograms` attaches.
pub fn load_and_attach(bpffs: &BpffsDir, cgroup: &Path) -> Result<(Ebpf, Handover), LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    bpffs.prepare()?;
    let generation = now_nanos();
    let retired_maps = retire_incompatible_pins(bpffs, generation)?;
    let old_links = previous_cgroup_links(bpffs);

    let mut ebpf = load_pinned(bpffs)?;

    let cgroup_fd = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    for program in programs::ALL {
        let name = program.name;
        let link = match program.program_type {
            ProgramType::CgroupSockAddr => attach_as!(ebpf, name, CgroupSockAddr, &cgroup_fd),
            ProgramType::CgroupSock => attach_as!(ebpf, name, CgroupSock, &cgroup_fd),
            // Attached to interfaces by `tc` and `xdp`.
            ProgramType::SchedClassifier | ProgramType::Xdp => continue,
        };
        link.pin(bpffs.link(&format!("{name}@{generation}")))
            .map_err(|source| LoadError::Pin { name, source })?;
    }
    Ok((
        ebpf,
        Handover {
            old_links,
            retired_maps,
        },
    ))
}

/// Detaches every program (by unpinning its links) and removes every pinned
/// map and the directory. Idempotent.
pub fn cleanup(bpffs: &BpffsDir) -> Result<(), LoadError> {
    if !bpffs.exists() {
        return Ok(());
    }
    // Refuse while an agent holds the directory: it would go on writing
    // maps nobody can see any more.
    let _lock = bpffs.lock()?;
    if let Ok(entries) = fs::read_dir(bpffs.links()) {
        for entry in entries.filter_map(Result::ok) {
            unpin_link(&entry.path());
        }
    }
    for dir in [bpffs.maps(), bpffs.retired()] {
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                fs::remove_file(&path).map_err(|source| LoadError::Io { path, source })?;
            }
        }
    }
    for dir in [
        bpffs.links(),
        bpffs.maps(),
        bpffs.retired(),
        bpffs.root.clone(),
    ] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoadError::Io { path: dir, source }),
        }
    }
    Ok(())
}

/// Program `name` of the loaded object as its type `T` (not loaded yet).
pub(crate) fn typed_program<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}
