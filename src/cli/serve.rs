//! `cohortcast serve`: the HTTP API over a trained model.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use cohortcast_core::targeting::TargetingParams;
use cohortcast_server::{serve, AppState, Config, Limits, Served};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The model folder `train` (or `run`) wrote: OUT/model.
    #[arg(long)]
    model: PathBuf,
    /// The ingest folder of the same run (default: beside the model, OUT/ingest).
    #[arg(long)]
    ingest: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// File holding the bearer token for mutating requests (default: the
    /// COHORTCAST_TOKEN environment variable; with neither, they are refused).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Require the token for reads too.
    #[arg(long)]
    protect_reads: bool,
    /// Weight of each user's own listening share in the release score (as
    /// `run --history-weight`).
    #[arg(long, default_value_t = TargetingParams::default().history_weight)]
    history_weight: f32,
    /// Open connections at most; over it, a new connection replaces the
    /// one idle longest.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Seconds a connection may wait without a request (and a request's
    /// headers may take) before it is closed.
    #[arg(long, default_value_t = Limits::default().idle_timeout.as_secs_f64())]
    idle_timeout: f64,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("COHORTCAST_TOKEN").ok().map(|t| t.trim().to_string()),
    }
    .filter(|t| !t.is_empty());
    if token.as_ref().is_some_and(|t| t.len() < 16) {
        bail!("the token is shorter than 16 characters: use a long random one");
    }
    let targeting = TargetingParams { history_weight: a.history_weight };
    targeting.check()?;
    if a.max_connections == 0 || !(a.idle_timeout > 0.0 && a.idle_timeout <= 3600.0) {
        bail!("--max-connections must be at least 1 and --idle-timeout in (0, 3600] seconds");
    }
    let limits =
        Limits { max_connections: a.max_connections, idle_timeout: std::time::Duration::from_secs_f64(a.idle_timeout) };
    raise_file_limit(a.max_connections);
    let ingest_dir = a.ingest.clone().unwrap_or_else(|| a.model.with_file_name("ingest"));
    let model = Served::load(&a.model, &ingest_dir)
        .with_context(|| format!("loading {} and {}", a.model.display(), ingest_dir.display()))?;
    if token.is_none() {
        eprintln!("no token (COHORTCAST_TOKEN or --token-file): mutating requests will be refused");
    }
    let config = Config { token, protect_reads: a.protect_reads, model_dir: a.model, ingest_dir, targeting };
    let state = AppState::new(config, model);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("listening on {}", a.addr))?;
        eprintln!("serving on http://{}", listener.local_addr()?);
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve(listener, state, limits, stop).await.context("serving")
    })
}

/// Raises the soft limit on open files toward the hard one, so the
/// connection limit, not the descriptor limit, is what binds.
fn raise_file_limit(connections: usize) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let want = (connections as u64).saturating_add(256).min(hard);
            if soft < want {
                // Best effort: the connection limit still holds without it.
                let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = connections;
}
