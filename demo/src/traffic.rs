//! The demo's client: series of requests sent from a thread inside the node
//! namespace. By then this process is in the demo cgroup, so Ferry's
//! programs see (and translate) its sockets. Every socket operation is
//! bounded (2 s) and the series stops early on Ctrl-C.

use std::fmt;
use std::net::SocketAddr;

use anyhow::Result;

use super::interrupt;
use super::report::Answer;
use sandbox::{Netns, tcp_request, udp_connected_request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        })
    }
}

/// Sends `count` requests to `target` from inside `ns`, one at a time (TCP:
/// a new connection each; UDP: a new connected socket each), calling
/// `each(index, answer)` as they come.
pub(crate) fn send(
    ns: &Netns,
    proto: Proto,
    target: SocketAddr,
    count: u32,
    mut each: impl FnMut(u32, &Answer) + Send,
) -> Result<Vec<Answer>> {
    let answers = ns.run(move || {
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            if interrupt::interrupted() {
                break;
            }
            let answer = match proto {
                Proto::Tcp => tcp_request(target),
                Proto::Udp => udp_connected_request(target),
            }
            .map_err(|e| e.to_string());
            each(i, &answer);
            out.push(answer);
        }
        out
    });
    interrupt::check()?;
    Ok(answers)
}
