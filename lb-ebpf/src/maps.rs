//! The datapath's maps. Layouts and meanings are documented in `lb-common`.
//! All but a scratch buffer are pinned by name: the agent points aya at its
//! bpffs directory, so a restarted agent reuses them and translation never
//! stops.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use lb_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Config, ExternalConfig, ExternalFrontendValue,
    Flow4, Flow4Nat, Flow6, Flow6Nat, Frontend4Key, Frontend6Key, FrontendValue, InterfaceAddrs,
    MaglevEntry, NodePortKey, ServiceCounters, ServiceName, SlotKey, SockRevNat4Key,
    SockRevNat4Value, SockRevNat6Key, SockRevNat6Value, SourceRange4, SourceRange6, capacity,
    external_counter, map_flags,
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

// North-south (tc): external frontends, their Maglev tables and the flow
// table. See `external.rs`.

#[map]
pub static EXT_FRONTENDS4: HashMap<Frontend4Key, ExternalFrontendValue> =
    HashMap::pinned(capacity::EXTERNAL_FRONTENDS, map_flags::LOOKUP);
#[map]
pub static EXT_FRONTENDS6: HashMap<Frontend6Key, ExternalFrontendValue> =
    HashMap::pinned(capacity::EXTERNAL_FRONTENDS, map_flags::LOOKUP);
/// Flat: table t is entries `t * size .. (t + 1) * size`, so a new flow
/// costs one array access after the frontend lookup.
#[map]
pub static MAGLEV: Array<MaglevEntry> = Array::pinned(
    capacity::MAGLEV_TABLE_SIZE * capacity::MAGLEV_TABLES,
    map_flags::ARRAY,
);
#[map]
pub static FLOWS4: LruHashMap<Flow4, Flow4Nat> =
    LruHashMap::pinned(capacity::FLOWS, map_flags::LRU);
#[map]
pub static FLOWS6: LruHashMap<Flow6, Flow6Nat> =
    LruHashMap::pinned(capacity::FLOWS, map_flags::LRU);
/// LPM tries must be created with BPF_F_NO_PREALLOC (the kernel refuses
/// them otherwise), which is `map_flags::LOOKUP`.
#[map]
pub static SOURCE_RANGES4: LpmTrie<SourceRange4, u8> =
    LpmTrie::pinned(capacity::SOURCE_RANGES, map_flags::LOOKUP);
#[map]
pub static SOURCE_RANGES6: LpmTrie<SourceRange6, u8> =
    LpmTrie::pinned(capacity::SOURCE_RANGES, map_flags::LOOKUP);
#[map]
pub static IFACE_ADDRS: HashMap<u32, InterfaceAddrs> =
    HashMap::pinned(capacity::INTERFACES, map_flags::LOOKUP);
#[map]
pub static EXT_CONFIG: Array<ExternalConfig> = Array::pinned(1, map_flags::ARRAY);
#[map]
pub static EXT_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::pinned(external_counter::COUNT, map_flags::ARRAY);
/// The parameters of `bpf_fib_lookup` (64 bytes), kept off the stack: the
/// verifier allows 512 bytes for a whole chain of calls. Per CPU, and a
/// program run never yields its CPU, so no two runs share it. Not pinned:
/// it holds nothing between runs.
#[map]
pub static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);
