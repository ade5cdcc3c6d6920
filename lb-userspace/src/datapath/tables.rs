//! Maglev tables as the kernel holds them: `MAGLEV` is an array of maps,
//! and each backend set's table is an array map of its own (external
//! backend ids), created for the set, filled whole, and only then put in
//! its slot of `MAGLEV`. A program that looks the slot up meets either no
//! table or a complete one; a table is never written once it is in a slot.
//!
//! aya 0.14 can set a slot of an array of maps but not read its inner map
//! id cheaply, delete a slot, or fill an array or set many slots in one
//! call, so these operations are bpf(2) calls here.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{MapData, MapError};
use lb_common::map_flags;

use super::loader::bpf;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
/// Linux 5.6; arrays support it through `generic_map_update_batch`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// `union bpf_attr` for the element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("creating a Maglev table of {size} entries: {source}")]
    Create { size: usize, source: MapError },
    #[error("{what} Maglev table {id}: {source}")]
    Syscall {
        what: &'static str,
        id: u32,
        source: std::io::Error,
    },
}

fn elem(fd: i32, key: *const u32, value: *mut u32) -> ElemAttr {
    ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    }
}

/// A table created and filled, not yet in a slot.
pub struct Filled {
    pub id: u32,
    table: MapData,
}

/// Creates a table holding `entries` (external backend ids) for slot `id`.
pub fn fill(id: u32, entries: &[u32]) -> Result<Filled, TableError> {
    let size = entries.len();
    let obj =
        aya_obj::Map::new_from_params(BPF_MAP_TYPE_ARRAY, 4, 4, size as u32, map_flags::INNER_MAP);
    let table = MapData::create(obj, "ferry_maglev", None)
        .map_err(|source| TableError::Create { size, source })?;
    let keys: Vec<u32> = (0..size as u32).collect();
    batch(
        BPF_MAP_UPDATE_BATCH,
        table.fd().as_fd().as_raw_fd(),
        &keys,
        entries.as_ptr(),
    )
    .map_err(|source| TableError::Syscall {
        what: "filling",
        id,
        source,
    })?;
    Ok(Filled { id, table })
}

/// A batch command over `keys` (and as many u32 values).
fn batch(cmd: libc::c_long, fd: i32, keys: &[u32], values: *const u32) -> std::io::Result<()> {
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values as u64,
        count: keys.len() as u32,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: keys (and values, unless null for a delete) hold `count`
    // u32s, the key and value size of every map here.
    unsafe { bpf(cmd, &mut attr) }
}

/// Puts filled tables in their slots of `maglev` (replacing what was
/// there, atomically per slot). Every update of an array of maps waits
/// for the program runs in flight (the kernel's `maybe_wait_bpf_programs`,
/// an RCU grace period: milliseconds), since Linux 6.7 once per batch
/// rather than once per element; so all of a pass's tables go in one
/// batch, and one by one only where batches are refused. Returns the slots
/// that could not be set, with why.
pub fn install(maglev: &MapData, tables: Vec<Filled>) -> Vec<(u32, TableError)> {
    if tables.is_empty() {
        return Vec::new();
    }
    let outer = maglev.fd().as_fd().as_raw_fd();
    let keys: Vec<u32> = tables.iter().map(|t| t.id).collect();
    let fds: Vec<u32> = tables
        .iter()
        .map(|t| t.table.fd().as_fd().as_raw_fd() as u32)
        .collect();
    if batch(BPF_MAP_UPDATE_BATCH, outer, &keys, fds.as_ptr()).is_ok() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for (id, fd) in keys.iter().zip(&fds) {
        let mut value = *fd;
        let mut attr = elem(outer, id, &mut value);
        // SAFETY: a u32 key and a u32 value (an array of maps takes the
        // inner map's fd).
        if let Err(source) = unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) } {
            errors.push((
                *id,
                TableError::Syscall {
                    what: "installing",
                    id: *id,
                    source,
                },
            ));
        }
    }
    errors
    // The tables' fds close here; the slots hold the maps.
}

/// Empties slots `ids` (the kernel frees each table once no program run
/// still uses it; the call returns after every run that could have
/// looked a slot up has ended). An empty slot is not an error.
///
/// Arrays of maps take no batch delete, and each delete waits for a grace
/// period of its own, so the deletes run from up to [`REMOVERS`] threads
/// at once: concurrent waits share grace periods (120 tables: 1.8 s one
/// by one on this machine's kernel).
pub fn remove(maglev: &MapData, ids: &[u32]) -> Vec<TableError> {
    let outer = maglev.fd().as_fd().as_raw_fd();
    let chunk = ids.len().div_ceil(REMOVERS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(chunk)
            .map(|ids| scope.spawn(move || remove_each(outer, ids)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    })
}

/// Threads [`remove`] deletes from.
pub const REMOVERS: usize = 32;

fn remove_each(outer: i32, ids: &[u32]) -> Vec<TableError> {
    let mut errors = Vec::new();
    for id in ids {
        let mut attr = elem(outer, id, std::ptr::null_mut());
        // SAFETY: a u32 key; delete reads no value.
        match unsafe { bpf(BPF_MAP_DELETE_ELEM, &mut attr) } {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => errors.push(TableError::Syscall {
                what: "removing",
                id: *id,
                source: e,
            }),
            _ => {}
        }
    }
    errors
}

/// The kernel id of the table in slot `id`, None when the slot is empty.
fn slot(maglev: &MapData, id: u32) -> Option<u32> {
    let mut map_id = 0u32;
    let mut attr = elem(maglev.fd().as_fd().as_raw_fd(), &id, &mut map_id);
    // SAFETY: a u32 key; an array of maps answers a lookup with the inner
    // map's id (a u32).
    unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.ok()?;
    Some(map_id)
}

/// The slots that hold a table.
pub fn occupied(maglev: &MapData, capacity: u32) -> Vec<u32> {
    (0..capacity)
        .filter(|&i| slot(maglev, i).is_some())
        .collect()
}

/// Entry `index` of the table in slot `id` (an external backend id).
pub fn entry(maglev: &MapData, id: u32, index: u32) -> Option<u32> {
    let table = MapData::from_id(slot(maglev, id)?).ok()?;
    let table: aya::maps::Array<MapData, u32> = aya::maps::Map::Array(table).try_into().ok()?;
    table.get(&index, 0).ok()
}
