//! The datapath's maps. Layouts and meanings are documented in `lb-common`.
//!
//! Every map is a BTF map (`.maps` section), so it carries its key and value
//! types and `bpftool map dump` shows named fields. BTF map definitions have
//! no pinning attribute in aya-ebpf 0.2.1: the agent pins each map by name
//! at load time (`EbpfLoader::map_pin_path`), which also lets it create a
//! map whose pinned predecessor has another layout next to it and retire
//! the old one only once the new one is filled (see the agent's loader).

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, SkStorage},
    macros::btf_map,
};
use lb_common::{
    AffinityKey, AffinityValue, Backend4, Backend6, Config, ExternalBackend, ExternalConfig,
    ExternalFrontendValue, Flow4, Flow4Nat, Flow6, Flow6Nat, Frontend4Key, Frontend6Key,
    FrontendValue, InterfaceAddrs, NodePortKey, ServiceCounters, ServiceName, Slot, SlotKey,
    SockPeers4, SockPeers6, Socket4, Socket6, SourceRange4, SourceRange6, capacity,
    external_counter, map_flags, maps,
};

// Capacities and flags as the const generics of the BTF definitions take
// them.
const FRONTENDS: usize = capacity::FRONTENDS as usize;
const SERVICES: usize = capacity::SERVICES as usize;
const SLOTS_MAX: usize = capacity::SLOTS as usize;
const BACKENDS: usize = capacity::BACKENDS as usize;
const SOCKETS: usize = capacity::SOCKETS as usize;
const AFFINITY_MAX: usize = capacity::AFFINITY as usize;
const NODEPORTS: usize = capacity::NODEPORT_BINDS as usize;
const EXT_FRONTENDS: usize = capacity::EXTERNAL_FRONTENDS as usize;
const MAGLEV_TABLE: usize = capacity::MAGLEV_TABLE_SIZE as usize;
const MAGLEV_TABLES: usize = capacity::MAGLEV_TABLES as usize;
const INNER_MAP: usize = map_flags::INNER_MAP as usize;
const FLOWS: usize = capacity::FLOWS as usize;
const RANGES: usize = capacity::SOURCE_RANGES as usize;
const INTERFACES: usize = capacity::INTERFACES as usize;
const EXT_COUNTERS_LEN: usize = external_counter::COUNT as usize;
const LOOKUP: usize = map_flags::LOOKUP as usize;
const LRU: usize = map_flags::LRU as usize;
const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() == maps::FIB_LOOKUP_SIZE as usize);

pub(crate) type Frontends4 = HashMap<Frontend4Key, FrontendValue, FRONTENDS, LOOKUP>;
pub(crate) type Frontends6 = HashMap<Frontend6Key, FrontendValue, FRONTENDS, LOOKUP>;
pub(crate) type Backends4 = HashMap<u32, Backend4, BACKENDS, LOOKUP>;
pub(crate) type Backends6 = HashMap<u32, Backend6, BACKENDS, LOOKUP>;
pub(crate) type ClusterIps4 = HashMap<[u8; 4], u32, FRONTENDS, LOOKUP>;
pub(crate) type ClusterIps6 = HashMap<[u8; 16], u32, FRONTENDS, LOOKUP>;
/// The north-south flow tables' type, for `external.rs`' family trait.
pub(crate) type FlowTable<K, V> = LruHashMap<K, V, FLOWS, LRU>;

#[btf_map]
pub(crate) static FRONTENDS4: Frontends4 = Frontends4::new();
#[btf_map]
pub(crate) static FRONTENDS6: Frontends6 = Frontends6::new();
#[btf_map]
pub(crate) static SLOTS: HashMap<SlotKey, Slot, SLOTS_MAX, LOOKUP> = HashMap::new();
/// The agent's registry of backend ids; the programs read the copy each
/// slot holds (`lb_common::Slot`), never this.
#[btf_map]
pub(crate) static BACKENDS4: Backends4 = Backends4::new();
#[btf_map]
pub(crate) static BACKENDS6: Backends6 = Backends6::new();
#[btf_map]
pub(crate) static CLUSTER_IPS4: ClusterIps4 = ClusterIps4::new();
#[btf_map]
pub(crate) static CLUSTER_IPS6: ClusterIps6 = ClusterIps6::new();
/// Per socket: what its peer should look like (recvmsg, getpeername).
#[btf_map]
pub(crate) static SOCK_PEERS4: SkStorage<SockPeers4> = SkStorage::new();
#[btf_map]
pub(crate) static SOCK_PEERS6: SkStorage<SockPeers6> = SkStorage::new();
/// Per socket, by cookie: the fast path of the above (see `Socket4`).
#[btf_map]
pub(crate) static SOCKETS4: Array<Socket4, SOCKETS> = Array::new();
#[btf_map]
pub(crate) static SOCKETS6: Array<Socket6, SOCKETS> = Array::new();
#[btf_map]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityValue, AFFINITY_MAX, LRU> =
    LruHashMap::new();
#[btf_map]
pub(crate) static COUNTERS: PerCpuArray<ServiceCounters, SERVICES> = PerCpuArray::new();
/// Read only by `ferry services`; the programs never touch it.
#[btf_map]
pub(crate) static SERVICE_NAMES: HashMap<u32, ServiceName, SERVICES, LOOKUP> = HashMap::new();
#[btf_map]
pub(crate) static NODEPORT_BINDS: HashMap<NodePortKey, u8, NODEPORTS, LOOKUP> = HashMap::new();
#[btf_map]
pub(crate) static CONFIG: Array<Config, 1> = Array::new();

// North-south (tc): external frontends, their Maglev tables and the flow
// table. See `external.rs`.

#[btf_map]
pub(crate) static EXT_FRONTENDS4: HashMap<
    Frontend4Key,
    ExternalFrontendValue,
    EXT_FRONTENDS,
    LOOKUP,
> = HashMap::new();
#[btf_map]
pub(crate) static EXT_FRONTENDS6: HashMap<
    Frontend6Key,
    ExternalFrontendValue,
    EXT_FRONTENDS,
    LOOKUP,
> = HashMap::new();
/// One Maglev table per distinct backend list, created by the agent with
/// the configured size (the template's capacity is only the default:
/// `INNER_MAP`). A new flow costs two array lookups (outer, inner; both
/// inlined by the verifier) and one hash lookup of the backend.
pub(crate) type MaglevTable = Array<u32, MAGLEV_TABLE, INNER_MAP>;
#[btf_map]
pub(crate) static MAGLEV: ArrayOfMaps<MaglevTable, MAGLEV_TABLES> = ArrayOfMaps::new();
#[btf_map]
pub(crate) static EXT_BACKENDS: HashMap<u32, ExternalBackend, BACKENDS, LOOKUP> = HashMap::new();
#[btf_map]
pub(crate) static FLOWS4: FlowTable<Flow4, Flow4Nat> = FlowTable::new();
#[btf_map]
pub(crate) static FLOWS6: FlowTable<Flow6, Flow6Nat> = FlowTable::new();
/// LPM tries must be created with BPF_F_NO_PREALLOC (the kernel refuses
/// them otherwise), which is `map_flags::LOOKUP`.
#[btf_map]
pub(crate) static SOURCE_RANGES4: LpmTrie<SourceRange4, u8, RANGES, LOOKUP> = LpmTrie::new();
#[btf_map]
pub(crate) static SOURCE_RANGES6: LpmTrie<SourceRange6, u8, RANGES, LOOKUP> = LpmTrie::new();
#[btf_map]
pub(crate) static IFACE_ADDRS: HashMap<u32, InterfaceAddrs, INTERFACES, LOOKUP> = HashMap::new();
#[btf_map]
pub(crate) static EXT_CONFIG: Array<ExternalConfig, 1> = Array::new();
#[btf_map]
pub(crate) static EXT_COUNTERS: PerCpuArray<u64, EXT_COUNTERS_LEN> = PerCpuArray::new();
/// The parameters of `bpf_fib_lookup` (64 bytes), kept off the stack: the
/// verifier allows 512 bytes for a whole chain of calls. Per CPU, and a
/// program run never yields its CPU, so no two runs share it. Not pinned:
/// it holds nothing between runs.
#[btf_map]
pub(crate) static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup, 1> = PerCpuArray::new();
