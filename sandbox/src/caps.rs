//! Running Ferry with exactly a container's capabilities: the bounding,
//! permitted, effective, inheritable and ambient sets cut down to a list
//! (as `capabilities: {drop: [ALL], add: [...]}` leaves them) and
//! no_new_privs set (as `allowPrivilegeEscalation: false` does).

use std::path::Path;

use anyhow::{Context as _, Result, bail};

/// Capability names as Kubernetes spells them (no CAP_ prefix) and their
/// numbers (linux/capability.h).
pub const NAMES: &[(&str, u32)] = &[
    ("CHOWN", 0),
    ("DAC_OVERRIDE", 1),
    ("DAC_READ_SEARCH", 2),
    ("FOWNER", 3),
    ("FSETID", 4),
    ("KILL", 5),
    ("SETGID", 6),
    ("SETUID", 7),
    ("SETPCAP", 8),
    ("LINUX_IMMUTABLE", 9),
    ("NET_BIND_SERVICE", 10),
    ("NET_BROADCAST", 11),
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("IPC_LOCK", 14),
    ("IPC_OWNER", 15),
    ("SYS_MODULE", 16),
    ("SYS_RAWIO", 17),
    ("SYS_CHROOT", 18),
    ("SYS_PTRACE", 19),
    ("SYS_PACCT", 20),
    ("SYS_ADMIN", 21),
    ("SYS_BOOT", 22),
    ("SYS_NICE", 23),
    ("SYS_RESOURCE", 24),
    ("SYS_TIME", 25),
    ("SYS_TTY_CONFIG", 26),
    ("MKNOD", 27),
    ("LEASE", 28),
    ("AUDIT_WRITE", 29),
    ("AUDIT_CONTROL", 30),
    ("SETFCAP", 31),
    ("MAC_OVERRIDE", 32),
    ("MAC_ADMIN", 33),
    ("SYSLOG", 34),
    ("WAKE_ALARM", 35),
    ("BLOCK_SUSPEND", 36),
    ("AUDIT_READ", 37),
    ("PERFMON", 38),
    ("BPF", 39),
    ("CHECKPOINT_RESTORE", 40),
];

pub fn number(name: &str) -> Result<u32> {
    let bare = name.trim().trim_start_matches("CAP_").to_ascii_uppercase();
    NAMES
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, v)| *v)
        .with_context(|| format!("unknown capability {name:?}"))
}

/// The `capabilities.add` list of the one container of a manifest such as
/// deploy/daemonset.yaml (the `add: [A, B]` flow form it uses).
pub fn added_in(manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut found = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("add:"));
    let Some(list) = found.next() else {
        bail!("{}: no capabilities add: list", manifest.display());
    };
    if found.next().is_some() {
        bail!("{}: more than one add: list", manifest.display());
    }
    let list = list.trim();
    let inner = list
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .with_context(|| format!("{}: add: {list} is not [A, B, ...]", manifest.display()))?;
    Ok(inner
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .collect())
}

/// A bit mask of capability numbers.
pub fn mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// The CapEff line of /proc/PID/status, as a mask.
pub fn effective_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff line")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

fn own_permitted() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .context("no CapPrm line")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// Everything [`Restriction::apply`] needs, computed before the fork (the
/// child between fork and exec must not allocate).
#[derive(Clone, Copy, Debug)]
pub struct Restriction {
    keep: u64,
    last_cap: u32,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl Restriction {
    pub fn new(keep: &[u32]) -> Result<Self> {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .context("reading /proc/sys/kernel/cap_last_cap")?
            .trim()
            .parse()
            .context("parsing cap_last_cap")?;
        // capset cannot grant what this process lacks (root without
        // CAP_SYS_RESOURCE in some sandboxes): say which instead of EPERM.
        let own = own_permitted()?;
        let missing: Vec<&str> = NAMES
            .iter()
            .filter(|(_, n)| mask(keep) & !own & (1u64 << n) != 0)
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            bail!("this process lacks {missing:?}, so cannot pass them on");
        }
        Ok(Restriction {
            keep: mask(keep),
            last_cap,
        })
    }

    /// Applies the restriction to the calling process (call between fork
    /// and exec). The bounding set goes first: dropping from it needs
    /// CAP_SETPCAP, which the capset below takes away. For uid 0, exec
    /// then grants the bounding set (plus the inheritable set, emptied
    /// here): exactly the list.
    pub fn apply(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        for cap in 0..=self.last_cap {
            if self.keep & (1u64 << cap) == 0 {
                // SAFETY: plain prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) }
                    != 0
                {
                    return Err(err());
                }
            }
        }
        // SAFETY: as above.
        unsafe {
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(err());
            }
        }
        let half = |shift: u32| (self.keep >> shift) as u32;
        let data = [
            CapData {
                effective: half(0),
                permitted: half(0),
                inheritable: 0,
            },
            CapData {
                effective: half(32),
                permitted: half(32),
                inheritable: 0,
            },
        ];
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset reads the header and two data structs we own.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
            return Err(err());
        }
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_the_daemonsets_list() {
        assert_eq!(number("BPF").unwrap(), 39);
        assert_eq!(number("CAP_NET_ADMIN").unwrap(), 12);
        assert!(number("NOPE").is_err());
        let ds = crate::ferry::workspace_root().join("deploy/daemonset.yaml");
        let added = added_in(&ds).unwrap();
        assert!(added.iter().any(|c| c == "BPF"), "{added:?}");
        for c in &added {
            number(c).unwrap();
        }
        assert_eq!(mask(&[0, 39]), 1 | (1 << 39));
    }
}
