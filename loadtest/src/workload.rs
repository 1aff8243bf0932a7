//! What to send: the workload description (flags or a YAML file), and the
//! key and operation generators.

use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Distribution, Zipf};
use serde::{Deserialize, Serialize};

/// The operation mix.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mix {
    /// GET only.
    Get,
    /// PUT only.
    Put,
    /// DELETE only.
    Delete,
    /// GET and PUT by `read_ratio`.
    Mixed,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    Uniform,
    Zipfian,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    /// Each connection sends its next request when the last one answered.
    Closed,
    /// Requests are sent on a fixed schedule (`rate`); latency counts from
    /// each request's intended send time.
    Open,
}

/// One operation kind, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Get,
    Put,
    Delete,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Get, Op::Put, Op::Delete];
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Put => "PUT",
            Op::Delete => "DELETE",
        }
    }
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A full workload. Every field has a default, so a YAML file names only
/// what it changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub mix: Mix,
    /// Fraction of GETs in `mixed` (0.0..=1.0).
    pub read_ratio: f64,
    pub mode: LoopMode,
    /// Requests per second over all connections (open loop).
    pub rate: u64,
    pub connections: usize,
    /// Client threads, each pinned to its own CPU.
    pub threads: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Stop after this many measured requests (0 = duration only).
    pub requests: u64,
    pub keys: u64,
    pub key_prefix: String,
    pub table: String,
    pub distribution: KeyDist,
    pub zipf_exponent: f64,
    pub doc_size: usize,
    /// PUT every key once before measuring.
    pub preload: bool,
    /// Send each key to the core that owns it (`GET /shards`; its own port
    /// with `server.shard_ports`): connection `i` serves core
    /// `i % shards` and draws only keys that core owns.
    pub shard_aware: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "custom".into(),
            mix: Mix::Get,
            read_ratio: 0.9,
            mode: LoopMode::Closed,
            rate: 10_000,
            connections: 64,
            threads: 1,
            pipeline: 1,
            duration_s: 10.0,
            warmup_s: 1.0,
            requests: 0,
            keys: 10_000,
            key_prefix: "k".into(),
            table: "bench".into(),
            distribution: KeyDist::Uniform,
            zipf_exponent: 0.99,
            doc_size: 1024,
            preload: true,
            shard_aware: false,
        }
    }
}

impl Workload {
    /// Problems with the values, each naming its field.
    pub fn validate(&self) -> Result<(), String> {
        let mut e = Vec::new();
        if !(0.0..=1.0).contains(&self.read_ratio) {
            e.push("read_ratio must be within 0.0..=1.0");
        }
        if self.connections == 0 {
            e.push("connections must be at least 1");
        }
        if self.threads == 0 {
            e.push("threads must be at least 1");
        }
        if self.connections < self.threads {
            e.push("connections must be at least threads");
        }
        if self.pipeline == 0 {
            e.push("pipeline must be at least 1");
        }
        if self.mode == LoopMode::Open && self.rate == 0 {
            e.push("rate must be positive in open loop");
        }
        if self.mode == LoopMode::Open && self.pipeline != 1 {
            e.push("pipeline applies to the closed loop only");
        }
        if self.keys == 0 {
            e.push("keys must be at least 1");
        }
        if self.duration_s <= 0.0 && self.requests == 0 {
            e.push("give a positive duration_s or requests");
        }
        if self.zipf_exponent <= 0.0 {
            e.push("zipf_exponent must be positive");
        }
        if self.doc_size < 16 {
            e.push("doc_size must be at least 16 bytes");
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }

    /// The JSON document stored by PUT: `doc_size` bytes exactly.
    pub fn document(&self) -> Vec<u8> {
        let head = br#"{"payload":""#;
        let tail = br#""}"#;
        let fill = self.doc_size.saturating_sub(head.len() + tail.len());
        let mut d = Vec::with_capacity(self.doc_size);
        d.extend_from_slice(head);
        d.extend(std::iter::repeat_n(b'x', fill));
        d.extend_from_slice(tail);
        d
    }
}

/// Draws keys and operations for one connection.
pub struct Generator {
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    keys: u64,
    mix: Mix,
    read_ratio: f64,
}

impl Generator {
    pub fn new(w: &Workload, seed: u64) -> Generator {
        use rand::SeedableRng;
        let zipf = match w.distribution {
            KeyDist::Zipfian => Zipf::new(w.keys, w.zipf_exponent).ok(),
            KeyDist::Uniform => None,
        };
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            zipf,
            keys: w.keys,
            mix: w.mix,
            read_ratio: w.read_ratio,
        }
    }

    pub fn key(&mut self) -> u64 {
        match &self.zipf {
            // Zipf draws 1..=n, most popular first; scatter ranks over the
            // keyspace so hot keys do not all sit on one shard by accident
            // of numbering.
            Some(z) => {
                let rank = z.sample(&mut self.rng) as u64 - 1;
                rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % self.keys
            }
            None => self.rng.gen_range(0..self.keys),
        }
    }

    pub fn op(&mut self) -> Op {
        match self.mix {
            Mix::Get => Op::Get,
            Mix::Put => Op::Put,
            Mix::Delete => Op::Delete,
            Mix::Mixed => {
                if self.rng.gen_bool(self.read_ratio) {
                    Op::Get
                } else {
                    Op::Put
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_the_requested_size_and_is_json() {
        let w = Workload {
            doc_size: 1024,
            ..Workload::default()
        };
        let d = w.document();
        assert_eq!(d.len(), 1024);
        let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
        assert!(v.is_object());
    }

    #[test]
    fn keys_stay_in_range_and_zipf_is_skewed() {
        let w = Workload {
            keys: 1000,
            distribution: KeyDist::Zipfian,
            ..Workload::default()
        };
        let mut g = Generator::new(&w, 1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            let k = g.key();
            assert!(k < 1000);
            counts[k as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // The hottest 1% of keys take far more than 1% of the draws.
        let top: u32 = counts[..10].iter().sum();
        assert!(top > 20_000, "top keys drew {top}");
    }

    #[test]
    fn mixed_ratio_is_respected() {
        let w = Workload {
            mix: Mix::Mixed,
            read_ratio: 0.8,
            ..Workload::default()
        };
        let mut g = Generator::new(&w, 7);
        let gets = (0..10_000).filter(|_| g.op() == Op::Get).count();
        assert!((7_500..8_500).contains(&gets), "{gets}");
    }

    #[test]
    fn yaml_workloads_parse_and_reject_typos() {
        let w: Workload =
            serde_yaml::from_str("mix: mixed\nread_ratio: 0.5\ndistribution: zipfian\n").unwrap();
        assert_eq!(w.mix, Mix::Mixed);
        assert!(serde_yaml::from_str::<Workload>("mixx: get\n").is_err());
        assert!(Workload {
            read_ratio: 2.0,
            ..Workload::default()
        }
        .validate()
        .is_err());
    }
}
