//! Small facts about the node's network: its addresses, and the cookie of a
//! network namespace.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
};

/// Every address of every interface in this network namespace, with the
/// interface's name.
pub fn interface_addresses() -> io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr of the family it names.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
                }
                _ => continue,
            }
        };
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        out.push((name, ip));
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Global unicast addresses of every interface in this network namespace
/// (loopback and link-local left out: NodePorts on loopback are added by
/// the model, and link-local ones are not node addresses).
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for (_, ip) in interface_addresses()? {
        let keep = match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        };
        if keep && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// SO_NETNS_COOKIE (Linux 5.14): the cookie of the namespace a socket
/// lives in, the same value bpf_get_netns_cookie gives the programs.
const SO_NETNS_COOKIE: libc::c_int = 71;

fn socket_netns_cookie() -> io::Result<u64> {
    // SAFETY: plain socket/getsockopt/close on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

/// Runs `f` inside the network namespace at `path` (e.g. /run/netns/NAME
/// or /proc/PID/ns/net), or right here when `path` is None. The namespace
/// is entered on a short-lived thread, so the caller's threads stay put;
/// sockets made by `f` keep living in that namespace.
pub fn in_netns<T: Send>(
    path: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(path) = path else {
        return f();
    };
    let file = fs::File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a namespace fd we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })
}

/// The cookie of the network namespace at `path`, or of our own.
pub fn netns_cookie(path: Option<&Path>) -> io::Result<u64> {
    in_netns(path, socket_netns_cookie)
}

/// This machine's host name, the default node name.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_netns_cookie_is_stable_and_nonzero() {
        let a = netns_cookie(None).unwrap();
        let b = netns_cookie(Some(Path::new("/proc/self/ns/net"))).unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, b);
    }

    #[test]
    fn host_addresses_exclude_loopback() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    }
}
