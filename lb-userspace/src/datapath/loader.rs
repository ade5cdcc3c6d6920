//! Loading the programs, attaching them to the cgroup and pinning
//! everything, so that translation goes on while no agent runs.
//!
//! A restart never leaves a gap: the new programs are attached next to the
//! old ones (cgroup bpf_links always run every attached program in order,
//! and a destination the first one translated is no frontend for the
//! second), and only then are the old links unpinned, which detaches them.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapInfo,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps as names;
use thiserror::Error;

use super::{
    object::{OBJECT, SOCK_ADDR_PROGRAMS, SOCK_PROGRAMS},
    paths::{BpffsDir, PathError},
};

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this ferry was built without its eBPF object (AYA_BUILD_SKIP)")]
    NoObject,
    #[error(transparent)]
    Path(#[from] PathError),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// The layout each pinned map has in this version. A pin whose layout
/// differs was left by another version of Ferry: aya would reuse it
/// blindly, so it is removed and recreated instead.
fn expected_layout(name: &str) -> Option<Layout> {
    use core::mem::size_of;
    use lb_common::*;
    fn sz<T>() -> u32 {
        size_of::<T>() as u32
    }
    let (key_size, value_size, max_entries, flags) = match name {
        names::FRONTENDS4 => (
            sz::<Frontend4Key>(),
            sz::<FrontendValue>(),
            capacity::FRONTENDS,
            map_flags::LOOKUP,
        ),
        names::FRONTENDS6 => (
            sz::<Frontend6Key>(),
            sz::<FrontendValue>(),
            capacity::FRONTENDS,
            map_flags::LOOKUP,
        ),
        names::SLOTS => (sz::<SlotKey>(), 4, capacity::SLOTS, map_flags::LOOKUP),
        names::BACKENDS4 => (4, sz::<Backend4>(), capacity::BACKENDS, map_flags::LOOKUP),
        names::BACKENDS6 => (4, sz::<Backend6>(), capacity::BACKENDS, map_flags::LOOKUP),
        names::CLUSTER_IPS4 => (4, 4, capacity::FRONTENDS, map_flags::LOOKUP),
        names::CLUSTER_IPS6 => (16, 4, capacity::FRONTENDS, map_flags::LOOKUP),
        names::SOCK_REVNAT4 => (
            sz::<SockRevNat4Key>(),
            sz::<SockRevNat4Value>(),
            capacity::SOCK_REVNAT,
            map_flags::LRU,
        ),
        names::SOCK_REVNAT6 => (
            sz::<SockRevNat6Key>(),
            sz::<SockRevNat6Value>(),
            capacity::SOCK_REVNAT,
            map_flags::LRU,
        ),
        names::AFFINITY => (
            sz::<AffinityKey>(),
            sz::<AffinityValue>(),
            capacity::AFFINITY,
            map_flags::LRU,
        ),
        names::COUNTERS => (
            4,
            sz::<ServiceCounters>(),
            capacity::SERVICES,
            map_flags::ARRAY,
        ),
        names::SERVICE_NAMES => (
            4,
            sz::<ServiceName>(),
            capacity::SERVICES,
            map_flags::LOOKUP,
        ),
        names::NODEPORT_BINDS => (
            sz::<NodePortKey>(),
            1,
            capacity::NODEPORT_BINDS,
            map_flags::LOOKUP,
        ),
        names::CONFIG => (4, sz::<Config>(), 1, map_flags::ARRAY),
        names::EXTERNAL_FRONTENDS4 => (
            sz::<Frontend4Key>(),
            sz::<ExternalFrontendValue>(),
            capacity::EXTERNAL_FRONTENDS,
            map_flags::LOOKUP,
        ),
        names::EXTERNAL_FRONTENDS6 => (
            sz::<Frontend6Key>(),
            sz::<ExternalFrontendValue>(),
            capacity::EXTERNAL_FRONTENDS,
            map_flags::LOOKUP,
        ),
        names::MAGLEV => (
            4,
            sz::<MaglevEntry>(),
            capacity::MAGLEV_TABLE_SIZE * capacity::MAGLEV_TABLES,
            map_flags::ARRAY,
        ),
        names::FLOWS4 => (
            sz::<Flow4>(),
            sz::<Flow4Nat>(),
            capacity::FLOWS,
            map_flags::LRU,
        ),
        names::FLOWS6 => (
            sz::<Flow6>(),
            sz::<Flow6Nat>(),
            capacity::FLOWS,
            map_flags::LRU,
        ),
        // LPM trie keys carry a 4-byte prefix length before the data.
        names::SOURCE_RANGES4 => (
            4 + sz::<SourceRange4>(),
            1,
            capacity::SOURCE_RANGES,
            map_flags::LOOKUP,
        ),
        names::SOURCE_RANGES6 => (
            4 + sz::<SourceRange6>(),
            1,
            capacity::SOURCE_RANGES,
            map_flags::LOOKUP,
        ),
        names::INTERFACE_ADDRS => (
            4,
            sz::<InterfaceAddrs>(),
            capacity::INTERFACES,
            map_flags::LOOKUP,
        ),
        names::EXTERNAL_CONFIG => (4, sz::<ExternalConfig>(), 1, map_flags::ARRAY),
        names::EXTERNAL_COUNTERS => (4, 8, external_counter::COUNT, map_flags::ARRAY),
        _ => return None,
    };
    Some(Layout {
        key_size,
        value_size,
        max_entries,
        flags,
    })
}

fn drop_incompatible_pins(bpffs: &BpffsDir) {
    for name in names::ALL {
        let path = bpffs.map(name);
        if !path.exists() {
            continue;
        }
        let Some(expected) = expected_layout(name) else {
            continue;
        };
        let found = MapInfo::from_pin(&path)
            .map(|i| Layout {
                key_size: i.key_size(),
                value_size: i.value_size(),
                max_entries: i.max_entries(),
                flags: i.map_flags(),
            })
            .ok();
        if found != Some(expected) {
            tracing::warn!(
                map = name,
                ?found,
                ?expected,
                "pinned map has another layout (left by another Ferry version); recreating it"
            );
            let _ = fs::remove_file(&path);
        }
    }
}

pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Pinned link files of one program: `links/<program>@<generation>`.
fn pinned_links_of(bpffs: &BpffsDir, program: &str) -> Vec<PathBuf> {
    let prefix = format!("{program}@");
    let Ok(entries) = fs::read_dir(bpffs.links()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
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

/// Loads the object with its maps pinned under `bpffs`, attaches every
/// cgroup program to `cgroup`, pins the new links and then detaches the
/// links of any previous generation. Returns the loaded object, whose tc
/// programs `tc::TcPrograms` attaches.
pub fn load_and_attach(bpffs: &BpffsDir, cgroup: &Path) -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    bpffs.prepare()?;
    drop_incompatible_pins(bpffs);

    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(bpffs.maps())
        .load(OBJECT)?;

    let cgroup_fd = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let generation = now_nanos();
    let mut old_links = Vec::new();

    let programs = SOCK_ADDR_PROGRAMS
        .iter()
        .map(|n| (*n, true))
        .chain(SOCK_PROGRAMS.iter().map(|n| (*n, false)));
    for (name, sock_addr) in programs {
        let link = if sock_addr {
            attach_as!(ebpf, name, CgroupSockAddr, &cgroup_fd)
        } else {
            attach_as!(ebpf, name, CgroupSock, &cgroup_fd)
        };
        old_links.extend(pinned_links_of(bpffs, name));
        link.pin(bpffs.link(&format!("{name}@{generation}")))
            .map_err(|source| LoadError::Pin { name, source })?;
    }
    // The new generation is attached and pinned: retire the old one.
    for path in old_links {
        unpin_link(&path);
    }
    Ok(ebpf)
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
    if let Ok(entries) = fs::read_dir(bpffs.maps()) {
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|source| LoadError::Io { path, source })?;
        }
    }
    for dir in [bpffs.links(), bpffs.maps(), bpffs.root.clone()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoadError::Io { path: dir, source }),
        }
    }
    Ok(())
}

/// Whether any program generation is pinned (a previous agent's state).
pub fn has_pinned_links(bpffs: &BpffsDir) -> bool {
    fs::read_dir(bpffs.links())
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
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
