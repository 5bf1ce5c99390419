//! The `convnet` command: parse arguments, run, print the error and exit non-zero on failure.
use clap::Parser;

fn main() {
    let cli = convnet::cli::Cli::parse();
    if let Err(e) = convnet::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(convnet::cli::exit_code(&e));
    }
}
