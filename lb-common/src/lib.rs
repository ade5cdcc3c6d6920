//! Map types shared by Ferry's eBPF datapath (`lb-ebpf`) and its agent
//! (`lb-userspace`).
//!
//! Every type here is `#[repr(C)]` with explicit padding, so that the kernel
//! side and the user side agree on the layout byte for byte, and every size
//! is asserted at compile time. Addresses and ports are stored in network
//! byte order, exactly as the kernel hands them to cgroup sock_addr programs
//! (`bpf_sock_addr.user_ip4`, `user_ip6`, `user_port`), so the hot path never
//! converts.
//!
//! The layout, one family at a time:
//! - `FRONTENDS4/6`: frontend (address, port, protocol) → [`FrontendValue`]
//!   (service id, backend count, flags).
//! - `SLOTS`: (service id, slot 1..=count) → the backend in that slot,
//!   whole ([`Slot`]: id, address, port, flags), so that a connect costs
//!   two lookups (frontend, slot) and not three.
//! - `BACKENDS4/6`: backend id → address, port, state: the agent's registry
//!   of backend ids (restart, `ferry services`); the programs never read
//!   it.
//! - `CLUSTER_IPS4/6`: every ClusterIP → service id, so that a connect to a
//!   known ClusterIP on a port the Service does not define is refused.
//! - `SOCK_PEERS4/6`: socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`):
//!   per translated socket, the frontends it asked for and the backends it
//!   was sent to ([`SockPeers4`], [`SockPeers6`]), for recvmsg and
//!   getpeername. It lives and dies with the socket.
//! - `AFFINITY`: LRU keyed by (client netns cookie, service id) → backend id
//!   and last use, for sessionAffinity ClientIP.
//! - `COUNTERS`: per-CPU array indexed by service id.
//! - `SERVICE_NAMES`: service id → a human readable name, read only by
//!   `ferry services`.
//!
//! North-south (the tc programs, packets from outside the node):
//! - `EXT_FRONTENDS4/6`: external frontend → [`ExternalFrontendValue`]
//!   (Maglev table id, backend count, flags: kind, masquerade, source
//!   ranges).
//! - `MAGLEV`: array of maps, table id → that backend set's Maglev table,
//!   an array of `maglev_size` external backend ids, created by the agent
//!   for the set (so tables take memory for the sets that exist, none for
//!   a fixed worst case).
//! - `EXT_BACKENDS`: external backend id → [`ExternalBackend`] (address,
//!   port, flags); ids are dense, 0 is never one.
//! - `FLOWS4/6`: LRU, both directions of each flow, keyed by the 5-tuple as
//!   it arrives → the 5-tuple it becomes ([`Flow4Nat`], [`Flow6Nat`]).
//! - `SOURCE_RANGES4/6`: LPM trie of (LB frontend, source prefix).
//! - `IFACE_ADDRS`, `EXT_CONFIG`, `EXT_COUNTERS`: masquerade address per
//!   egress interface, configuration, per-CPU packet counters.
//!
//! Unlike the socket hooks, packets carry addresses and ports in network
//! byte order too, so the same convention holds.
#![no_std]

// The host tests use std (collections for the fakes); the crate itself
// does not.
#[cfg(test)]
extern crate std;

pub mod socket_lb;

/// The bytes of an IPv6 address held as four network-order words (as the
/// socket hooks and packet headers give it).
#[inline(always)]
pub const fn addr6_bytes(w: [u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (
        w[0].to_ne_bytes(),
        w[1].to_ne_bytes(),
        w[2].to_ne_bytes(),
        w[3].to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// The inverse of [`addr6_bytes`].
#[inline(always)]
pub const fn addr6_words(b: [u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

/// IANA protocol numbers, as `bpf_sock_addr.protocol` reports them.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The contract between the programs and the agent: every map and program
/// of the eBPF object, declared once. `lb-ebpf` defines them (it has to:
/// the BTF map definitions and the program functions are the object), and
/// the agent derives everything it needs from these declarations (pin
/// names, the layout a reusable pin must have, which programs to attach
/// how) and checks the embedded object against them before it loads it
/// (`lb-userspace`'s `datapath::contract`), so the two sides cannot drift
/// apart unnoticed. Adding or changing a map or a program means editing
/// its definition in `lb-ebpf` and its entry in [`maps::ALL`] or
/// [`programs::ALL`]; nothing else.
pub mod maps {
    use super::*;
    use core::mem::size_of;

    pub const FRONTENDS4: &str = "FRONTENDS4";
    pub const FRONTENDS6: &str = "FRONTENDS6";
    pub const SLOTS: &str = "SLOTS";
    pub const BACKENDS4: &str = "BACKENDS4";
    pub const BACKENDS6: &str = "BACKENDS6";
    pub const CLUSTER_IPS4: &str = "CLUSTER_IPS4";
    pub const CLUSTER_IPS6: &str = "CLUSTER_IPS6";
    pub const SOCK_PEERS4: &str = "SOCK_PEERS4";
    pub const SOCK_PEERS6: &str = "SOCK_PEERS6";
    pub const SOCKETS4: &str = "SOCKETS4";
    pub const SOCKETS6: &str = "SOCKETS6";
    pub const AFFINITY: &str = "AFFINITY";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES";
    pub const NODEPORT_BINDS: &str = "NODEPORT_BINDS";
    pub const CONFIG: &str = "CONFIG";
    pub const EXTERNAL_FRONTENDS4: &str = "EXT_FRONTENDS4";
    pub const EXTERNAL_FRONTENDS6: &str = "EXT_FRONTENDS6";
    pub const MAGLEV: &str = "MAGLEV";
    pub const EXTERNAL_BACKENDS: &str = "EXT_BACKENDS";
    pub const FLOWS4: &str = "FLOWS4";
    pub const FLOWS6: &str = "FLOWS6";
    pub const SOURCE_RANGES4: &str = "SOURCE_RANGES4";
    pub const SOURCE_RANGES6: &str = "SOURCE_RANGES6";
    pub const INTERFACE_ADDRS: &str = "IFACE_ADDRS";
    pub const EXTERNAL_CONFIG: &str = "EXT_CONFIG";
    pub const EXTERNAL_COUNTERS: &str = "EXT_COUNTERS";
    pub const FIB_SCRATCH: &str = "FIB_SCRATCH";

    /// Size of `FIB_SCRATCH`'s value, the kernel's `struct bpf_fib_lookup`
    /// (lb-ebpf asserts it against the binding).
    pub const FIB_LOOKUP_SIZE: u32 = 64;

    /// The kernel map types (`BPF_MAP_TYPE_*`) the datapath uses.
    #[repr(u32)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum MapType {
        Hash = 1,
        Array = 2,
        PerCpuArray = 6,
        LruHash = 9,
        LpmTrie = 11,
        ArrayOfMaps = 12,
        SkStorage = 24,
    }

    /// One map of the object as both sides must see it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapDef {
        pub name: &'static str,
        pub map_type: MapType,
        pub key_size: u32,
        pub value_size: u32,
        /// The capacity the object declares; 0 for socket-local storage.
        pub max_entries: u32,
        /// For a map of maps: the inner maps' (type, value size, capacity,
        /// flags); the key is a u32 index.
        pub inner: Option<(MapType, u32, u32, u32)>,
        /// `map_flags` (see [`super::map_flags`]).
        pub flags: u32,
        /// Pinned under the agent's bpffs directory by name (everything
        /// but per-run scratch space), so that it outlives the agent.
        pub pinned: bool,
    }

    impl MapDef {
        const fn new(
            name: &'static str,
            map_type: MapType,
            key_size: usize,
            value_size: usize,
            max_entries: u32,
            flags: u32,
        ) -> Self {
            Self {
                name,
                map_type,
                key_size: key_size as u32,
                value_size: value_size as u32,
                max_entries,
                flags,
                inner: None,
                pinned: true,
            }
        }

        /// BPF_MAP_TYPE_ARRAY_OF_MAPS of arrays (u32 index on both
        /// levels) holding `value`s. The inner arrays carry
        /// `map_flags::INNER_MAP`, so the agent may create them with
        /// another capacity than this template's.
        const fn array_of_arrays(
            name: &'static str,
            value: usize,
            inner_max_entries: u32,
            max_entries: u32,
        ) -> Self {
            Self {
                inner: Some((
                    MapType::Array,
                    value as u32,
                    inner_max_entries,
                    map_flags::INNER_MAP,
                )),
                ..Self::new(
                    name,
                    MapType::ArrayOfMaps,
                    4,
                    4,
                    max_entries,
                    map_flags::ARRAY,
                )
            }
        }

        /// BPF_MAP_TYPE_HASH with `map_flags::LOOKUP`.
        const fn hash(name: &'static str, key: usize, value: usize, max_entries: u32) -> Self {
            Self::new(
                name,
                MapType::Hash,
                key,
                value,
                max_entries,
                map_flags::LOOKUP,
            )
        }

        /// BPF_MAP_TYPE_LRU_HASH with `map_flags::LRU`.
        const fn lru(name: &'static str, key: usize, value: usize, max_entries: u32) -> Self {
            Self::new(
                name,
                MapType::LruHash,
                key,
                value,
                max_entries,
                map_flags::LRU,
            )
        }

        /// BPF_MAP_TYPE_ARRAY (u32 index).
        const fn array(name: &'static str, value: usize, max_entries: u32) -> Self {
            Self::new(
                name,
                MapType::Array,
                4,
                value,
                max_entries,
                map_flags::ARRAY,
            )
        }

        /// BPF_MAP_TYPE_PERCPU_ARRAY (u32 index; `value` per CPU).
        const fn per_cpu_array(name: &'static str, value: usize, max_entries: u32) -> Self {
            Self::new(
                name,
                MapType::PerCpuArray,
                4,
                value,
                max_entries,
                map_flags::ARRAY,
            )
        }

        /// BPF_MAP_TYPE_LPM_TRIE: the key is a 4-byte prefix length and
        /// then `data`; the kernel requires BPF_F_NO_PREALLOC.
        const fn lpm_trie(name: &'static str, data: usize, value: usize, max_entries: u32) -> Self {
            Self::new(
                name,
                MapType::LpmTrie,
                4 + data,
                value,
                max_entries,
                map_flags::LOOKUP,
            )
        }

        /// BPF_MAP_TYPE_SK_STORAGE: keyed by a socket fd, no capacity, and
        /// the kernel requires BPF_F_NO_PREALLOC.
        const fn socket_storage(name: &'static str, value: usize) -> Self {
            Self::new(name, MapType::SkStorage, 4, value, 0, map_flags::LOOKUP)
        }

        const fn unpinned(self) -> Self {
            Self {
                pinned: false,
                ..self
            }
        }
    }

    /// Every map the object defines.
    pub const ALL: &[MapDef] = &[
        MapDef::hash(
            FRONTENDS4,
            size_of::<Frontend4Key>(),
            size_of::<FrontendValue>(),
            capacity::FRONTENDS,
        ),
        MapDef::hash(
            FRONTENDS6,
            size_of::<Frontend6Key>(),
            size_of::<FrontendValue>(),
            capacity::FRONTENDS,
        ),
        MapDef::hash(
            SLOTS,
            size_of::<SlotKey>(),
            size_of::<Slot>(),
            capacity::SLOTS,
        ),
        MapDef::hash(BACKENDS4, 4, size_of::<Backend4>(), capacity::BACKENDS),
        MapDef::hash(BACKENDS6, 4, size_of::<Backend6>(), capacity::BACKENDS),
        MapDef::hash(CLUSTER_IPS4, 4, 4, capacity::FRONTENDS),
        MapDef::hash(CLUSTER_IPS6, 16, 4, capacity::FRONTENDS),
        MapDef::socket_storage(SOCK_PEERS4, size_of::<SockPeers4>()),
        MapDef::socket_storage(SOCK_PEERS6, size_of::<SockPeers6>()),
        MapDef::array(SOCKETS4, size_of::<Socket4>(), capacity::SOCKETS),
        MapDef::array(SOCKETS6, size_of::<Socket6>(), capacity::SOCKETS),
        MapDef::lru(
            AFFINITY,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            capacity::AFFINITY,
        ),
        MapDef::per_cpu_array(COUNTERS, size_of::<ServiceCounters>(), capacity::SERVICES),
        MapDef::hash(
            SERVICE_NAMES,
            4,
            size_of::<ServiceName>(),
            capacity::SERVICES,
        ),
        MapDef::hash(
            NODEPORT_BINDS,
            size_of::<NodePortKey>(),
            1,
            capacity::NODEPORT_BINDS,
        ),
        MapDef::array(CONFIG, size_of::<Config>(), 1),
        MapDef::hash(
            EXTERNAL_FRONTENDS4,
            size_of::<Frontend4Key>(),
            size_of::<ExternalFrontendValue>(),
            capacity::EXTERNAL_FRONTENDS,
        ),
        MapDef::hash(
            EXTERNAL_FRONTENDS6,
            size_of::<Frontend6Key>(),
            size_of::<ExternalFrontendValue>(),
            capacity::EXTERNAL_FRONTENDS,
        ),
        MapDef::array_of_arrays(
            MAGLEV,
            4,
            capacity::MAGLEV_TABLE_SIZE,
            capacity::MAGLEV_TABLES,
        ),
        MapDef::hash(
            EXTERNAL_BACKENDS,
            4,
            size_of::<ExternalBackend>(),
            capacity::BACKENDS,
        ),
        MapDef::lru(
            FLOWS4,
            size_of::<Flow4>(),
            size_of::<Flow4Nat>(),
            capacity::FLOWS,
        ),
        MapDef::lru(
            FLOWS6,
            size_of::<Flow6>(),
            size_of::<Flow6Nat>(),
            capacity::FLOWS,
        ),
        MapDef::lpm_trie(
            SOURCE_RANGES4,
            size_of::<SourceRange4>(),
            1,
            capacity::SOURCE_RANGES,
        ),
        MapDef::lpm_trie(
            SOURCE_RANGES6,
            size_of::<SourceRange6>(),
            1,
            capacity::SOURCE_RANGES,
        ),
        MapDef::hash(
            INTERFACE_ADDRS,
            4,
            size_of::<InterfaceAddrs>(),
            capacity::INTERFACES,
        ),
        MapDef::array(EXTERNAL_CONFIG, size_of::<ExternalConfig>(), 1),
        MapDef::per_cpu_array(EXTERNAL_COUNTERS, 8, external_counter::COUNT),
        // Scratch space of one program run: nothing to keep, not pinned.
        MapDef::per_cpu_array(FIB_SCRATCH, FIB_LOOKUP_SIZE as usize, 1).unpinned(),
    ];

    /// The declaration of map `name`.
    pub fn def(name: &str) -> Option<&'static MapDef> {
        ALL.iter().find(|m| m.name == name)
    }
}

/// Program names (the functions in lb-ebpf) and how they attach.
pub mod programs {
    pub const CONNECT4: &str = "ferry_connect4";
    pub const CONNECT6: &str = "ferry_connect6";
    pub const SENDMSG4: &str = "ferry_sendmsg4";
    pub const SENDMSG6: &str = "ferry_sendmsg6";
    pub const RECVMSG4: &str = "ferry_recvmsg4";
    pub const RECVMSG6: &str = "ferry_recvmsg6";
    pub const GETPEERNAME4: &str = "ferry_getpeername4";
    pub const GETPEERNAME6: &str = "ferry_getpeername6";
    pub const POST_BIND4: &str = "ferry_post_bind4";
    pub const POST_BIND6: &str = "ferry_post_bind6";
    /// cgroup sock_release: gives a closing socket's socket table entry
    /// back (see [`super::Socket4`]).
    pub const SOCK_RELEASE: &str = "ferry_sock_release";
    /// tc ingress on the external interfaces: new flows to external
    /// frontends, their established packets, and replies from backends on
    /// other nodes.
    pub const EXTERNAL: &str = "ferry_external";
    /// tc ingress on every other interface of the node (pod-facing): only
    /// replies of translated flows from backends on this node.
    pub const REPLY: &str = "ferry_reply";
    /// XDP on the external interfaces, in front of [`EXTERNAL`]: the same
    /// translation for packets it can send out of another external
    /// interface.
    pub const EXTERNAL_XDP: &str = "ferry_external_xdp";

    /// The kernel program types the datapath uses, as the agent attaches
    /// them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum ProgramType {
        /// BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attached to the cgroup.
        CgroupSockAddr,
        /// BPF_PROG_TYPE_CGROUP_SOCK, attached to the cgroup.
        CgroupSock,
        /// BPF_PROG_TYPE_SCHED_CLS, attached to interfaces (tc).
        SchedClassifier,
        /// BPF_PROG_TYPE_XDP, attached to interfaces.
        Xdp,
    }

    impl ProgramType {
        /// Attached to the agent's cgroup (the socket datapath) rather
        /// than to interfaces (north-south).
        pub const fn is_cgroup(self) -> bool {
            matches!(self, Self::CgroupSockAddr | Self::CgroupSock)
        }
    }

    /// One program of the object.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ProgramDef {
        pub name: &'static str,
        pub program_type: ProgramType,
        /// The ELF section aya-ebpf puts it in, which names its attach
        /// point (`cgroup/connect4`, `classifier`, `xdp`).
        pub section: &'static str,
    }

    const fn def(
        name: &'static str,
        program_type: ProgramType,
        section: &'static str,
    ) -> ProgramDef {
        ProgramDef {
            name,
            program_type,
            section,
        }
    }

    /// Every program the object defines.
    /// In attach order: sock_release before the programs that give sockets
    /// socket table entries, so that no socket holds one unseen.
    pub const ALL: &[ProgramDef] = &[
        def(SOCK_RELEASE, ProgramType::CgroupSock, "cgroup/sock_release"),
        def(CONNECT4, ProgramType::CgroupSockAddr, "cgroup/connect4"),
        def(CONNECT6, ProgramType::CgroupSockAddr, "cgroup/connect6"),
        def(SENDMSG4, ProgramType::CgroupSockAddr, "cgroup/sendmsg4"),
        def(SENDMSG6, ProgramType::CgroupSockAddr, "cgroup/sendmsg6"),
        def(RECVMSG4, ProgramType::CgroupSockAddr, "cgroup/recvmsg4"),
        def(RECVMSG6, ProgramType::CgroupSockAddr, "cgroup/recvmsg6"),
        def(
            GETPEERNAME4,
            ProgramType::CgroupSockAddr,
            "cgroup/getpeername4",
        ),
        def(
            GETPEERNAME6,
            ProgramType::CgroupSockAddr,
            "cgroup/getpeername6",
        ),
        def(POST_BIND4, ProgramType::CgroupSock, "cgroup/post_bind4"),
        def(POST_BIND6, ProgramType::CgroupSock, "cgroup/post_bind6"),
        def(EXTERNAL, ProgramType::SchedClassifier, "classifier"),
        def(REPLY, ProgramType::SchedClassifier, "classifier"),
        def(EXTERNAL_XDP, ProgramType::Xdp, "xdp"),
    ];
}

/// Map creation flags (`map_flags`), shared so that the agent can tell a
/// pinned map created with other flags (by another Ferry version) and
/// recreate it.
pub mod map_flags {
    /// BPF_F_NO_PREALLOC: elements are allocated as they are added. The
    /// lookup maps use it: they then take kernel memory for what they hold,
    /// not for their capacity, and their elements sit densely in the
    /// kernel's direct map instead of scattered over a preallocated
    /// vmalloc area the size of the capacity.
    pub const LOOKUP: u32 = 1 << 0;
    /// BPF_F_NO_COMMON_LRU: each CPU keeps its own LRU lists, so an insert
    /// on the connect path never takes a map-wide lock (the table itself is
    /// still shared: every CPU sees every entry). LRU maps are always
    /// preallocated.
    pub const LRU: u32 = 1 << 1;
    /// Arrays are preallocated and take no flags.
    pub const ARRAY: u32 = 0;
    /// BPF_F_INNER_MAP (Linux 5.10, commit 4a8f87e60f6d): an inner array
    /// of a map of maps may have another capacity than the template the
    /// outer map was created with (the kernel then bounds-checks each
    /// lookup against the inner map's own capacity).
    pub const INNER_MAP: u32 = 1 << 12;
}

/// Default capacities. The agent may raise them at load time
/// (`EbpfLoader::set_max_entries`); these are what the object declares.
/// The Maglev hash of a north-south flow, the same on every node (the
/// agents compute the same tables) and the same in the kernel and in
/// `ferry explain --flow`: murmur3's mixing steps over the client's address
/// words, then its port, then the frontend port and protocol. Addresses
/// and ports as the packet carries them (network order, read natively).
pub mod maglev_hash {
    #[inline(always)]
    pub fn mix(h: u32, k: u32) -> u32 {
        let k = k
            .wrapping_mul(0xcc9e_2d51)
            .rotate_left(15)
            .wrapping_mul(0x1b87_3593);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }

    #[inline(always)]
    pub fn finish(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[inline(always)]
    pub fn addr4(addr: u32) -> u32 {
        mix(0, addr)
    }

    #[inline(always)]
    pub fn addr6(a: [u32; 4]) -> u32 {
        mix(mix(mix(mix(0, a[0]), a[1]), a[2]), a[3])
    }

    /// `addr_hash` from [`addr4`] or [`addr6`].
    #[inline(always)]
    pub fn flow(addr_hash: u32, sport: u16, dport: u16, proto: u8) -> u32 {
        finish(mix(
            mix(addr_hash, u32::from(sport)),
            (u32::from(dport) << 8) | u32::from(proto),
        ))
    }
}

pub mod capacity {
    /// Frontends per family (ClusterIP, NodePort × node addresses, ...).
    pub const FRONTENDS: u32 = 262_144;
    /// Backend sets (service ids); also the size of the counter array.
    pub const SERVICES: u32 = 131_072;
    /// Slots over all backend sets.
    pub const SLOTS: u32 = 1_048_576;
    /// Distinct backends (address, port, protocol) per family.
    pub const BACKENDS: u32 = 524_288;
    /// Frontends one socket remembers for reverse translation, per
    /// family (see [`super::SockPeers4`]).
    pub const SOCK_PEERS: usize = 4;
    /// Entries of the socket tables (`SOCKETS4`, `SOCKETS6`), per family:
    /// a power of two, since a socket's entry is its cookie masked by
    /// `SOCKETS - 1`. Live translated sockets beyond what the table can
    /// place (two cookies on one entry) go to socket-local storage.
    pub const SOCKETS: u32 = 1 << 18;
    /// Client/service pairs remembered for session affinity.
    pub const AFFINITY: u32 = 131_072;
    /// NodePort (port, protocol) pairs protected against host binds.
    pub const NODEPORT_BINDS: u32 = 65_536;
    /// The largest backend count one backend set may have.
    pub const MAX_BACKENDS_PER_SERVICE: u32 = 65_535;
    /// External frontends per family.
    pub const EXTERNAL_FRONTENDS: u32 = 262_144;
    /// Flow table entries per family (both directions of a flow count).
    pub const FLOWS: u32 = 524_288;
    /// Source range entries per family.
    pub const SOURCE_RANGES: u32 = 65_536;
    /// Interfaces whose addresses the agent lists for masquerading.
    pub const INTERFACES: u32 = 1024;
    /// Default Maglev table size: prime (Cilium's default; more than 100
    /// times the backends of any set keeps the spread within 1%).
    pub const MAGLEV_TABLE_SIZE: u32 = 16_381;
    /// The largest table size `--maglev-table-size` takes (prime; Cilium's
    /// largest too): sets of more than about 160 backends need a larger
    /// table than the default for a 1% spread.
    pub const MAGLEV_TABLE_SIZE_MAX: u32 = 131_071;
    /// Maglev tables `MAGLEV` can refer to: one per distinct list of
    /// external backends, plus one per set being changed (a changed set
    /// gets a fresh table before its frontends switch to it). Tables are
    /// created for the sets that exist (64 KiB each at the default size),
    /// so this bounds only the outer array (8 bytes per entry).
    pub const MAGLEV_TABLES: u32 = 65_536;
}

/// Key of `FRONTENDS4`: a Service frontend as the socket addresses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend4Key {
    /// IPv4 address: its four bytes (the bytes of `bpf_sock_addr.user_ip4`),
    /// so that `bpftool` prints them as the address's four numbers.
    pub addr: [u8; 4],
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Key of `FRONTENDS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend6Key {
    /// IPv6 address: its sixteen bytes (those of `user_ip6`).
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// What kind of Service frontend an entry is; informational for the datapath
/// (it is shown by `ferry services` and used for counters), stored in the low
/// bits of [`FrontendValue::flags`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp = 1,
    NodePort = 2,
    ExternalIp = 3,
    LoadBalancer = 4,
}

impl FrontendKind {
    pub const MASK: u16 = 0x0f;

    pub fn from_flags(flags: u16) -> Option<Self> {
        match flags & Self::MASK {
            1 => Some(Self::ClusterIp),
            2 => Some(Self::NodePort),
            3 => Some(Self::ExternalIp),
            4 => Some(Self::LoadBalancer),
            _ => None,
        }
    }
}

/// With `count == 0`: the Service has endpoints, none usable from this node
/// (kube-proxy DROPs). Without the flag a zero count means no endpoints at
/// all, and the connect is refused (kube-proxy REJECTs).
pub const FRONTEND_F_DROP: u16 = 1 << 4;
/// sessionAffinity ClientIP: reuse the client's previous backend while
/// `affinity_timeout_secs` has not passed since its last connect.
pub const FRONTEND_F_AFFINITY: u16 = 1 << 5;

/// Value of `FRONTENDS4/6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FrontendValue {
    /// The backend set this frontend serves from: key of `SLOTS` and index
    /// of `COUNTERS`. Frontends of one service port with the same endpoint
    /// selection share a set.
    pub service_id: u32,
    /// Usable backends, in slots `1..=count`.
    pub count: u16,
    /// [`FrontendKind`] in the low bits, `FRONTEND_F_*` above them.
    pub flags: u16,
    /// sessionAffinityConfig.clientIP.timeoutSeconds.
    pub affinity_timeout_secs: u32,
    pub _pad: u32,
}

/// Key of `SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    /// 1-based; slot 0 is never used.
    pub slot: u32,
}

/// Value of `SLOTS`: the backend a slot holds, with everything a connect
/// needs, so that the forward path reads no third map. A backend id's
/// content never changes (a changed backend gets a new id), so the slot's
/// copy and `BACKENDS4/6` always agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Key of `BACKENDS4/6`; sessionAffinity compares it.
    pub backend_id: u32,
    /// IPv6 address, or an IPv4 address as `::ffff:a.b.c.d` (its bytes in
    /// network order).
    pub addr: [u8; 16],
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
}

/// `::ffff:a.b.c.d`: how [`Slot::addr`] holds an IPv4 address.
#[inline(always)]
pub const fn addr4_mapped(a: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
    ]
}

/// The IPv4 address of a [`Slot::addr`] (its last four bytes).
#[inline(always)]
pub const fn addr4_of_mapped(a: &[u8; 16]) -> [u8; 4] {
    [a[12], a[13], a[14], a[15]]
}

/// The backend is serving but terminating (used only as a fallback).
pub const BACKEND_F_TERMINATING: u8 = 1 << 0;
/// The backend runs on this node.
pub const BACKEND_F_LOCAL: u8 = 1 << 1;

/// Value of `BACKENDS4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend4 {
    pub addr: [u8; 4],
    pub port: u16,
    pub proto: u8,
    /// `BACKEND_F_*`.
    pub flags: u8,
}

/// Value of `BACKENDS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Backend6 {
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// One translation a socket went through: the frontend it asked for and
/// the backend it was sent to, network byte order. Addresses are byte
/// arrays so that `bpftool map dump` prints them as their four numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeer4 {
    pub frontend_addr: [u8; 4],
    pub backend_addr: [u8; 4],
    pub frontend_port: u16,
    pub backend_port: u16,
    /// The backend set it was translated through. Checked against the
    /// frontend's current entry before use, so that a stale entry never
    /// rewrites an address; 0: the entry is unused.
    pub service_id: u32,
}

/// Value of `SOCK_PEERS4` (socket-local storage): what the socket table
/// (`SOCKETS4`, see [`Socket4`]) cannot hold. An unconnected UDP socket
/// that sends to several frontends keeps its first in the table and up to
/// `capacity::SOCK_PEERS` more here; past that each new frontend replaces
/// the entry written longest ago (`next` goes round), and replies from that
/// entry's backend then show the backend's address. A socket whose table
/// entry another live socket holds keeps its translations here alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeers4 {
    pub peers: [SockPeer4; capacity::SOCK_PEERS],
    /// Entry the next new frontend is written to.
    pub next: u32,
    pub _pad: u32,
}

/// [`SockPeer4`] for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeer6 {
    pub frontend_addr: [u8; 16],
    pub backend_addr: [u8; 16],
    pub frontend_port: u16,
    pub backend_port: u16,
    pub service_id: u32,
}

/// Value of `SOCK_PEERS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockPeers6 {
    pub peers: [SockPeer6; capacity::SOCK_PEERS],
    pub next: u32,
    pub _pad: u32,
}

/// Value of `SOCKETS4`, the socket table: entry `cookie & (SOCKETS - 1)`
/// holds the translation of the live socket with that cookie (0: free).
/// Claimed by compare-and-swap at the socket's first translation and freed
/// by `ferry_sock_release` when the socket goes, so an entry never outlives
/// its socket and never serves another one. This is the fast path; socket-
/// local storage (`SOCK_PEERS4`) holds what the table cannot: a second
/// frontend of an unconnected UDP socket, or a socket whose entry another
/// live socket holds. Creating socket-local storage allocates (two
/// kmallocs, charged to the map's memory cgroup), which costs a connect()
/// several times the whole rest of the translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Socket4 {
    pub cookie: u64,
    pub peer: SockPeer4,
}

/// [`Socket4`] for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Socket6 {
    pub cookie: u64,
    pub peer: SockPeer6,
}

/// Key of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// The client's network namespace cookie: at the socket layer a pod is
    /// its network namespace.
    pub netns_cookie: u64,
    pub service_id: u32,
    pub _pad: u32,
}

/// Value of `AFFINITY`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend_id: u32,
    /// The slot the backend had when chosen: the affinity holds only while
    /// that slot is still within the count and still holds this backend.
    pub slot: u32,
    /// `bpf_ktime_get_ns()` of the last connect that used it.
    pub last_used_ns: u64,
}

/// Value of `COUNTERS` (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceCounters {
    /// Connects and datagrams sent to a backend.
    pub translated: u64,
    /// Connects and datagrams refused (no backend, or undefined port).
    pub refused: u64,
}

/// Key of `NODEPORT_BINDS`: a NodePort that host-namespace binds may not take.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodePortKey {
    /// Host byte order, as `bpf_sock.src_port` reports it.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Length of a `SERVICE_NAMES` value: a backend set's name
/// ("namespace/name:port/PROTO[/v6][/local]"), which fits: namespace and
/// name are at most 63 bytes each and a port name 15.
pub const SERVICE_NAME_LEN: usize = 192;

/// Value of `SERVICE_NAMES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceName {
    pub len: u32,
    pub bytes: [u8; SERVICE_NAME_LEN],
}

impl Default for ServiceName {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; SERVICE_NAME_LEN],
        }
    }
}

/// Index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Network namespace cookie of the node's own (host) namespace: binds in
    /// it may not take a NodePort. 0 disables the protection.
    pub host_netns_cookie: u64,
}

/// externalTrafficPolicy Cluster: the packet is masqueraded to the node's
/// address on the interface it leaves by (kube-proxy MASQUERADEs).
pub const EXTERNAL_F_SNAT: u16 = 1 << 8;
/// loadBalancerSourceRanges: the source must match `SOURCE_RANGES4/6`.
pub const EXTERNAL_F_SOURCE_RANGES: u16 = 1 << 9;

/// Value of `EXT_FRONTENDS4/6` (keys are [`Frontend4Key`]/[`Frontend6Key`]):
/// a frontend as clients outside the node reach it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExternalFrontendValue {
    /// Maglev table: the index of the set's table in `MAGLEV`.
    pub table: u32,
    /// Backends in the set; 0: drop (no endpoint serves external traffic
    /// here).
    pub count: u16,
    /// [`FrontendKind`] in the low bits, `FRONTEND_F_DROP` and
    /// `EXTERNAL_F_*` above them.
    pub flags: u16,
}

/// Value of `EXT_BACKENDS`: a backend of north-south traffic, as the
/// entries of Maglev tables refer to it by id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalBackend {
    /// IPv4 in `addr[0]`, or IPv6 (network order words).
    pub addr: [u32; 4],
    /// Network order.
    pub port: u16,
    /// `BACKEND_F_*`.
    pub flags: u8,
    pub _pad: u8,
}

/// A flow as one packet direction carries it: key of `FLOWS4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow4 {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Two fields, not `[u8; 3]`: the eBPF side builds these on the
    /// stack for every packet, and LLVM turns a three-byte zero array into
    /// a call of a byte-loop `memset` (BPF has no such builtin), where a
    /// byte and a half-word are two stores.
    pub _pad0: u8,
    pub _pad1: u16,
}

/// Key of `FLOWS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// As in [`Flow4`].
    pub _pad0: u8,
    pub _pad1: u16,
}

/// The entry is the reply direction (backend → client) of its flow.
pub const FLOW_F_REPLY: u8 = 1 << 0;
/// A FIN or RST was seen: the entry expires soon.
pub const FLOW_F_CLOSING: u8 = 1 << 1;
/// The flow was masqueraded (eTP Cluster).
pub const FLOW_F_SNAT: u8 = 1 << 2;

/// Value of `FLOWS4`: the addresses and ports a packet of this direction is
/// rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow4Nat {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// `FLOW_F_*`.
    pub flags: u8,
    /// As in [`Flow4`].
    pub _pad0: u8,
    pub _pad1: u16,
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns()`, tick resolution) of
    /// the last packet, updated at most once a second.
    pub last_seen_ns: u64,
}

/// Value of `FLOWS6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flow6Nat {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// As in [`Flow4`].
    pub _pad0: u8,
    pub _pad1: u16,
    pub last_seen_ns: u64,
}

/// Data of an `SOURCE_RANGES4` key (an LPM trie: the prefix length covers
/// the frontend's 64 bits and then the range's own bits), all network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange4 {
    pub frontend_addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub source: u32,
}

/// Data of an `SOURCE_RANGES6` key (the frontend takes 160 bits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRange6 {
    pub frontend_addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub source: [u32; 4],
}

/// Bits of a source range key before the source address.
pub const SOURCE_RANGE4_FRONTEND_BITS: u32 = 64;
pub const SOURCE_RANGE6_FRONTEND_BITS: u32 = 160;

/// Value of `IFACE_ADDRS` (key: ifindex): the address a flow masqueraded out
/// of this interface takes. 0 / all zero: none of that family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InterfaceAddrs {
    pub addr4: u32,
    pub addr6: [u32; 4],
}

/// Index 0 of `EXT_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExternalConfig {
    /// The node's address per family, for masquerading out of an interface
    /// that has none of its own in `IFACE_ADDRS` (a pod-facing veth).
    pub snat4: u32,
    pub snat6: [u32; 4],
    /// Entries per Maglev table (prime); 0 until the agent configures it,
    /// and then nothing is translated.
    pub maglev_size: u32,
    /// Masquerade source ports, host order, inclusive. Keep them out of the
    /// node's ephemeral port range (`net.ipv4.ip_local_port_range`).
    pub snat_port_min: u16,
    pub snat_port_max: u16,
}

/// Indexes of `EXT_COUNTERS` (per-CPU u64).
pub mod external_counter {
    /// New flows translated to a backend.
    pub const NEW_FLOW: u32 = 0;
    /// Packets of known flows translated (both directions).
    pub const ESTABLISHED: u32 = 1;
    /// Dropped: the frontend has no backend for external traffic.
    pub const DROP_NO_BACKEND: u32 = 2;
    /// Dropped: the source is outside loadBalancerSourceRanges.
    pub const DROP_SOURCE_RANGE: u32 = 3;
    /// Dropped: no free masquerade port for the backend.
    pub const DROP_SNAT_PORTS: u32 = 4;
    /// IP fragments and packets with IPv4 options or IPv6 extension
    /// headers to a frontend address: passed untranslated.
    pub const UNTRANSLATED: u32 = 5;
    /// The flow table refused an insert.
    pub const FLOW_TABLE_FULL: u32 = 6;
    /// ICMP errors quoting a packet of a translated flow (fragmentation
    /// needed / packet too big, unreachable, time exceeded): translated
    /// like a packet of that flow.
    pub const ICMP_ERRORS: u32 = 7;
    /// Packets the XDP program translated and sent on itself (the rest of
    /// the translations above were tc's).
    pub const XDP_REDIRECTED: u32 = 8;
    pub const COUNT: u32 = 9;
    /// Names, in index order, for `ferry services` and metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "new_flows",
        "established_packets",
        "dropped_no_backend",
        "dropped_source_range",
        "dropped_snat_ports",
        "untranslated",
        "flow_table_full",
        "icmp_errors_translated",
        "xdp_redirected",
    ];
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ExternalFrontendValue>() == 8);
    assert!(size_of::<ExternalBackend>() == 20);
    assert!(size_of::<Flow4>() == 16);
    assert!(size_of::<Flow6>() == 40);
    assert!(size_of::<Flow4Nat>() == 24);
    assert!(size_of::<Flow6Nat>() == 48);
    assert!(size_of::<SourceRange4>() == 12);
    assert!(size_of::<SourceRange6>() == 36);
    assert!(size_of::<InterfaceAddrs>() == 20);
    assert!(size_of::<ExternalConfig>() == 28);
    assert!(size_of::<Frontend4Key>() == 8);
    assert!(size_of::<Frontend6Key>() == 20);
    assert!(size_of::<FrontendValue>() == 16);
    assert!(size_of::<SlotKey>() == 8);
    assert!(size_of::<Slot>() == 24);
    assert!(size_of::<Backend4>() == 8);
    assert!(size_of::<Backend6>() == 20);
    assert!(size_of::<SockPeer4>() == 16);
    assert!(size_of::<SockPeers4>() == 16 * capacity::SOCK_PEERS + 8);
    assert!(size_of::<SockPeer6>() == 40);
    assert!(size_of::<SockPeers6>() == 40 * capacity::SOCK_PEERS + 8);
    assert!(size_of::<Socket4>() == 24);
    assert!(size_of::<Socket6>() == 48);
    assert!(capacity::SOCKETS.is_power_of_two());
    assert!(size_of::<AffinityKey>() == 16);
    assert!(size_of::<AffinityValue>() == 16);
    assert!(size_of::<ServiceCounters>() == 16);
    assert!(size_of::<NodePortKey>() == 4);
    assert!(size_of::<ServiceName>() == 4 + SERVICE_NAME_LEN);
    assert!(size_of::<Config>() == 8);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain no pointers and have
    // their padding spelled out as fields, so every byte is initialised.
    unsafe impl aya::Pod for Frontend4Key {}
    unsafe impl aya::Pod for Frontend6Key {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Slot {}
    unsafe impl aya::Pod for Backend4 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for SockPeer4 {}
    unsafe impl aya::Pod for SockPeers4 {}
    unsafe impl aya::Pod for SockPeer6 {}
    unsafe impl aya::Pod for SockPeers6 {}
    unsafe impl aya::Pod for Socket4 {}
    unsafe impl aya::Pod for Socket6 {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for NodePortKey {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for ExternalFrontendValue {}
    unsafe impl aya::Pod for ExternalBackend {}
    unsafe impl aya::Pod for Flow4 {}
    unsafe impl aya::Pod for Flow6 {}
    unsafe impl aya::Pod for Flow4Nat {}
    unsafe impl aya::Pod for Flow6Nat {}
    unsafe impl aya::Pod for SourceRange4 {}
    unsafe impl aya::Pod for SourceRange6 {}
    unsafe impl aya::Pod for InterfaceAddrs {}
    unsafe impl aya::Pod for ExternalConfig {}
}
