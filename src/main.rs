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
    if let Err(e) = convnet::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(convnet::cli::exit_code(&e));
    }
}
