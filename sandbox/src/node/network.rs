//! The node's pod network, faked on loopback. A pod gets an address in [`POD_CIDR`], as a CNI
//! plugin would give it, and that is what the API server, the EndpointSlices and every client
//! see. Its processes listen on a loopback address with the same host part: the node claims a
//! loopback /16 of its own (`10.244.a.b` -> `127.<n>.a.b`; Linux routes all of 127.0.0.0/8 to
//! `lo`), so pods never collide on a port, not even with the pods of another sandbox on the same
//! machine, and a client reaches a pod address through [`PodNetwork::local`]. Loopback addresses
//! cannot be pod endpoints themselves: the API server refuses them in EndpointSlices.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The pods' address range.
pub const POD_CIDR: &str = "10.244.0.0/16";

/// The node's own address in the pod network (its `InternalIP`).
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);

/// The address of the `index`th pod (from 2; 0 is the network, 1 the node).
pub fn pod_ip(index: u32) -> Option<Ipv4Addr> {
    let host = u16::try_from(index)
        .ok()
        .filter(|i| (2..u16::MAX).contains(i))?;
    let [hi, lo] = host.to_be_bytes();
    Some(Ipv4Addr::new(10, 244, hi, lo))
}

/// Hands out the pod network's addresses to every node of one sandbox, so that no two pods (or
/// nodes) of different nodes share one. A real cluster gives each node a podCIDR of its own; one
/// counter over the /16 gives the same guarantee without fixing the number of nodes in advance
/// (Karpenter adds them). Nodes that join take their `InternalIP` from it too, as on a cloud
/// network where nodes and pods share the subnet (AWS's VPC CNI). Addresses are not reused.
#[derive(Debug, Clone)]
pub struct PodIps(Arc<AtomicU32>);

impl Default for PodIps {
    fn default() -> Self {
        // 10.244.0.1 is the first node's ([`NODE_IP`]).
        Self(Arc::new(AtomicU32::new(2)))
    }
}

impl PodIps {
    /// The next free address; `None` once the /16 is used up.
    pub fn next(&self) -> Option<Ipv4Addr> {
        pod_ip(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// Where the pod network is served on this machine: `127.<octet>.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNetwork {
    octet: u8,
}

impl PodNetwork {
    /// The network served on `127.<octet>.0.0/16` (see [`LoopbackRange::claim`] for one that no
    /// other sandbox uses).
    pub fn on(octet: u8) -> Self {
        Self { octet }
    }

    /// The second octet of the loopback range.
    pub fn octet(self) -> u8 {
        self.octet
    }

    /// Where on this machine a pod address is served; `None` for an address outside
    /// [`POD_CIDR`].
    pub fn local(self, ip: IpAddr) -> Option<IpAddr> {
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                (a == 10 && b == 244).then(|| IpAddr::V4(Ipv4Addr::new(127, self.octet, c, d)))
            }
            IpAddr::V6(_) => None,
        }
    }

    /// [`PodNetwork::local`] of a pod address this node gave ([`pod_ip`]).
    pub fn local_v4(self, pod_ip: Ipv4Addr) -> IpAddr {
        let [_, _, c, d] = pod_ip.octets();
        IpAddr::V4(Ipv4Addr::new(127, self.octet, c, d))
    }

    /// [`PodNetwork::local`] of a socket address, same port.
    pub fn local_socket(self, addr: SocketAddr) -> Option<SocketAddr> {
        self.local(addr.ip())
            .map(|ip| SocketAddr::new(ip, addr.port()))
    }
}

/// A loopback /16 claimed for one node: an exclusive lock on a file named after it in the
/// temporary folder, held until this is dropped (or the process dies: the kernel drops the
/// lock).
#[derive(Debug)]
pub struct LoopbackRange {
    network: PodNetwork,
    _lock: std::fs::File,
}

impl LoopbackRange {
    /// Claims the first free range of 127.244/16 .. 127.254/16, then 127.2/16 .. 127.243/16.
    pub fn claim() -> std::io::Result<Self> {
        for octet in (244..=254).chain(2..244) {
            if let Some(range) = Self::try_claim(octet)? {
                return Ok(range);
            }
        }
        Err(std::io::Error::other(
            "every loopback range 127.2/16 .. 127.254/16 is claimed by another sandbox",
        ))
    }

    /// Claims `127.<octet>.0.0/16` if no one holds it.
    fn try_claim(octet: u8) -> std::io::Result<Option<Self>> {
        let path = std::env::temp_dir().join(format!("surge-sandbox-loopback-127.{octet}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock(2) on a descriptor this function owns. Locks belong to the open file,
        // so a second claim in the same process conflicts too.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        Ok(locked.then(|| Self {
            network: PodNetwork::on(octet),
            _lock: file,
        }))
    }

    /// The network this range serves.
    pub fn network(&self) -> PodNetwork {
        self.network
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_unique_within_the_range_and_map_to_the_nodes_loopback_range() {
        assert_eq!(pod_ip(2), Some(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(pod_ip(258), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(pod_ip(1), None);
        assert_eq!(pod_ip(70_000), None);
        let ips = PodIps::default();
        let shared = ips.clone();
        assert_eq!(ips.next(), Some(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(shared.next(), Some(Ipv4Addr::new(10, 244, 0, 3)));
        let network = PodNetwork::on(245);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(
            network.local(ip),
            Some(IpAddr::V4(Ipv4Addr::new(127, 245, 1, 2)))
        );
        assert_eq!(network.local("10.96.0.1".parse().unwrap()), None);
        assert_eq!(
            network.local_socket("10.244.0.7:8080".parse().unwrap()),
            Some("127.245.0.7:8080".parse().unwrap())
        );
    }

    #[test]
    fn two_nodes_claim_different_ranges_and_a_dropped_claim_is_free_again() {
        let first = LoopbackRange::claim().unwrap();
        let second = LoopbackRange::claim().unwrap();
        assert_ne!(first.network(), second.network());
        let freed = first.network().octet();
        assert!(
            LoopbackRange::try_claim(freed).unwrap().is_none(),
            "claimed twice"
        );
        drop(first);
        assert!(
            LoopbackRange::try_claim(freed).unwrap().is_some(),
            "not freed"
        );
    }

    #[test]
    fn a_pods_loopback_address_can_be_bound_without_configuration() {
        let listener = std::net::TcpListener::bind("127.244.0.9:0").unwrap();
        assert_eq!(
            listener.local_addr().unwrap().ip(),
            IpAddr::V4(Ipv4Addr::new(127, 244, 0, 9))
        );
    }
}
