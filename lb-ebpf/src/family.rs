//! The two address families behind one interface, so that the forward and
//! reverse paths are written once.

use aya_ebpf::maps::{HashMap, LruHashMap};
use lb_common::{
    Backend4, Backend6, Frontend4Key, Frontend6Key, FrontendValue, SockRevNat4Key,
    SockRevNat4Value, SockRevNat6Key, SockRevNat6Value,
};

use crate::maps::{
    BACKENDS4, BACKENDS6, CLUSTER_IPS4, CLUSTER_IPS6, FRONTENDS4, FRONTENDS6, SOCK_REVNAT4,
    SOCK_REVNAT6,
};

pub trait Family {
    /// An address in network byte order, as the socket hooks present it.
    type Addr: Copy + PartialEq + 'static;
    type FrontendKey: 'static;
    type Backend: 'static;
    type RevKey: 'static;
    type RevValue: 'static;

    fn frontends() -> &'static HashMap<Self::FrontendKey, FrontendValue>;
    fn backends() -> &'static HashMap<u32, Self::Backend>;
    fn cluster_ips() -> &'static HashMap<Self::Addr, u32>;
    fn revnat() -> &'static LruHashMap<Self::RevKey, Self::RevValue>;

    fn frontend_key(addr: Self::Addr, port: u16, proto: u8) -> Self::FrontendKey;
    /// Address and port (network order) of a backend.
    fn backend_addr(backend: &Self::Backend) -> (Self::Addr, u16);
    fn rev_key(cookie: u64, addr: Self::Addr, port: u16) -> Self::RevKey;
    fn rev_value(addr: Self::Addr, port: u16, service_id: u32) -> Self::RevValue;
    /// (frontend address, frontend port, service id) of a reverse entry.
    fn rev_frontend(value: &Self::RevValue) -> (Self::Addr, u16, u32);
}

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Addr = u32;
    type FrontendKey = Frontend4Key;
    type Backend = Backend4;
    type RevKey = SockRevNat4Key;
    type RevValue = SockRevNat4Value;

    #[inline(always)]
    fn frontends() -> &'static HashMap<Frontend4Key, FrontendValue> {
        &FRONTENDS4
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend4> {
        &BACKENDS4
    }
    #[inline(always)]
    fn cluster_ips() -> &'static HashMap<u32, u32> {
        &CLUSTER_IPS4
    }
    #[inline(always)]
    fn revnat() -> &'static LruHashMap<SockRevNat4Key, SockRevNat4Value> {
        &SOCK_REVNAT4
    }
    #[inline(always)]
    fn frontend_key(addr: u32, port: u16, proto: u8) -> Frontend4Key {
        Frontend4Key {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn backend_addr(backend: &Backend4) -> (u32, u16) {
        (backend.addr, backend.port)
    }
    #[inline(always)]
    fn rev_key(cookie: u64, addr: u32, port: u16) -> SockRevNat4Key {
        SockRevNat4Key {
            cookie,
            addr,
            port,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn rev_value(addr: u32, port: u16, service_id: u32) -> SockRevNat4Value {
        SockRevNat4Value {
            addr,
            port,
            _pad: 0,
            service_id,
        }
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRevNat4Value) -> (u32, u16, u32) {
        (value.addr, value.port, value.service_id)
    }
}

impl Family for V6 {
    type Addr = [u32; 4];
    type FrontendKey = Frontend6Key;
    type Backend = Backend6;
    type RevKey = SockRevNat6Key;
    type RevValue = SockRevNat6Value;

    #[inline(always)]
    fn frontends() -> &'static HashMap<Frontend6Key, FrontendValue> {
        &FRONTENDS6
    }
    #[inline(always)]
    fn backends() -> &'static HashMap<u32, Backend6> {
        &BACKENDS6
    }
    #[inline(always)]
    fn cluster_ips() -> &'static HashMap<[u32; 4], u32> {
        &CLUSTER_IPS6
    }
    #[inline(always)]
    fn revnat() -> &'static LruHashMap<SockRevNat6Key, SockRevNat6Value> {
        &SOCK_REVNAT6
    }
    #[inline(always)]
    fn frontend_key(addr: [u32; 4], port: u16, proto: u8) -> Frontend6Key {
        Frontend6Key {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
    #[inline(always)]
    fn backend_addr(backend: &Backend6) -> ([u32; 4], u16) {
        (backend.addr, backend.port)
    }
    #[inline(always)]
    fn rev_key(cookie: u64, addr: [u32; 4], port: u16) -> SockRevNat6Key {
        SockRevNat6Key {
            cookie,
            addr,
            port,
            _pad: [0; 3],
        }
    }
    #[inline(always)]
    fn rev_value(addr: [u32; 4], port: u16, service_id: u32) -> SockRevNat6Value {
        SockRevNat6Value {
            addr,
            port,
            _pad: 0,
            service_id,
        }
    }
    #[inline(always)]
    fn rev_frontend(value: &SockRevNat6Value) -> ([u32; 4], u16, u32) {
        (value.addr, value.port, value.service_id)
    }
}
