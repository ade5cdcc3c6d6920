//! The datapath's maps. Layouts and meanings are documented in `lb-common`.
//! All are pinned by name: the agent points aya at its bpffs directory, so
//! a restarted agent reuses them and translation never stops.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Config, Frontend4Key, Frontend6Key,
    FrontendValue, NodePortKey, ServiceCounters, ServiceName, SlotKey, SockRevNat4Key,
    SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, capacity, map_flags,
};

#[map]
pub static FRONTENDS4: HashMap<Frontend4Key, FrontendValue> =
    HashMap::pinned(capacity::FRONTENDS, map_flags::LOOKUP);
#[map]
pub static FRONTENDS6: HashMap<Frontend6Key, FrontendValue> =
    HashMap::pinned(capacity::FRONTENDS, map_flags::LOOKUP);
#[map]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(capacity::SLOTS, map_flags::LOOKUP);
#[map]
pub static BACKENDS4: HashMap<u32, Backend4> =
    HashMap::pinned(capacity::BACKENDS, map_flags::LOOKUP);
#[map]
pub static BACKENDS6: HashMap<u32, Backend6> =
    HashMap::pinned(capacity::BACKENDS, map_flags::LOOKUP);
#[map]
pub static CLUSTER_IPS4: HashMap<u32, u32> =
    HashMap::pinned(capacity::FRONTENDS, map_flags::LOOKUP);
#[map]
pub static CLUSTER_IPS6: HashMap<[u32; 4], u32> =
    HashMap::pinned(capacity::FRONTENDS, map_flags::LOOKUP);
#[map]
pub static SOCK_REVNAT4: LruHashMap<SockRevNat4Key, SockRevNat4Value> =
    LruHashMap::pinned(capacity::SOCK_REVNAT, map_flags::LRU);
#[map]
pub static SOCK_REVNAT6: LruHashMap<SockRevNat6Key, SockRevNat6Value> =
    LruHashMap::pinned(capacity::SOCK_REVNAT, map_flags::LRU);
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, map_flags::LRU);
#[map]
pub static COUNTERS: PerCpuArray<ServiceCounters> =
    PerCpuArray::pinned(capacity::SERVICES, map_flags::ARRAY);
/// Read only by `ferry services`; the programs never touch it.
#[map]
pub static SERVICE_NAMES: HashMap<u32, ServiceName> =
    HashMap::pinned(capacity::SERVICES, map_flags::LOOKUP);
#[map]
pub static NODEPORT_BINDS: HashMap<NodePortKey, u8> =
    HashMap::pinned(capacity::NODEPORT_BINDS, map_flags::LOOKUP);
#[map]
pub static CONFIG: Array<Config> = Array::pinned(1, map_flags::ARRAY);
