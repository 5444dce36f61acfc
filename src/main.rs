//! `cohortcast`: behavioural cohorts for music-release notifications.
//!
//! `main` is only the error boundary: parse, run, print the error chain
//! once, map to an exit code (a closed pipe is success).

#![deny(unsafe_code)]

mod cli;

/// mimalloc (Leijen, Zorn & de Moura 2019), tuned in [`tune_allocator`].
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its `mimalloc.h`, version 2), which
/// `libmimalloc-sys` does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Large blocks on huge pages (transparent ones where none are reserved),
/// and freed memory kept for the next blocks instead of handed back: a run
/// allocates its big buffers stage after stage, and pages first touched
/// cost a fault each (BENCHMARKS.md, "Allocator"). `MIMALLOC_*` variables
/// set by the user win. The one `unsafe` block outside the core's
/// `kernels` module: `libmimalloc-sys` offers the options only as C.
#[allow(unsafe_code)]
fn tune_allocator() {
    use libmimalloc_sys::{mi_option_large_os_pages, mi_option_set};
    for (var, option, value) in [
        ("MIMALLOC_ALLOW_LARGE_OS_PAGES", mi_option_large_os_pages, 1),
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, -1),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: mi_option_set takes two plain values and only stores
            // the option; any value is valid for these two.
            unsafe { mi_option_set(option, value) };
        }
    }
}

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tune_allocator();
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
