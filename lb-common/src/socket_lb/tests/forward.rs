//! The forward path: verdicts, slot picks, counters, sessionAffinity.

use std::{collections::BTreeSet, vec, vec::Vec};

use super::{
    Fake, NETNS, NOW, SEC, TCP, affinity_key, backend4, backend4_addr, frontend, ip4, port,
};
use crate::{
    AffinityValue, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue,
    socket_lb::{ECONNREFUSED, EHOSTUNREACH, Inet4, Pick, SocketEnv, Verdict, forward},
};

fn vip() -> u32 {
    ip4(10, 96, 0, 1)
}

fn translate(backend_id: u32) -> Verdict<u32> {
    let (a, p) = backend4_addr(backend_id);
    Verdict::Translate(a, p)
}

/// Set 1's slots `1..=n` hold backends 11, 12, ...: a slot's number and
/// its backend's id differ, so a test sees which one the code used.
fn with_slots(env: &mut Fake<Inet4>, n: u32) {
    for slot in 1..=n {
        env.set_slot(1, slot, backend4(10 + slot));
    }
}

struct Case {
    name: &'static str,
    /// The `FRONTENDS4` entry of vip:80/TCP.
    frontend: Option<FrontendValue>,
    /// The `CLUSTER_IPS4` entry of vip.
    cluster_ip: Option<u32>,
    /// Set 1's slots 1..=slots hold backends 11, 12, ...
    slots: u32,
    random: u32,
    cookie: u64,
    pick: Pick,
    /// Counted as translated or refused on the frontend's set, or with
    /// no frontend on the ClusterIP's.
    want: Verdict<u32>,
}

fn case(name: &'static str, frontend: Option<FrontendValue>, want: Verdict<u32>) -> Case {
    Case {
        name,
        frontend,
        cluster_ip: None,
        slots: 3,
        random: 0,
        cookie: 1,
        pick: Pick::Random,
        want,
    }
}

#[test]
fn forward_verdicts() {
    let cases = vec![
        case("not a frontend nor a ClusterIP: pass", None, Verdict::Pass),
        Case {
            cluster_ip: Some(7),
            ..case(
                "a ClusterIP on a port its Service does not define: ECONNREFUSED",
                None,
                Verdict::Refuse(ECONNREFUSED),
            )
        },
        Case {
            cluster_ip: Some(1),
            ..case(
                "a frontend on a ClusterIP is translated, not refused",
                Some(frontend(1, 1, 0)),
                translate(11),
            )
        },
        case(
            "no endpoints (count 0): ECONNREFUSED",
            Some(frontend(1, 0, 0)),
            Verdict::Refuse(ECONNREFUSED),
        ),
        case(
            "endpoints, none usable here (count 0, FRONTEND_F_DROP): EHOSTUNREACH",
            Some(frontend(1, 0, FRONTEND_F_DROP)),
            Verdict::Refuse(EHOSTUNREACH),
        ),
        case(
            "FRONTEND_F_DROP with backends: translated",
            Some(frontend(1, 3, FRONTEND_F_DROP)),
            translate(11),
        ),
        Case {
            slots: 1,
            random: 1,
            ..case(
                "the count reaches a missing slot: ECONNREFUSED",
                Some(frontend(1, 2, 0)),
                Verdict::Refuse(ECONNREFUSED),
            )
        },
        Case {
            random: 0,
            ..case(
                "Random 0 of 3: slot 1",
                Some(frontend(1, 3, 0)),
                translate(11),
            )
        },
        Case {
            random: 7,
            ..case(
                "Random 7 of 3: slot 2",
                Some(frontend(1, 3, 0)),
                translate(12),
            )
        },
        Case {
            random: 5,
            ..case(
                "Random 5 of 3: slot 3",
                Some(frontend(1, 3, 0)),
                translate(13),
            )
        },
        Case {
            slots: 3,
            random: 3,
            ..case(
                "Random 3 of 2: slot 2, never the slot past the count",
                Some(frontend(1, 2, 0)),
                translate(12),
            )
        },
        Case {
            random: u32::MAX,
            ..case(
                "Random u32::MAX of 3: slot 1",
                Some(frontend(1, 3, 0)),
                translate(11),
            )
        },
        Case {
            random: 0,
            cookie: 2,
            ..case(
                "Random ignores the cookie",
                Some(frontend(1, 3, 0)),
                translate(11),
            )
        },
        // (cookie * 0x9E37_79B9_7F4A_7C15) >> 32: 0x9E37_79B9 for cookie
        // 1 (≡ 0 mod 3), 0x3C6E_F372 for cookie 2 (≡ 2 mod 3).
        Case {
            random: 1,
            cookie: 1,
            pick: Pick::SocketCookie,
            ..case(
                "SocketCookie: cookie 1 of 3 is slot 1, whatever the random number",
                Some(frontend(1, 3, 0)),
                translate(11),
            )
        },
        Case {
            random: 0,
            cookie: 2,
            pick: Pick::SocketCookie,
            ..case(
                "SocketCookie: cookie 2 of 3 is slot 3",
                Some(frontend(1, 3, 0)),
                translate(13),
            )
        },
    ];
    for c in cases {
        let mut env = Fake::<Inet4>::new();
        if let Some(fe) = c.frontend {
            env.set_frontend(vip(), port(80), TCP, fe);
        }
        if let Some(id) = c.cluster_ip {
            env.cluster_ips.push((vip(), id));
        }
        with_slots(&mut env, c.slots);
        env.random.set(c.random);
        env.on_socket(c.cookie);
        let got = forward(&env, vip(), port(80), TCP, c.pick);
        assert_eq!(got, c.want, "{}", c.name);
        let id = c
            .frontend
            .map_or(c.cluster_ip.unwrap_or(0), |fe| fe.service_id);
        let want_counts = match c.want {
            Verdict::Pass => None,
            Verdict::Translate(..) => Some((id, (1, 0))),
            Verdict::Refuse(_) => Some((id, (0, 1))),
        };
        let counters: Vec<_> = env.counters.borrow().clone().into_iter().collect();
        assert_eq!(
            counters,
            Vec::from_iter(want_counts),
            "{}: counters",
            c.name
        );
        // Only a translation is remembered.
        let remembered = env.table_entry(c.cookie).0 != 0;
        assert_eq!(
            remembered,
            matches!(c.want, Verdict::Translate(..)),
            "{}: socket table",
            c.name
        );
    }
}

#[test]
fn a_socket_cookie_pick_is_stable_per_socket_and_spreads_over_the_set() {
    let mut env = Fake::<Inet4>::new();
    env.set_frontend(vip(), port(53), super::UDP, frontend(1, 3, 0));
    with_slots(&mut env, 3);
    let mut seen = BTreeSet::new();
    for cookie in 1..=64 {
        env.on_socket(cookie);
        let picks: Vec<_> = (0..5)
            .map(|r| {
                env.random.set(r * 7 + 1);
                forward(&env, vip(), port(53), super::UDP, Pick::SocketCookie)
            })
            .collect();
        assert!(
            picks.iter().all(|p| *p == picks[0]),
            "cookie {cookie}: {picks:?}"
        );
        seen.insert(std::format!("{:?}", picks[0]));
    }
    assert_eq!(seen.len(), 3, "cookies 1..=64 reach every slot: {seen:?}");
}

/// sessionAffinity ClientIP with a 10 s timeout on set 1 (count 3, slots
/// 1..=3 → backends 11..=13; slot 0 and slot 4, past the count, hold
/// backends 10 and 14 so that only the bounds check refuses them).
fn affinity_env() -> Fake<Inet4> {
    let mut env = Fake::<Inet4>::new();
    env.set_frontend(
        vip(),
        port(80),
        TCP,
        FrontendValue {
            affinity_timeout_secs: 10,
            ..frontend(1, 3, FRONTEND_F_AFFINITY)
        },
    );
    with_slots(&mut env, 4);
    env.set_slot(1, 0, backend4(10));
    env
}

fn affinity(backend_id: u32, slot: u32, age_ns: u64) -> AffinityValue {
    AffinityValue {
        backend_id,
        slot,
        last_used_ns: NOW - age_ns,
    }
}

#[test]
fn session_affinity() {
    struct Case {
        name: &'static str,
        /// The client's entry before the connect.
        before: Option<AffinityValue>,
        random: u32,
        want_backend: u32,
        /// The client's entry after it.
        want_after: AffinityValue,
    }
    let cases = [
        Case {
            name: "no entry: picks and records backend, slot and time",
            before: None,
            random: 1,
            want_backend: 12,
            want_after: affinity(12, 2, 0),
        },
        Case {
            name: "a fresh entry keeps its backend and is touched",
            before: Some(affinity(13, 3, 5 * SEC)),
            random: 0,
            want_backend: 13,
            want_after: affinity(13, 3, 0),
        },
        Case {
            name: "an entry exactly the timeout old is still fresh",
            before: Some(affinity(13, 3, 10 * SEC)),
            random: 0,
            want_backend: 13,
            want_after: affinity(13, 3, 0),
        },
        Case {
            name: "an expired entry re-picks and records",
            before: Some(affinity(13, 3, 10 * SEC + 1)),
            random: 0,
            want_backend: 11,
            want_after: affinity(11, 1, 0),
        },
        Case {
            name: "an entry whose slot is past the count re-picks",
            before: Some(affinity(14, 4, SEC)),
            random: 0,
            want_backend: 11,
            want_after: affinity(11, 1, 0),
        },
        Case {
            name: "an entry whose slot now holds another backend re-picks",
            before: Some(affinity(99, 3, SEC)),
            random: 1,
            want_backend: 12,
            want_after: affinity(12, 2, 0),
        },
        Case {
            name: "an entry of slot 0 re-picks",
            before: Some(affinity(10, 0, SEC)),
            random: 2,
            want_backend: 13,
            want_after: affinity(13, 3, 0),
        },
    ];
    for c in cases {
        let env = affinity_env();
        if let Some(v) = c.before {
            env.affinity_insert(&affinity_key(NETNS, 1), &v);
        }
        env.random.set(c.random);
        let got = forward(&env, vip(), port(80), TCP, Pick::Random);
        assert_eq!(got, translate(c.want_backend), "{}", c.name);
        assert_eq!(env.affinity_of(1), Some(c.want_after), "{}: entry", c.name);
        assert_eq!(env.affinity.borrow().len(), 1, "{}: entries", c.name);
        assert_eq!(env.counts(1), (1, 0), "{}: counters", c.name);
    }
}

#[test]
fn affinity_is_per_client_network_namespace() {
    let env = affinity_env();
    let other = affinity(13, 3, SEC);
    env.affinity_insert(&affinity_key(NETNS + 1, 1), &other);
    env.random.set(0);
    assert_eq!(
        forward(&env, vip(), port(80), TCP, Pick::Random),
        translate(11)
    );
    assert_eq!(env.affinity_of(1), Some(affinity(11, 1, 0)));
    let entries = env.affinity.borrow();
    assert!(entries.contains(&(affinity_key(NETNS + 1, 1), other)));
}

#[test]
fn a_frontend_without_affinity_neither_reads_nor_writes_entries() {
    let mut env = affinity_env();
    env.set_frontend(vip(), port(80), TCP, frontend(1, 3, 0));
    let before = affinity(13, 3, SEC);
    env.affinity_insert(&affinity_key(NETNS, 1), &before);
    env.random.set(0);
    assert_eq!(
        forward(&env, vip(), port(80), TCP, Pick::Random),
        translate(11)
    );
    assert_eq!(env.affinity_of(1), Some(before));
}

#[test]
fn an_affinity_pick_of_a_missing_slot_refuses_and_records_nothing() {
    let mut env = affinity_env();
    env.slots.remove(&(1, 2));
    env.random.set(1);
    assert_eq!(
        forward(&env, vip(), port(80), TCP, Pick::Random),
        Verdict::Refuse(ECONNREFUSED)
    );
    assert_eq!(env.affinity_of(1), None);
    assert_eq!(env.counts(1), (0, 1));
}
