//! MPI's ranks as a [`Group`], through the `mpi` crate (rsmpi): `mpirun -np N convnet train`.
use super::Group;
use crate::error::{Error, Result};
use mpi::datatype::{Partition, PartitionMut};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// MPI's world communicator; MPI is finalised when it is dropped.
pub struct World {
    world: SimpleCommunicator,
    _universe: mpi::environment::Universe,
}

// SAFETY: MPI is initialised with at least MPI_THREAD_SERIALIZED, and convnet calls it from
// one thread at a time: the training thread, or while it waits for them, one shard thread
// at a time in turn (`nn::relay`).
unsafe impl Send for World {}
unsafe impl Sync for World {}

impl World {
    /// Initialises MPI (once per process).
    pub fn init() -> Result<World> {
        let (universe, level) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::invalid("MPI was initialised already"))?;
        if level < mpi::Threading::Serialized {
            return Err(Error::invalid(format!(
                "the MPI library offers {level:?} threading; convnet needs Serialized"
            )));
        }
        Ok(World {
            world: universe.world(),
            _universe: universe,
        })
    }

    /// Stops every rank of the run (MPI_Abort) with exit code `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// Offsets of consecutive parts of the given lengths.
fn displacements(counts: &[Count]) -> Vec<Count> {
    counts
        .iter()
        .scan(0, |at, &n| {
            let here = *at;
            *at += n;
            Some(here)
        })
        .collect()
}

/// A zeroed buffer of `n` bytes whose address is a real allocation even when `n` is 0: an
/// empty slice's placeholder address (1) is MPI_IN_PLACE to OpenMPI.
fn buffer(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n + 1];
    b.truncate(n);
    b
}

/// `bytes` in a [`buffer`].
fn copied(bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(bytes.len() + 1);
    b.extend_from_slice(bytes);
    b
}

fn count(n: usize) -> Count {
    Count::try_from(n).expect("an MPI message under 2 GiB")
}

/// The parts of `buf` at `counts`, as vectors.
fn split(buf: &[u8], counts: &[Count]) -> Vec<Vec<u8>> {
    let mut at = 0;
    counts
        .iter()
        .map(|&n| {
            let part = buf[at..at + n as usize].to_vec();
            at += n as usize;
            part
        })
        .collect()
}

impl Group for World {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_gather(&self, mine: &[u8]) -> Vec<Vec<u8>> {
        let mut counts = vec![0 as Count; self.size()];
        self.world
            .all_gather_into(&count(mine.len()), &mut counts[..]);
        let displs = displacements(&counts);
        let mine = copied(mine);
        let mut buf = buffer(counts.iter().map(|&n| n as usize).sum());
        {
            let mut parts = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(&mine[..], &mut parts);
        }
        split(&buf, &counts)
    }

    fn all_to_all(&self, parts: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let send_counts: Vec<Count> = parts.iter().map(|p| count(p.len())).collect();
        let mut recv_counts = vec![0 as Count; self.size()];
        self.world
            .all_to_all_into(&send_counts[..], &mut recv_counts[..]);
        let send = copied(&parts.concat());
        let send_displs = displacements(&send_counts);
        let recv_displs = displacements(&recv_counts);
        let mut buf = buffer(recv_counts.iter().map(|&n| n as usize).sum());
        {
            let out = Partition::new(&send[..], &send_counts[..], &send_displs[..]);
            let mut into = PartitionMut::new(&mut buf[..], &recv_counts[..], &recv_displs[..]);
            self.world.all_to_all_varcount_into(&out, &mut into);
        }
        split(&buf, &recv_counts)
    }
}
