//! The processes of one training run: ranks that exchange bytes in rank order. One process
//! alone is [`Solo`]; with the `mpi` feature, `mpi::World` is MPI's ranks; [`threads`] has
//! ranks as threads of one process.
//!
//! Every exchange is a collective: each rank calls the same ones in the same order. Sums are
//! never taken by the transport: ranks exchange partial results and add them in one fixed
//! order themselves, so a run is bit-identical whatever the number of ranks.
use crate::error::{Error, Result};

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod threads;

/// The ranks of a run.
pub trait Group: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// How many ranks the run has.
    fn size(&self) -> usize;
    /// Every rank's `mine`, in rank order.
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>>;
    /// `parts[q]` goes to rank q; returns what every rank sent to this one, in rank order.
    fn all_to_all(&self, parts: Vec<Vec<u8>>) -> Vec<Vec<u8>>;
    /// Whether the ranks are threads of this process, sharing its thread pool: a rank must
    /// then not wait for the others on one of the pool's workers.
    fn shares_pool(&self) -> bool {
        false
    }
}

/// One process alone: every exchange returns its own part.
pub struct Solo;

impl Group for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        vec![mine.to_vec()]
    }
    fn all_to_all(&self, parts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        parts
    }
}

/// The `k` items of a run (shards of a batch, say) that rank `rank` of `size` holds: ranks in
/// order hold consecutive items, rank 0 at least one, the last ranks none when items are fewer.
pub fn rank_items(k: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    let at = |r: usize| (r * k).div_ceil(size.max(1));
    at(rank)..at(rank + 1)
}

/// Little-endian bytes of f64s.
pub fn f64_bytes(v: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * v.len());
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    out
}

/// f64s from little-endian bytes.
pub fn bytes_f64(b: &[u8]) -> Vec<f64> {
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Little-endian bytes of f32s.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * v.len());
    put_f32(&mut out, v);
    out
}

/// Appends the little-endian bytes of f32s.
pub fn put_f32(out: &mut Vec<u8>, v: &[f32]) {
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// f32s from little-endian bytes.
pub fn bytes_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Every rank's f64s, concatenated in rank order.
pub fn gather_f64(g: &dyn Group, mine: &[f64]) -> Vec<f64> {
    g.all_gather(&f64_bytes(mine))
        .iter()
        .flat_map(|b| bytes_f64(b))
        .collect()
}

/// What a rank reports before a step that every rank must take together.
pub enum Status {
    Ready,
    /// The user asked to stop (Ctrl-C).
    Stop,
    /// This rank cannot go on.
    Failed(String),
}

/// Every rank's status, agreed: Ok(true) when all are ready, Ok(false) when one asked to stop
/// (and none failed), else the first failed rank's error, the same on every rank.
pub fn agree(g: &dyn Group, mine: Status) -> Result<bool> {
    let msg = match &mine {
        Status::Ready => vec![0],
        Status::Stop => vec![1],
        Status::Failed(m) => std::iter::once(2).chain(m.bytes()).collect(),
    };
    let all = g.all_gather(&msg);
    if let Some((rank, m)) = all.iter().enumerate().find(|(_, m)| m.first() == Some(&2)) {
        return Err(Error::Rank {
            rank,
            ranks: g.size(),
            message: String::from_utf8_lossy(&m[1..]).into_owned(),
        });
    }
    Ok(all.iter().all(|m| m.first() == Some(&0)))
}

/// `r` on every rank if every rank's `r` is Ok, else the first failed rank's error on all.
pub fn agree_on<T>(g: &dyn Group, r: Result<T>) -> Result<T> {
    match r {
        Ok(v) => agree(g, Status::Ready).map(|_| v),
        Err(e) => {
            agree(g, Status::Failed(e.to_string()))?;
            unreachable!("agree reports this rank's own failure")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_hold_consecutive_items_and_rank_0_always_some() {
        for k in 1..12 {
            for size in 1..10 {
                let parts: Vec<_> = (0..size).map(|r| rank_items(k, r, size)).collect();
                assert_eq!(parts[0].start, 0);
                assert!(!parts[0].is_empty(), "k {k} size {size}");
                assert_eq!(parts[size - 1].end, k);
                assert!(parts.windows(2).all(|w| w[0].end == w[1].start));
                let most = parts.iter().map(|p| p.len()).max().unwrap();
                assert_eq!(most, k.div_ceil(size));
            }
        }
    }

    #[test]
    fn bytes_round_trip_and_solo_agrees() {
        let v = [1.5, -0.0, f64::MAX, 1e-300];
        assert_eq!(bytes_f64(&f64_bytes(&v)), v);
        let w = [1.5f32, -0.0, f32::MIN_POSITIVE];
        assert_eq!(bytes_f32(&f32_bytes(&w)), w);
        assert_eq!(gather_f64(&Solo, &v), v);
        assert!(agree(&Solo, Status::Ready).unwrap());
        assert!(!agree(&Solo, Status::Stop).unwrap());
        let e = agree_on::<()>(&Solo, Err(Error::invalid("bad file"))).unwrap_err();
        assert_eq!(e.to_string(), "bad file (rank 0 of 1)");
    }
}
