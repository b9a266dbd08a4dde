//! The engine's own connections to Redis, to drop them and no others: a
//! Redis shared with other clients must not lose theirs. The engine's
//! sockets are the `socket:[inode]` links in `/proc/<pid>/fd`; their
//! addresses are in `/proc/<pid>/net/tcp` (and `tcp6`); Redis lists each
//! client's `addr`, the engine's side of the same connection.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fred::prelude::ClientLike;
use fred::types::{ClusterHash, CustomCommand};

/// Local addresses of the connections process `pid` holds to `redis`.
pub fn engine_sockets(pid: u32, redis: SocketAddr) -> Result<HashSet<SocketAddr>, String> {
    let dir = format!("/proc/{pid}/fd");
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok())
        {
            inodes.insert(inode);
        }
    }
    let mut out = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9)) else {
                continue;
            };
            let (Some(local), Some(remote), Ok(inode)) = (parse_addr(local), parse_addr(remote), inode.parse::<u64>())
            else {
                continue;
            };
            if inodes.contains(&inode) && same(remote, redis) {
                out.insert(local);
            }
        }
    }
    Ok(out)
}

/// `0100007F:1F90` (IPv4, the word in host order) or 32 hex digits (IPv6,
/// four words in host order), then the port.
fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The same endpoint, an IPv4-mapped IPv6 address included.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let plain = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && plain(a.ip()) == plain(b.ip())
}

/// Kills the Redis clients whose address is one of `addrs`; returns how many.
pub async fn kill(redis: &fred::prelude::Client, addrs: &HashSet<SocketAddr>) -> Result<usize, String> {
    let list: String = redis
        .custom(
            CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
            vec!["LIST", "TYPE", "normal"],
        )
        .await
        .map_err(|e| format!("CLIENT LIST: {e}"))?;
    let mut killed = 0;
    for line in list.lines() {
        let field = |name: &str| line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
        let (Some(id), Some(addr)) = (field("id"), field("addr")) else {
            continue;
        };
        let Ok(addr) = addr.parse::<SocketAddr>() else {
            continue;
        };
        if !addrs.iter().any(|a| same(*a, addr)) {
            continue;
        }
        // 0 when the client went away meanwhile.
        let n: i64 = redis
            .custom(
                CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
                vec!["KILL", "ID", id],
            )
            .await
            .map_err(|e| format!("CLIENT KILL ID {id}: {e}"))?;
        killed += n as usize;
    }
    Ok(killed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(parse_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:18EB"),
            Some("[::ffff:127.0.0.1]:6379".parse().unwrap())
        );
        assert!(same(
            "[::ffff:127.0.0.1]:6379".parse().unwrap(),
            "127.0.0.1:6379".parse().unwrap()
        ));
        assert_eq!(parse_addr("nonsense"), None);
    }

    #[test]
    fn finds_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let conn = std::net::TcpStream::connect(server).unwrap();
        let found = engine_sockets(std::process::id(), server).unwrap();
        assert!(found.contains(&conn.local_addr().unwrap()), "{found:?}");
    }
}
