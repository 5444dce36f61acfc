//! `cohortcast`: behavioural cohorts for music-release notifications.
//!
//! `main` is only the error boundary: parse, run, print the error chain
//! once, map to an exit code (a closed pipe is success).

#[cfg(target_os = "linux")]
mod alloc;
mod cli;

/// Large blocks on transparent huge pages (see `alloc`).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOC: alloc::HugePages = alloc::HugePages;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if err.chain().any(|e| {
                e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err}");
            // Engine errors repeat their sources in their own text: each
            // cause is printed once, where it adds something.
            let mut last = err.to_string();
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !last.contains(&text) {
                    eprintln!("  caused by: {text}");
                    last = text;
                }
            }
            ExitCode::from(2)
        }
    }
}
