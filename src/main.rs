//! The `convnet` command: parse arguments, run, print the error and exit non-zero on failure.
use clap::Parser;

fn main() {
    // Like other Unix tools, stop quietly when the reader of our output goes away
    // (`convnet eval ... | head`) instead of panicking on a failed print.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    convnet::alloc::keep_freed_memory();
    let cli = convnet::cli::Cli::parse();
    #[cfg(feature = "mpi")]
    let world = ranks::join(&cli);
    #[cfg(feature = "mpi")]
    let group = world
        .clone()
        .map(|w| w as std::sync::Arc<dyn convnet::dist::Group>);
    #[cfg(not(feature = "mpi"))]
    let group = None;
    if let Err(e) = convnet::cli::run(cli, group) {
        let code = convnet::cli::exit_code(&e);
        #[cfg(feature = "mpi")]
        if let Some(world) = world {
            ranks::fail(world, &e, code);
        }
        eprintln!("error: {e}");
        std::process::exit(code);
    }
}

/// `convnet train` as one rank of several under `mpirun`.
#[cfg(feature = "mpi")]
mod ranks {
    use convnet::dist::mpi::World;
    use convnet::dist::Group;
    use convnet::Error;
    use std::sync::Arc;

    /// MPI's world when this process is a `train` started by an MPI launcher (which sets
    /// these variables), else None: other commands, and a plain start, run alone. Ranks other
    /// than 0 print nothing on standard output (rank 0 reports for the run).
    pub fn join(cli: &convnet::cli::Cli) -> Option<Arc<World>> {
        let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        if !launched || !matches!(cli.command, convnet::cli::Command::Train(_)) {
            return None;
        }
        let world = match World::init() {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        if world.rank() != 0 {
            // SAFETY: replaces descriptor 1 by /dev/null before any thread writes to it.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if null >= 0 {
                    libc::dup2(null, 1);
                    libc::close(null);
                }
            }
        }
        Some(Arc::new(world))
    }

    /// Ends this rank after `e`. An error every rank reached together (agreed between them,
    /// or reached by the same computation) is printed by rank 0 alone and every rank leaves
    /// MPI in order; any other stops the whole run (MPI_Abort), so no rank waits forever.
    pub fn fail(world: Arc<World>, e: &Error, code: i32) -> ! {
        let together = matches!(
            e,
            Error::Rank { .. } | Error::Interrupted { .. } | Error::NonFinite { .. }
        );
        if world.rank() == 0 || !together {
            eprintln!("error: {e}");
        }
        if !together && world.size() > 1 {
            world.abort(code);
        }
        drop(world); // the last reference: MPI_Finalize
        std::process::exit(code);
    }
}
