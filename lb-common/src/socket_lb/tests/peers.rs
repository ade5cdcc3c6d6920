//! What a translated socket remembers (socket table, storage), the reverse
//! path that reads it, and `forget`.

use super::{Fake, TABLE, TCP, UDP, backend4, backend4_addr, frontend, ip4, port};
use crate::{
    capacity,
    socket_lb::{Inet4, Inet6, Peer, Pick, Verdict, forget, forward, reverse},
};

/// Frontend `k` (1..=8): the ClusterIP 10.96.0.k:53, set k, whose one
/// backend is 10.1.0.(20 + k). Frontend `100 + k`: a NodePort of the same
/// set (node address 192.168.0.1:30000 + k), so the same backend.
fn frontend_addr(k: u32) -> (u32, u16) {
    if k > 100 {
        (ip4(192, 168, 0, 1), port(30_000 + k as u16))
    } else {
        (ip4(10, 96, 0, k as u8), port(53))
    }
}

fn set_of(k: u32) -> u32 {
    k % 100
}

/// The address of set `k`'s backend.
fn backend_of(k: u32) -> (u32, u16) {
    backend4_addr(20 + set_of(k))
}

fn env() -> Fake<Inet4> {
    let mut env = Fake::<Inet4>::new();
    for set in 1..=8 {
        for k in [set, 100 + set] {
            let (a, p) = frontend_addr(k);
            env.set_frontend(a, p, UDP, frontend(set, 1, 0));
        }
        env.set_slot(set, 1, backend4(20 + set));
    }
    env
}

/// What a socket remembers for frontend `k`.
fn peer(k: u32) -> Peer<u32> {
    let (frontend, frontend_port) = frontend_addr(k);
    let (backend, backend_port) = backend_of(k);
    Peer {
        frontend,
        frontend_port,
        backend,
        backend_port,
        service_id: set_of(k),
    }
}

/// The frontend number of a remembered entry (0: unused).
fn which(p: &Peer<u32>) -> u32 {
    if p.service_id == 0 {
        return 0;
    }
    let k = (1..=8)
        .flat_map(|set| [set, 100 + set])
        .find(|k| peer(*k) == *p);
    k.unwrap_or_else(|| panic!("not an entry of any frontend: {p:?}"))
}

#[derive(Clone, Copy)]
enum Step {
    /// Socket `cookie` connects or sends to frontends `k`, one after the
    /// other.
    Send(u64, &'static [u32], Pick),
    /// Socket `cookie` is released.
    Release(u64),
}
use Step::{Release, Send};

const R: Pick = Pick::Random;
const C: Pick = Pick::SocketCookie;
/// Collides with cookie 1 on one socket table entry.
const OTHER: u64 = 1 + TABLE as u64;

fn run(env: &Fake<Inet4>, steps: &[Step]) {
    for step in steps {
        match *step {
            Send(cookie, ks, pick) => {
                env.on_socket(cookie);
                for &k in ks {
                    let (a, p) = frontend_addr(k);
                    let (ba, bp) = backend_of(k);
                    assert_eq!(forward(env, a, p, UDP, pick), Verdict::Translate(ba, bp));
                }
            }
            Release(cookie) => forget(env, cookie),
        }
    }
}

#[test]
fn remember_and_forget() {
    struct Case {
        name: &'static str,
        steps: &'static [Step],
        /// The socket table entry of cookies 1 and OTHER: (owner, frontend
        /// number of its entry, 0: none).
        want_table: (u64, u32),
        /// Every socket's storage: (cookie, frontend numbers of its
        /// entries, next ring position).
        want_storage: &'static [(u64, [u32; capacity::SOCK_PEERS], u32)],
        /// Writes of entries and ring positions, all steps together.
        want_writes: u32,
    }
    let cases = [
        Case {
            name: "the first translation claims the table entry",
            steps: &[Send(1, &[1], R)],
            want_table: (1, 1),
            want_storage: &[],
            want_writes: 1,
        },
        Case {
            name: "a second socket on the same table entry falls back to its storage",
            steps: &[Send(1, &[1], R), Send(OTHER, &[2], R)],
            want_table: (1, 1),
            want_storage: &[(OTHER, [2, 0, 0, 0], 0)],
            want_writes: 2,
        },
        Case {
            name: "unconnected UDP: the first frontend in the table, the next ones in storage",
            steps: &[Send(1, &[1, 2, 3], C)],
            want_table: (1, 1),
            want_storage: &[(1, [2, 3, 0, 0], 0)],
            want_writes: 3,
        },
        Case {
            name: "storage holds SOCK_PEERS frontends, the next replaces the oldest",
            steps: &[Send(1, &[1, 2, 3, 4, 5, 6], C)],
            want_table: (1, 1),
            want_storage: &[(1, [6, 3, 4, 5], 1)],
            want_writes: 7,
        },
        Case {
            name: "and the one after that the next oldest",
            steps: &[Send(1, &[1, 2, 3, 4, 5, 6, 7], C)],
            want_table: (1, 1),
            want_storage: &[(1, [6, 7, 4, 5], 2)],
            want_writes: 9,
        },
        Case {
            name: "a frontend already in full storage is not written again",
            steps: &[Send(1, &[1, 2, 3, 4, 5, 3, 1], C)],
            want_table: (1, 1),
            want_storage: &[(1, [2, 3, 4, 5], 0)],
            want_writes: 5,
        },
        Case {
            name: "same backend, another frontend: the table entry is overwritten in place",
            steps: &[Send(1, &[1, 101], C)],
            want_table: (1, 101),
            want_storage: &[],
            want_writes: 2,
        },
        Case {
            name: "same backend, another frontend: the storage entry is overwritten in place",
            steps: &[Send(1, &[1, 2, 3, 102], C)],
            want_table: (1, 1),
            want_storage: &[(1, [102, 3, 0, 0], 0)],
            want_writes: 4,
        },
        Case {
            name: "the same translation twice writes nothing (table)",
            steps: &[Send(1, &[1, 1], R)],
            want_table: (1, 1),
            want_storage: &[],
            want_writes: 1,
        },
        Case {
            name: "the same translation twice writes nothing (storage)",
            steps: &[Send(1, &[1, 2, 2], C)],
            want_table: (1, 1),
            want_storage: &[(1, [2, 0, 0, 0], 0)],
            want_writes: 2,
        },
        Case {
            name: "a reconnect to another backend overwrites the socket's table entry",
            steps: &[Send(1, &[1, 2], R)],
            want_table: (1, 2),
            want_storage: &[],
            want_writes: 2,
        },
        Case {
            name: "forget clears the entry and frees it: the next socket claims it",
            steps: &[Send(1, &[1], R), Release(1), Send(OTHER, &[2], R)],
            want_table: (OTHER, 2),
            want_storage: &[],
            want_writes: 3,
        },
        Case {
            name: "forget clears the service id of the entry it frees",
            steps: &[Send(1, &[1], R), Release(1)],
            want_table: (0, 0),
            want_storage: &[],
            want_writes: 2,
        },
        Case {
            name: "forget of another socket on the same entry leaves it alone",
            steps: &[Send(1, &[1], R), Release(OTHER)],
            want_table: (1, 1),
            want_storage: &[],
            want_writes: 1,
        },
    ];
    for c in cases {
        let env = env();
        run(&env, c.steps);
        let (owner, entry) = env.table_entry(1);
        assert_eq!((owner, which(&entry)), c.want_table, "{}: table", c.name);
        let mut storage: std::vec::Vec<_> = env
            .storage
            .borrow()
            .iter()
            .map(|(cookie, s)| (*cookie, s.peers.map(|p| which(&p)), s.next))
            .collect();
        storage.sort_unstable();
        assert_eq!(storage, c.want_storage, "{}: storage", c.name);
        assert_eq!(env.writes.get(), c.want_writes, "{}: writes", c.name);
    }
}

#[test]
fn reverse_path() {
    struct Case {
        name: &'static str,
        steps: &'static [Step],
        /// What changes in the maps afterwards.
        change: fn(&mut Fake<Inet4>),
        /// The socket that receives, and from which backend (of frontend k's
        /// set) and protocol.
        ask: (u64, (u32, u16), u8),
        /// The frontend number it is shown, if any.
        want: Option<u32>,
    }
    fn nothing(_: &mut Fake<Inet4>) {}
    let cases = [
        Case {
            name: "the socket table entry",
            steps: &[Send(1, &[1], R)],
            change: nothing,
            ask: (1, backend_of(1), UDP),
            want: Some(1),
        },
        Case {
            name: "a storage entry",
            steps: &[Send(1, &[1, 2, 3], C)],
            change: nothing,
            ask: (1, backend_of(3), UDP),
            want: Some(3),
        },
        Case {
            name: "the storage entry of a socket whose table entry another holds",
            steps: &[Send(1, &[1], R), Send(OTHER, &[2], R)],
            change: nothing,
            ask: (OTHER, backend_of(2), UDP),
            want: Some(2),
        },
        Case {
            name: "another socket's table entry is not ours",
            steps: &[Send(1, &[1], R)],
            change: nothing,
            ask: (OTHER, backend_of(1), UDP),
            want: None,
        },
        Case {
            name: "an address no translation went to",
            steps: &[Send(1, &[1], R)],
            change: nothing,
            ask: (1, backend_of(2), UDP),
            want: None,
        },
        Case {
            name: "the backend's address on another port",
            steps: &[Send(1, &[1], R)],
            change: nothing,
            ask: (1, (backend_of(1).0, port(8081)), UDP),
            want: None,
        },
        Case {
            name: "another protocol: that frontend does not exist",
            steps: &[Send(1, &[1], R)],
            change: nothing,
            ask: (1, backend_of(1), TCP),
            want: None,
        },
        Case {
            name: "same backend through two frontends: the latest shows",
            steps: &[Send(1, &[1, 101], C)],
            change: nothing,
            ask: (1, backend_of(1), UDP),
            want: Some(101),
        },
        Case {
            name: "the frontend's set was renumbered (table)",
            steps: &[Send(1, &[1], R)],
            change: |env| {
                let (a, p) = frontend_addr(1);
                env.set_frontend(a, p, UDP, frontend(9, 1, 0));
            },
            ask: (1, backend_of(1), UDP),
            want: None,
        },
        Case {
            name: "the frontend's set was renumbered (storage)",
            steps: &[Send(1, &[1, 2], C)],
            change: |env| {
                let (a, p) = frontend_addr(2);
                env.set_frontend(a, p, UDP, frontend(9, 1, 0));
            },
            ask: (1, backend_of(2), UDP),
            want: None,
        },
        Case {
            name: "the frontend was removed",
            steps: &[Send(1, &[1], R)],
            change: |env| {
                let (a, p) = frontend_addr(1);
                env.remove_frontend(a, p, UDP);
            },
            ask: (1, backend_of(1), UDP),
            want: None,
        },
        Case {
            name: "a changed count does not matter",
            steps: &[Send(1, &[1], R)],
            change: |env| {
                let (a, p) = frontend_addr(1);
                env.set_frontend(a, p, UDP, frontend(1, 0, 0));
            },
            ask: (1, backend_of(1), UDP),
            want: Some(1),
        },
        Case {
            name: "after the socket's release",
            steps: &[Send(1, &[1], R), Release(1)],
            change: nothing,
            ask: (1, backend_of(1), UDP),
            want: None,
        },
    ];
    for c in cases {
        let mut env = env();
        run(&env, c.steps);
        (c.change)(&mut env);
        let (cookie, (addr, bport), proto) = c.ask;
        env.on_socket(cookie);
        let writes = env.writes.get();
        let got = reverse(&env, addr, bport, proto);
        assert_eq!(got, c.want.map(frontend_addr), "{}", c.name);
        assert_eq!(
            env.writes.get(),
            writes,
            "{}: the reverse path writes",
            c.name
        );
    }
}

#[test]
fn without_storage_a_further_frontend_is_not_remembered() {
    let mut env = env();
    env.out_of_memory = true;
    run(&env, &[Send(1, &[1, 2], C)]);
    assert_eq!(env.table_entry(1), (1, peer(1)));
    assert!(env.storage.borrow().is_empty());
    env.on_socket(1);
    assert_eq!(reverse(&env, backend_of(2).0, backend_of(2).1, UDP), None);
}

#[test]
fn ipv6_forward_and_reverse() {
    let w = |last: u32| [0xfd00_u32.to_be(), 0, 0, last.to_be()];
    let mut env = Fake::<Inet6>::new();
    env.set_frontend(w(0x10), port(443), TCP, frontend(3, 1, 0));
    let mut b = backend4(0);
    b.addr = crate::addr6_bytes(w(0x20));
    b.port = port(8443);
    env.set_slot(3, 1, b);
    assert_eq!(
        forward(&env, w(0x10), port(443), TCP, Pick::Random),
        Verdict::Translate(w(0x20), port(8443))
    );
    assert_eq!(
        reverse(&env, w(0x20), port(8443), TCP),
        Some((w(0x10), port(443)))
    );
    assert_eq!(reverse(&env, w(0x21), port(8443), TCP), None);
}
