//! Ranks as threads of one process: the same exchanges as MPI's, in memory. For tests of
//! the ranked paths without an MPI launcher, and to try a split of a run on one machine.
use super::Group;
use std::sync::{Arc, Condvar, Mutex};

/// One rank of [`ThreadRanks::new`]'s group.
pub struct ThreadRanks {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    round: Mutex<Round>,
    done: Condvar,
}

struct Round {
    generation: u64,
    sent: Vec<Option<Vec<Vec<u8>>>>, // (size, size): what each rank sends to each rank
    last: Arc<Vec<Vec<Vec<u8>>>>,    // the previous round's complete matrix
}

impl ThreadRanks {
    /// `size` ranks, one for each thread of the run.
    pub fn new(size: usize) -> Vec<ThreadRanks> {
        let shared = Arc::new(Shared {
            size,
            round: Mutex::new(Round {
                generation: 0,
                sent: vec![None; size],
                last: Arc::new(Vec::new()),
            }),
            done: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadRanks {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Sends `parts[q]` to rank q once every rank has arrived; returns what each sent here.
    fn round(&self, parts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let s = &self.shared;
        let mut r = s.round.lock().unwrap_or_else(|e| e.into_inner());
        let generation = r.generation;
        r.sent[self.rank] = Some(parts);
        if r.sent.iter().all(Option::is_some) {
            r.last = Arc::new(
                r.sent
                    .iter_mut()
                    .map(|p| p.take().unwrap_or_default())
                    .collect(),
            );
            r.generation += 1;
            s.done.notify_all();
        } else {
            while r.generation == generation {
                r = s.done.wait(r).unwrap_or_else(|e| e.into_inner());
            }
        }
        // No rank can finish the next round before this one has sent into it.
        r.last.iter().map(|from| from[self.rank].clone()).collect()
    }
}

impl Group for ThreadRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        self.round(vec![mine.to_vec(); self.shared.size])
    }
    fn all_to_all(&self, parts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        assert_eq!(parts.len(), self.shared.size, "one part per rank");
        self.round(parts)
    }
    fn shares_pool(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_deliver_in_rank_order_over_many_rounds() {
        let ranks = ThreadRanks::new(3);
        let got: Vec<Vec<Vec<Vec<u8>>>> = std::thread::scope(|s| {
            let hs: Vec<_> = ranks
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        (0..50u8)
                            .map(|i| {
                                let r = g.rank() as u8;
                                if i.is_multiple_of(2) {
                                    g.all_gather(&vec![r + i; r as usize])
                                } else {
                                    g.all_to_all((0..3).map(|q| vec![10 * r + q, i]).collect())
                                }
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (me, rounds) in got.iter().enumerate() {
            for (i, r) in rounds.iter().enumerate() {
                let i = i as u8;
                let want: Vec<Vec<u8>> = if i.is_multiple_of(2) {
                    (0..3u8).map(|q| vec![q + i; q as usize]).collect()
                } else {
                    (0..3u8).map(|q| vec![10 * q + me as u8, i]).collect()
                };
                assert_eq!(r, &want, "rank {me} round {i}");
            }
        }
    }
}
