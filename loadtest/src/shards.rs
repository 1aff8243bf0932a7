//! `--shard-aware`: where each key goes. Reads the server's key → core
//! mapping (`GET /shards`), checks that it is the one this tool computes
//! (`themis-shardmap`) on a few keys, and gives each connection a core:
//! the connection talks to that core's own port and sends only keys the
//! core owns, so the server never forwards a request to another core.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The server's mapping, as `GET /shards` describes it.
#[derive(Debug, Clone)]
pub struct ShardMap {
    pub shards: usize,
    /// Each core's address: its own port, or the shared one when the
    /// server has no shard ports.
    pub addrs: Vec<SocketAddr>,
    pub own_ports: bool,
}

impl ShardMap {
    /// The core that owns `key` (the entity key's bytes, `table:pk`).
    #[inline]
    pub fn owner(&self, key: &[u8]) -> usize {
        themis_shardmap::owner_of(key, self.shards)
    }
}

fn get_json(addr: SocketAddr, path: &str) -> Result<serde_json::Value, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET {path}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {path}: malformed response"))?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        return Err(format!(
            "GET {path}: {status} (a server without /shards cannot be driven --shard-aware)"
        ));
    }
    serde_json::from_str(body).map_err(|e| format!("GET {path}: {e}"))
}

/// Reads and checks the mapping of the server at `addr`.
pub fn fetch(addr: SocketAddr, table: &str, prefix: &str) -> Result<ShardMap, String> {
    let v = get_json(addr, "/shards")?;
    let name = v["hash"]["name"].as_str().unwrap_or("");
    if name != themis_shardmap::HASH_NAME {
        return Err(format!(
            "the server maps keys with {name:?}; this tool computes {:?}",
            themis_shardmap::HASH_NAME
        ));
    }
    let shards = v["shards"]
        .as_u64()
        .filter(|n| *n >= 1)
        .ok_or("GET /shards: no shard count")? as usize;
    let cores = v["cores"].as_array().ok_or("GET /shards: no cores")?;
    if cores.len() != shards {
        return Err("GET /shards: cores do not match the shard count".into());
    }
    let ports: Vec<Option<u16>> = cores
        .iter()
        .map(|c| c["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        .collect();
    let own_ports = ports.iter().all(Option::is_some);
    let addrs = ports
        .iter()
        .map(|p| SocketAddr::new(addr.ip(), p.unwrap_or(addr.port())))
        .collect();
    let map = ShardMap {
        shards,
        addrs,
        own_ports,
    };
    // The server must agree with this tool on real keys of the workload.
    for i in [0u64, 1, 2, 7, 1000, 99_999] {
        let key = format!("{table}:{prefix}{i}");
        let enc: String = key
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let asked = get_json(addr, &format!("/shards?key={enc}"))?;
        let server = asked["key"]["owner"].as_u64();
        if server != Some(map.owner(key.as_bytes()) as u64) {
            return Err(format!(
                "key {key:?}: the server says core {server:?}, this tool computes {}",
                map.owner(key.as_bytes())
            ));
        }
    }
    Ok(map)
}
