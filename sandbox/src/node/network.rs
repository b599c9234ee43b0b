//! The node's pod network, faked on loopback. A pod gets an address in [`POD_CIDR`], as a CNI
//! plugin would give it, and that is what the API server, the EndpointSlices and every client
//! see. Its processes listen on the loopback address with the same host part
//! (`10.244.a.b` -> `127.244.a.b`: Linux routes all of 127.0.0.0/8 to `lo`), so pods never
//! collide on a port, and a client reaches a pod address through [`local`]. Loopback addresses
//! cannot be pod endpoints themselves: the API server refuses them in EndpointSlices.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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

/// Where on this machine a pod address is served; `None` for an address outside [`POD_CIDR`].
pub fn local(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            (a == 10 && b == 244).then(|| IpAddr::V4(Ipv4Addr::new(127, 244, c, d)))
        }
        IpAddr::V6(_) => None,
    }
}

/// [`local`] of a socket address, same port.
pub fn local_socket(addr: SocketAddr) -> Option<SocketAddr> {
    local(addr.ip()).map(|ip| SocketAddr::new(ip, addr.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_are_unique_within_the_range_and_map_to_loopback() {
        assert_eq!(pod_ip(2), Some(Ipv4Addr::new(10, 244, 0, 2)));
        assert_eq!(pod_ip(258), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(pod_ip(1), None);
        assert_eq!(pod_ip(70_000), None);
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(local(ip), Some(IpAddr::V4(Ipv4Addr::new(127, 244, 1, 2))));
        assert_eq!(local("10.96.0.1".parse().unwrap()), None);
        assert_eq!(
            local_socket("10.244.0.7:8080".parse().unwrap()),
            Some("127.244.0.7:8080".parse().unwrap())
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
