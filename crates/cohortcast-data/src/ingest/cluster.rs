//! The ingest on an Apache DataFusion Ballista cluster.
//!
//! The ingest is one DataFusion plan; on a cluster the client plans it as
//! usual and Ballista's query planner sends it to the scheduler, which cuts
//! it into stages for the executors. The plan calls our scalar UDFs
//! (`cc_play`, `cc_reject_<input>`, `cc_song_key`) by name, so the
//! scheduler and every executor must know them: they run as
//! `cohortcast cluster scheduler` and `cohortcast cluster executor`, which
//! start Ballista's own scheduler and executor (the library entry points of
//! `ballista-scheduler` and `ballista-executor`) with our functions
//! registered and our S3 clients ([`Registry`]) in their runtime. A stock
//! Ballista cluster without them fails at planning with an unknown
//! function.
//!
//! Credentials never travel in the plan: each process reads S3 with its own
//! environment (`AWS_*`, profile) and `--s3-endpoint`.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::registry::FunctionRegistry;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use url::Url;

use super::udf::udfs;
use crate::error::{IoError, Result};
use crate::store::{S3Options, Stores};

/// Object stores of a process: `s3://bucket` through our [`Stores`]
/// (credentials from this process's environment), anything else as
/// DataFusion's default registry has it (local files).
#[derive(Debug)]
pub struct Registry {
    stores: Arc<Stores>,
    inner: DefaultObjectStoreRegistry,
}

impl Registry {
    /// A registry over `stores`.
    pub fn new(stores: Arc<Stores>) -> Registry {
        Registry { stores, inner: DefaultObjectStoreRegistry::new() }
    }
}

impl ObjectStoreRegistry for Registry {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        if matches!(url.scheme(), "s3" | "s3a") {
            let bucket = url.host_str().unwrap_or_default();
            return self.stores.bucket(bucket).map_err(|e| DataFusionError::External(Box::new(e)));
        }
        self.inner.get_store(url)
    }
}

/// A runtime whose object stores are a [`Registry`] over `stores`.
pub fn runtime(stores: Arc<Stores>) -> datafusion::error::Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(Registry::new(stores))).build_arc()
}

/// A session state with DataFusion's functions, ours ([`udfs`]) and our S3
/// clients: what the scheduler plans with and what the client starts from.
fn state(config: SessionConfig, stores: Arc<Stores>) -> datafusion::error::Result<SessionState> {
    let mut state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime(stores)?)
        .with_default_features()
        .build();
    for f in udfs() {
        state.register_udf(Arc::new(f))?;
    }
    Ok(state)
}

/// Ballista's default functions, DataFusion's array functions (the
/// metadata's artist lists are split with `string_to_array`) and ours.
fn function_registry() -> BallistaFunctionRegistry {
    let mut r = BallistaFunctionRegistry::default();
    for f in datafusion::functions_nested::all_default_nested_functions() {
        r.scalar_functions.insert(f.name().to_string(), f);
    }
    for f in udfs() {
        r.scalar_functions.insert(f.name().to_string(), Arc::new(f));
    }
    r
}

fn engine_error(what: &str, e: impl std::fmt::Display) -> IoError {
    IoError::engine(what, DataFusionError::Execution(e.to_string()))
}

/// Where a scheduler listens.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to bind, e.g. `127.0.0.1:50050`.
    pub bind: SocketAddr,
    /// The host name executors and clients use to reach it. Default: the
    /// bound IP.
    pub external_host: Option<String>,
    /// S3 access of the scheduler (it lists and plans the input files).
    pub s3: S3Options,
}

/// Runs a Ballista scheduler that knows our functions, until the process
/// is stopped.
pub fn run_scheduler(opts: &SchedulerOptions) -> Result<()> {
    use ballista_core::extension::SessionConfigExt;
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    use ballista_scheduler::scheduler_process::start_server;

    let stores = Arc::new(Stores::new(opts.s3.clone()));
    let host = opts.external_host.clone().unwrap_or_else(|| opts.bind.ip().to_string());
    let builder = move |config: SessionConfig| state(config, stores.clone());
    let config = SchedulerConfig::default()
        .with_hostname(host)
        .with_port(opts.bind.port())
        .with_override_config_producer(Arc::new(SessionConfig::new_with_ballista))
        .with_override_session_builder(Arc::new(builder));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()
        .map_err(|e| IoError::io("<tokio runtime>", e))?;
    rt.block_on(async {
        let cluster = BallistaCluster::new_from_config(&config)
            .await
            .map_err(|e| engine_error("starting the Ballista scheduler", e))?;
        start_server(cluster, opts.bind, Arc::new(config))
            .await
            .map_err(|e| engine_error(&format!("running the Ballista scheduler on {}", opts.bind), e))
    })
}

/// Where an executor listens and which scheduler it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `HOST:PORT`.
    pub scheduler: String,
    /// Host to bind.
    pub bind_host: String,
    /// The host name the scheduler and other executors use to reach it.
    /// Default: `bind_host`.
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle data and results).
    pub port: u16,
    /// gRPC port (tasks from the scheduler).
    pub grpc_port: u16,
    /// Tasks run at once. Default: the cores.
    pub concurrent_tasks: usize,
    /// Folder for shuffle files.
    pub work_dir: Option<String>,
    /// S3 access of the executor (it reads the input files).
    pub s3: S3Options,
}

/// Runs a Ballista executor that knows our functions and reads S3 with
/// this process's credentials, until the process is stopped.
pub fn run_executor(opts: &ExecutorOptions) -> Result<()> {
    use ballista_core::extension::SessionConfigExt;
    use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};

    let (host, port) = opts.scheduler.rsplit_once(':').ok_or_else(|| IoError::BadUrl {
        url: opts.scheduler.clone(),
        detail: "the scheduler must be given as HOST:PORT".into(),
    })?;
    let scheduler_port = port
        .parse()
        .map_err(|_| IoError::BadUrl { url: opts.scheduler.clone(), detail: format!("`{port}` is not a port") })?;
    let stores = Arc::new(Stores::new(opts.s3.clone()));
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.external_host.clone().unwrap_or_else(|| opts.bind_host.clone())),
        port: opts.port,
        grpc_port: opts.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port,
        vcores: opts.concurrent_tasks.max(1),
        work_dir: opts.work_dir.clone(),
        override_function_registry: Some(Arc::new(function_registry())),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| runtime(stores.clone()))),
        override_config_producer: Some(Arc::new(SessionConfig::new_with_ballista)),
        ..ExecutorProcessConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| IoError::io("<tokio runtime>", e))?;
    rt.block_on(async {
        start_executor_process(Arc::new(config))
            .await
            .map_err(|e| engine_error(&format!("running the Ballista executor for {}", opts.scheduler), e))
    })
}

/// A client session on the cluster at `url` (`ballista://HOST:PORT` or
/// `df://HOST:PORT`), with our functions and S3 clients, `partitions`
/// wide.
pub async fn client_session(
    url: &str,
    partitions: usize,
    stores: Arc<Stores>,
) -> Result<datafusion::prelude::SessionContext> {
    use ballista::prelude::SessionContextExt;
    use ballista_core::extension::SessionConfigExt;
    let rest = url.strip_prefix("ballista://").or_else(|| url.strip_prefix("df://")).ok_or_else(|| {
        IoError::BadUrl { url: url.into(), detail: "a cluster is given as ballista://HOST:PORT".into() }
    })?;
    // Ballista connects lazily, at the first query: say plainly when nobody
    // is there, before any work.
    let reach = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(rest)).await;
    if let Err(why) = reach.map_err(|_| "timed out after 10 s".to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        return Err(IoError::BadUrl {
            url: url.into(),
            detail: format!(
                "the Ballista scheduler at {rest} does not answer ({why}); start one with \
                 `cohortcast cluster scheduler` and at least one `cohortcast cluster executor`"
            ),
        });
    }
    let config =
        SessionConfig::new_with_ballista().with_target_partitions(partitions.max(1)).with_batch_size(16 * 1024);
    let state = state(config, stores).map_err(|e| IoError::engine("starting the ingest engine", e))?;
    let ctx = datafusion::prelude::SessionContext::remote_with_state(&format!("df://{rest}"), state)
        .await
        .map_err(|e| IoError::engine(format!("connecting to the Ballista scheduler at {rest}"), e))?;
    // Ballista's upgrade of the state to a remote one drops registered
    // functions: the client plans the SQL, so they go in again here.
    for f in udfs() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}
