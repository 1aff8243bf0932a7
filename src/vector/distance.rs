//! Distances: the three metrics, one kernel each, shared by the HNSW graph
//! (through [`GraphDistance`], hnsw_rs's `Distance` trait) and the exact
//! paths (filtered candidates, vectors not yet in the graph), so a distance
//! is the same number whichever path found the vector.
//!
//! * `l2`: the graph compares squared Euclidean distances (the same order,
//!   no square root per comparison); answers report the Euclidean distance.
//! * `cosine`: vectors are normalised once ([`Metric::prepare`]) when they
//!   enter the graph and for each query, so the distance is `1 - a·b`.
//! * `dot`: `1 - a·b` on the vectors as given. hnsw_rs needs distances that
//!   are never negative, which holds only for unit-length vectors; so `dot`
//!   refuses vectors whose length is not 1 (within [`UNIT_TOLERANCE`]):
//!   normalise them first, or use `cosine`.
//!
//! The kernels keep 32 (64 with AVX-512) independent lanes, so the
//! compiler turns them into several SIMD accumulators whose adds do not
//! wait on each other; on x86-64 an AVX-512 or AVX2+FMA copy is picked at
//! run time (one lane of eight made a 784-dimension distance wait on one
//! chain of 98 dependent adds, half hnswlib's speed).

use serde::{Deserialize, Serialize};

/// How far from 1 the length of a `dot` vector may be.
pub const UNIT_TOLERANCE: f32 = 1e-3;

/// A vector index's metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    L2,
    Cosine,
    Dot,
}

impl Metric {
    pub fn parse(s: &str) -> Option<Metric> {
        match s {
            "l2" => Some(Metric::L2),
            "cosine" => Some(Metric::Cosine),
            "dot" => Some(Metric::Dot),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::Cosine => "cosine",
            Metric::Dot => "dot",
        }
    }

    /// Checks a vector's length for this metric and brings it into the
    /// graph's form (cosine: normalised). `Err` says why it is refused.
    pub fn prepare(self, v: &mut [f32]) -> Result<(), String> {
        match self {
            Metric::L2 => Ok(()),
            Metric::Cosine => {
                let n = dot(v, v).sqrt();
                if !(n.is_finite() && n > 0.0) {
                    return Err(
                        "metric cosine cannot normalise this vector (a zero vector has no direction; components must not overflow)"
                            .into(),
                    );
                }
                v.iter_mut().for_each(|x| *x /= n);
                Ok(())
            }
            Metric::Dot => {
                let n = dot(v, v).sqrt();
                if (n - 1.0).abs() > UNIT_TOLERANCE {
                    return Err(format!(
                        "metric dot needs unit-length vectors (this one has length {n}); normalise it or use metric cosine"
                    ));
                }
                Ok(())
            }
        }
    }

    /// The graph's distance between two prepared vectors (never negative).
    #[inline]
    pub fn graph_distance(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::L2 => l2_squared(a, b),
            Metric::Cosine | Metric::Dot => (1.0 - dot(a, b)).max(0.0),
        }
    }

    /// The graph distance, or a number above `bound` (not the distance)
    /// when the distance is above it and the metric can tell early (L2:
    /// a sum of squares only grows). Not above `bound`: exactly
    /// [`Metric::graph_distance`].
    #[inline]
    pub fn graph_distance_above(self, a: &[f32], b: &[f32], bound: f32) -> f32 {
        match self {
            Metric::L2 => l2_squared_above(a, b, bound),
            Metric::Cosine | Metric::Dot => self.graph_distance(a, b),
        }
    }

    /// The distance an answer reports, from a graph distance.
    #[inline]
    pub fn reported(self, graph_distance: f32) -> f32 {
        match self {
            Metric::L2 => graph_distance.sqrt(),
            Metric::Cosine | Metric::Dot => graph_distance,
        }
    }
}

/// hnsw_rs's view of a metric.
#[derive(Debug, Clone, Copy)]
pub struct GraphDistance(pub Metric);

impl hnsw_rs::anndists::dist::Distance<f32> for GraphDistance {
    #[inline]
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        self.0.graph_distance(va, vb)
    }
}

macro_rules! kernels {
    ($dot:ident, $l2:ident, $wide:literal $(, #[$attr:meta])?) => {
        $(#[$attr])?
        unsafe fn $dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            let (a, b) = (&a[..n], &b[..n]);
            // `$wide` independent lanes: several SIMD accumulators, so the
            // adds do not wait on each other.
            let mut wide = [0.0f32; $wide];
            let (ca, cb) = (a.chunks_exact($wide), b.chunks_exact($wide));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for i in 0..$wide {
                    wide[i] += x[i] * y[i];
                }
            }
            let mut acc = [0.0f32; 8];
            for w in wide.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] += w[i];
                }
            }
            let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for i in 0..8 {
                    acc[i] += x[i] * y[i];
                }
            }
            let mut s = acc.iter().sum::<f32>();
            for (x, y) in ra.iter().zip(rb) {
                s += x * y;
            }
            s
        }

        /// `|a - b|²`, or some partial sum above `bound` as soon as one
        /// is (checked every [`CHECK_EVERY`] components): the squares are
        /// never negative, so the whole sum is above it too. The lanes add
        /// in the same order whatever `bound` is, so a sum not cut short is
        /// bit for bit the unbounded one.
        $(#[$attr])?
        unsafe fn $l2(a: &[f32], b: &[f32], bound: f32) -> f32 {
            let n = a.len().min(b.len());
            let (a, b) = (&a[..n], &b[..n]);
            let mut wide = [0.0f32; $wide];
            let (ca, cb) = (a.chunks_exact($wide), b.chunks_exact($wide));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (i, (x, y)) in ca.zip(cb).enumerate() {
                for i in 0..$wide {
                    let d = x[i] - y[i];
                    wide[i] += d * d;
                }
                if (i + 1) % (CHECK_EVERY / $wide) == 0 {
                    // Eight lanes first (a few SIMD adds), then eight
                    // scalar ones: summing the lanes one by one was a
                    // chain of `$wide` dependent adds per check.
                    let mut lanes = [0.0f32; 8];
                    for w in wide.chunks_exact(8) {
                        for i in 0..8 {
                            lanes[i] += w[i];
                        }
                    }
                    let partial = lanes.iter().sum::<f32>();
                    if partial > bound {
                        return partial;
                    }
                }
            }
            let mut acc = [0.0f32; 8];
            for w in wide.chunks_exact(8) {
                for i in 0..8 {
                    acc[i] += w[i];
                }
            }
            let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
            let (ra, rb) = (ca.remainder(), cb.remainder());
            for (x, y) in ca.zip(cb) {
                for i in 0..8 {
                    let d = x[i] - y[i];
                    acc[i] += d * d;
                }
            }
            let mut s = acc.iter().sum::<f32>();
            for (x, y) in ra.iter().zip(rb) {
                let d = x - y;
                s += d * d;
            }
            s
        }
    };
}

/// How often (in components) a bounded L2 distance checks its bound: a
/// multiple of every kernel's lane count.
const CHECK_EVERY: usize = 256;

kernels!(dot_portable, l2_portable, 32);
#[cfg(target_arch = "x86_64")]
kernels!(dot_avx2, l2_avx2, 32, #[target_feature(enable = "avx2,fma")]);
#[cfg(target_arch = "x86_64")]
kernels!(dot_avx512, l2_avx512, 64, #[target_feature(enable = "avx512f")]);

/// The widest kernel this CPU runs, found once.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, PartialEq)]
enum Simd {
    Avx512,
    Avx2,
    Portable,
}

#[cfg(target_arch = "x86_64")]
fn simd() -> Simd {
    use std::sync::OnceLock;
    static SIMD: OnceLock<Simd> = OnceLock::new();
    *SIMD.get_or_init(|| {
        if is_x86_feature_detected!("avx512f") {
            Simd::Avx512
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            Simd::Avx2
        } else {
            Simd::Portable
        }
    })
}

/// `a · b` (over the shorter length).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has AVX-512F (checked in `simd`).
        Simd::Avx512 => return unsafe { dot_avx512(a, b) },
        // SAFETY: the CPU has AVX2 and FMA (checked in `simd`).
        Simd::Avx2 => return unsafe { dot_avx2(a, b) },
        Simd::Portable => {}
    }
    // SAFETY: no target feature required.
    unsafe { dot_portable(a, b) }
}

/// `|a - b|²` (over the shorter length).
#[inline]
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    l2_squared_above(a, b, f32::INFINITY)
}

/// `|a - b|²`, or a number above `bound` (not the distance) as soon as
/// the distance is known to be above it (up to rounding: partial sums add
/// the same squares in another order): a search that would drop such a
/// point anyway stops reading its vector early. A result not above
/// `bound` is exactly [`l2_squared`]'s.
#[inline]
pub fn l2_squared_above(a: &[f32], b: &[f32], bound: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has AVX-512F (checked in `simd`).
        Simd::Avx512 => return unsafe { l2_avx512(a, b, bound) },
        // SAFETY: the CPU has AVX2 and FMA (checked in `simd`).
        Simd::Avx2 => return unsafe { l2_avx2(a, b, bound) },
        Simd::Portable => {}
    }
    // SAFETY: no target feature required.
    unsafe { l2_portable(a, b, bound) }
}

/// Stored form of a vector: its components as little-endian f32.
pub fn encode(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The vector a stored value holds (`None`: not a whole number of f32).
pub fn decode(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    fn naive_l2(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum()
    }

    proptest! {
        #[test]
        fn kernels_agree_with_the_definition(
            pairs in prop::collection::vec((-100.0f32..100.0, -100.0f32..100.0), 0..300)
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let tol = |x: f64| 1e-3 * (1.0 + x.abs());
            let d = naive_dot(&a, &b);
            prop_assert!((f64::from(dot(&a, &b)) - d).abs() <= tol(d) * 10.0);
            let l = naive_l2(&a, &b);
            prop_assert!((f64::from(l2_squared(&a, &b)) - l).abs() <= tol(l) * 10.0);
            // SAFETY: no target feature required.
            let p = unsafe { l2_portable(&a, &b, f32::INFINITY) };
            prop_assert!((f64::from(p) - l).abs() <= tol(l) * 10.0);
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: checked just above.
                let (x, y) = unsafe { (l2_avx2(&a, &b, f32::INFINITY), dot_avx2(&a, &b)) };
                prop_assert!((f64::from(x) - l).abs() <= tol(l) * 10.0);
                prop_assert!((f64::from(y) - d).abs() <= tol(d) * 10.0);
            }
        }

        #[test]
        fn bounded_l2_is_exact_below_its_bound(
            pairs in prop::collection::vec((-100.0f32..100.0, -100.0f32..100.0), 0..800),
            share in 0.0f32..1.5,
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let full = l2_squared(&a, &b);
            let bound = full * share;
            let r = l2_squared_above(&a, &b, bound);
            if r <= bound {
                prop_assert_eq!(r.to_bits(), full.to_bits());
            } else {
                prop_assert!(full >= bound * (1.0 - 1e-5), "{} {} {}", r, full, bound);
            }
            prop_assert_eq!(l2_squared_above(&a, &b, f32::INFINITY).to_bits(), full.to_bits());
            // SAFETY: no target feature required.
            let p = unsafe { l2_portable(&a, &b, bound) };
            // SAFETY: no target feature required.
            let unbounded = unsafe { l2_portable(&a, &b, f32::INFINITY) };
            prop_assert!(p > bound || p.to_bits() == unbounded.to_bits(), "portable {} {}", p, unbounded);
        }

        #[test]
        fn stored_vectors_round_trip(v in prop::collection::vec(any::<f32>(), 0..40)) {
            let back = decode(&encode(&v)).unwrap();
            prop_assert_eq!(back.len(), v.len());
            for (x, y) in v.iter().zip(&back) {
                prop_assert_eq!(x.to_bits(), y.to_bits());
            }
        }

        #[test]
        fn graph_distances_are_never_negative(
            a in prop::collection::vec(-10.0f32..10.0, 3),
            b in prop::collection::vec(-10.0f32..10.0, 3),
        ) {
            for m in [Metric::L2, Metric::Cosine] {
                let (mut a, mut b) = (a.clone(), b.clone());
                if m.prepare(&mut a).is_ok() && m.prepare(&mut b).is_ok() {
                    prop_assert!(m.graph_distance(&a, &b) >= 0.0);
                }
            }
        }
    }

    #[test]
    fn metrics_prepare_and_report() {
        let mut v = vec![3.0, 4.0];
        Metric::Cosine.prepare(&mut v).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(Metric::Cosine.prepare(&mut [0.0, 0.0]).is_err());
        assert!(Metric::Dot.prepare(&mut [3.0, 4.0]).is_err());
        assert!(Metric::Dot.prepare(&mut [0.6, 0.8]).is_ok());
        assert_eq!(
            Metric::L2.reported(Metric::L2.graph_distance(&[0.0, 0.0], &[3.0, 4.0])),
            5.0
        );
        let d = Metric::Dot.graph_distance(&[1.0, 0.0], &[0.0, 1.0]);
        assert_eq!(d, 1.0);
        assert_eq!(Metric::parse("l2"), Some(Metric::L2));
        assert_eq!(Metric::parse("L2"), None);
        assert!(decode(&[1, 2, 3]).is_none());
    }
}
