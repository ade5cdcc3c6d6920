//! Typed handles on the pinned maps. Both the agent and the read-only
//! commands (`ferry services`) open the maps from their pins, so there is
//! one way to reach them.

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use lb_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Config, Frontend4Key, Frontend6Key,
    FrontendValue, NodePortKey, ServiceCounters, ServiceName, Slot, SlotKey, Socket4, Socket6,
    maps as names,
};
use thiserror::Error;

use super::paths::BpffsDir;

#[derive(Debug, Error)]
pub enum MapsError {
    #[error(
        "opening pinned map {name} in {dir}: {source} (is ferry running, or was it cleaned up?)"
    )]
    Open {
        name: &'static str,
        dir: String,
        source: MapError,
    },
}

pub struct Maps {
    pub frontends4: HashMap<MapData, Frontend4Key, FrontendValue>,
    pub frontends6: HashMap<MapData, Frontend6Key, FrontendValue>,
    pub slots: HashMap<MapData, SlotKey, Slot>,
    pub backends4: HashMap<MapData, u32, Backend4>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub cluster_ips4: HashMap<MapData, [u8; 4], u32>,
    pub cluster_ips6: HashMap<MapData, [u8; 16], u32>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// Socket-local storage: read only through sock_diag, which reports
    /// each socket's value of the maps whose fds it is given (see
    /// `sockets`), so only the fds are needed.
    pub sock_peers4: MapData,
    pub sock_peers6: MapData,
    /// The socket table, by socket cookie (see `lb_common::Socket4`).
    pub sockets4: Array<MapData, Socket4>,
    pub sockets6: Array<MapData, Socket6>,
    pub counters: PerCpuArray<MapData, ServiceCounters>,
    pub names: HashMap<MapData, u32, ServiceName>,
    pub nodeport_binds: HashMap<MapData, NodePortKey, u8>,
    pub config: Array<MapData, Config>,
}

/// The kind of map each pinned name holds, so that aya checks key and value
/// sizes when the typed handle is made.
fn open_map(bpffs: &BpffsDir, name: &'static str) -> Result<Map, MapsError> {
    let data = open_data(bpffs, name)?;
    Ok(match name {
        names::AFFINITY => Map::LruHashMap(data),
        names::COUNTERS => Map::PerCpuArray(data),
        names::CONFIG | names::SOCKETS4 | names::SOCKETS6 => Map::Array(data),
        _ => Map::HashMap(data),
    })
}

fn open_data(bpffs: &BpffsDir, name: &'static str) -> Result<MapData, MapsError> {
    MapData::from_pin(bpffs.map(name)).map_err(|source| MapsError::Open {
        name,
        dir: bpffs.maps().display().to_string(),
        source,
    })
}

macro_rules! typed {
    ($bpffs:expr, $name:expr) => {{
        let name = $name;
        open_map($bpffs, name)?
            .try_into()
            .map_err(|source| MapsError::Open {
                name,
                dir: $bpffs.maps().display().to_string(),
                source,
            })?
    }};
}

impl Maps {
    pub fn open(bpffs: &BpffsDir) -> Result<Self, MapsError> {
        Ok(Self {
            frontends4: typed!(bpffs, names::FRONTENDS4),
            frontends6: typed!(bpffs, names::FRONTENDS6),
            slots: typed!(bpffs, names::SLOTS),
            backends4: typed!(bpffs, names::BACKENDS4),
            backends6: typed!(bpffs, names::BACKENDS6),
            cluster_ips4: typed!(bpffs, names::CLUSTER_IPS4),
            cluster_ips6: typed!(bpffs, names::CLUSTER_IPS6),
            affinity: typed!(bpffs, names::AFFINITY),
            sock_peers4: open_data(bpffs, names::SOCK_PEERS4)?,
            sock_peers6: open_data(bpffs, names::SOCK_PEERS6)?,
            sockets4: typed!(bpffs, names::SOCKETS4),
            sockets6: typed!(bpffs, names::SOCKETS6),
            counters: typed!(bpffs, names::COUNTERS),
            names: typed!(bpffs, names::SERVICE_NAMES),
            nodeport_binds: typed!(bpffs, names::NODEPORT_BINDS),
            config: typed!(bpffs, names::CONFIG),
        })
    }

    /// Counters of one backend set, summed over CPUs.
    pub fn counters_of(&self, service_id: u32) -> ServiceCounters {
        let mut sum = ServiceCounters::default();
        if let Ok(per_cpu) = self.counters.get(&service_id, 0) {
            for c in per_cpu.iter() {
                sum.translated += c.translated;
                sum.refused += c.refused;
            }
        }
        sum
    }
}
