//! The shards of a training batch whose layers need the whole batch (BatchNorm): each shard
//! on its own thread, one at a time, handing over at every exchange of partial statistics.
use super::layers::Exchange;
use crate::dist::{gather_f64, Group};
use std::sync::{Arc, Condvar, Mutex};

/// Runs the local shards of a batch in turn and joins their exchanged values, in shard order
/// and then rank order (the ranks hold consecutive shards): every shard's values of the whole
/// batch in shard order, whatever the split between ranks.
///
/// Shard s runs until its next exchange, leaves its values, and hands over to shard s + 1;
/// the last shard joins every shard's values (and every rank's, through the group) and hands
/// back to shard 0. One shard runs at a time, its kernels parallel inside as a whole batch's
/// would be, so the thread count stays the pool's.
pub(crate) struct Relay {
    shards: usize,
    group: Option<Arc<dyn Group>>,
    state: Mutex<State>,
    turn_changed: Condvar,
}

struct State {
    turn: usize,
    slots: Vec<Vec<f64>>, // (shards): each shard's values at the current exchange
    joined: Arc<Vec<f64>>, // every shard's values of the last exchange, in shard order
}

impl Relay {
    pub(crate) fn new(shards: usize, group: Option<Arc<dyn Group>>) -> Arc<Relay> {
        Arc::new(Relay {
            shards,
            group,
            state: Mutex::new(State {
                turn: 0,
                slots: vec![Vec::new(); shards],
                joined: Arc::new(Vec::new()),
            }),
            turn_changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A shard that panicked poisons the lock; its panic is reported when the scope joins.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_turn<'a>(
        &self,
        mut st: std::sync::MutexGuard<'a, State>,
        shard: usize,
    ) -> std::sync::MutexGuard<'a, State> {
        while st.turn != shard {
            st = self
                .turn_changed
                .wait(st)
                .unwrap_or_else(|e| e.into_inner());
        }
        st
    }

    fn hand_over(&self, st: &mut State, shard: usize) {
        st.turn = (shard + 1) % self.shards;
        self.turn_changed.notify_all();
    }

    /// Runs `f` as shard `shard`: waits for its turn first, hands over when done.
    pub(crate) fn run<R>(&self, shard: usize, f: impl FnOnce() -> R) -> R {
        drop(self.wait_turn(self.lock(), shard));
        let r = f();
        let mut st = self.lock();
        self.hand_over(&mut st, shard);
        r
    }

    /// What a rank that holds no shard of the batch does instead: its part (nothing) of each
    /// of the step's `exchanges` with the other ranks.
    pub(crate) fn idle(group: &dyn Group, exchanges: usize) {
        for _ in 0..exchanges {
            gather_f64(group, &[]);
        }
    }
}

impl Exchange for Relay {
    fn gather(&self, shard: usize, mine: Vec<f64>) -> Arc<Vec<f64>> {
        let mut st = self.lock();
        debug_assert_eq!(st.turn, shard, "a shard exchanges only in its turn");
        st.slots[shard] = mine;
        if shard + 1 == self.shards {
            let local: Vec<f64> = st.slots.iter_mut().flat_map(std::mem::take).collect();
            st.joined = Arc::new(match &self.group {
                Some(g) => gather_f64(g.as_ref(), &local),
                None => local,
            });
        }
        self.hand_over(&mut st, shard);
        let st = self.wait_turn(st, shard);
        st.joined.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_take_turns_and_see_every_shards_values_in_order() {
        let relay = Relay::new(3, None);
        let log = Mutex::new(Vec::new());
        let seen: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .rev() // started in reverse: the turns, not the start, set the order
                .map(|shard| {
                    let (relay, log) = (&relay, &log);
                    s.spawn(move || {
                        relay.run(shard, || {
                            (0..2)
                                .map(|round| {
                                    log.lock().unwrap().push((round, shard));
                                    let v = vec![(10 * round + shard) as f64; shard + 1];
                                    relay.gather(shard, v).to_vec()
                                })
                                .collect()
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .rev()
                .map(|h| h.join().unwrap())
                .collect()
        });
        let want = |r: f64| vec![r, r + 1.0, r + 1.0, r + 2.0, r + 2.0, r + 2.0];
        for s in &seen {
            assert_eq!(s, &[want(0.0), want(10.0)]);
        }
        let log = log.into_inner().unwrap();
        assert_eq!(log, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    }
}
