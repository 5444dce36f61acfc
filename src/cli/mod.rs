//! Command-line arguments, parsed into validated parameters in one place.

mod cluster;
mod evaluation;
mod outdir;
mod pipeline;
mod progress;
mod remote;
mod report;
mod serve;
mod synth;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cohortcast_core::als::{AlsParams, Solver};
use cohortcast_core::confidence::Weighting;
use cohortcast_core::grouping::{Grouping, GroupingParams};
use cohortcast_core::kmeans::{KMeansInit, KMeansParams};
use cohortcast_core::targeting::TargetingParams;
use cohortcast_data::ingest::IngestOptions;
use cohortcast_data::inputs::InputPaths;
use cohortcast_data::store::{block_on, is_s3, S3Url, Stores};
use remote::{LocalCopy, OutDir};

/// Behavioural cohorts for music-release notifications: learn taste from
/// plays (implicit ALS), group listeners into cohorts (k-means), push each
/// cohort the notification it is most likely to open, and measure the
/// click-through rate against baselines.
#[derive(Debug, Parser)]
#[command(name = "cohortcast", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    s3: remote::S3Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a dataset (default: ~50k users) and run the whole job on it,
    /// printing the CTR table against the baselines and the oracle.
    Demo(DemoArgs),
    /// The whole job: ingest, train, target, evaluate.
    Run(RunArgs),
    /// Read and check the inputs; write OUT/ingest/.
    Ingest(IngestArgs),
    /// Fit ALS and k-means on OUT/ingest/; write OUT/model/.
    Train(TrainArgs),
    /// Build push groups for the notifications and choose what each is
    /// pushed, from OUT/model/; write the pushes.
    Target(TargetArgs),
    /// Measure CTR of OUT/pushes.csv and the baselines on the click log.
    Evaluate(EvaluateArgs),
    /// Write realistic generated data in the Saavn layout, with ground truth.
    Synth(synth::SynthArgs),
    /// Run a Ballista scheduler or executor that can run cohortcast's ingest.
    Cluster(cluster::ClusterArgs),
    /// Serve the HTTP API over a trained model.
    Serve(serve::ServeArgs),
}

/// Where the four inputs are.
#[derive(Debug, Args, Clone)]
pub struct InputArgs {
    /// Folder (or s3:// prefix) holding clickstream/, metadata/,
    /// notification_actor/ and (optionally) notification_clicks/ (and
    /// truth/ from `synth`).
    #[arg(long)]
    data: Option<String>,
    /// Plays: user_id,timestamp,song_id,date (file, folder or glob).
    #[arg(long)]
    clickstream: Option<String>,
    /// Songs: song_id,artist_id[,artist_id...].
    #[arg(long)]
    metadata: Option<String>,
    /// Notifications: notification_id,artist_id.
    #[arg(long)]
    notification_actor: Option<String>,
    /// Clicks: notification_id,user_id,date (optional; needed for CTR).
    #[arg(long)]
    notification_clicks: Option<String>,
    /// Ground truth folder from `synth` (click_probability.npy), for
    /// expected CTR and the oracle. Default: DATA/truth when it exists.
    #[arg(long)]
    truth: Option<String>,
    /// Memory for the ingest's aggregation, in MiB; beyond it the play
    /// counts spill to the temporary folder. Default: a quarter of the
    /// machine's memory, at most 8 GiB.
    #[arg(long)]
    ingest_memory_mb: Option<usize>,
    /// Parallel partitions (and threads) for the ingest. Default: the
    /// machine's cores. Each partition's DataFusion join and aggregation
    /// (the metadata's, and the clickstream's on a cluster) takes its share
    /// of --ingest-memory-mb, so more partitions need more memory.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    ingest_partitions: Option<u16>,
    /// Where the ingest runs: `embedded` (DataFusion in this process) or
    /// `ballista://HOST:PORT`, a Ballista cluster started with
    /// `cohortcast cluster scheduler` and `cohortcast cluster executor`.
    #[arg(long, default_value = "embedded", value_parser = engine)]
    engine: String,
    /// The time zone that hours of the day (when each user and cohort
    /// listens) are counted in, as an offset from UTC: +05:30 for India.
    #[arg(long, default_value = "+00:00", value_parser = cohortcast_core::hours::parse_utc_offset, allow_hyphen_values = true)]
    utc_offset: i32,
}

/// `--engine`: `embedded` or a cluster URL, checked before any work.
fn engine(v: &str) -> std::result::Result<String, String> {
    if v == "embedded" || v.starts_with("ballista://") || v.starts_with("df://") {
        Ok(v.to_string())
    } else {
        Err("give `embedded` or `ballista://HOST:PORT`".into())
    }
}

impl InputArgs {
    fn ingest_options(&self, s3: &remote::S3Args) -> IngestOptions {
        let mut o = IngestOptions { s3: s3.options(), utc_offset_minutes: self.utc_offset, ..IngestOptions::default() };
        if let Some(mb) = self.ingest_memory_mb {
            o.memory_limit = mb.max(1) << 20;
        }
        if let Some(n) = self.ingest_partitions {
            o.partitions = n as usize;
        }
        if self.engine != "embedded" {
            o.cluster = Some(self.engine.clone());
        }
        o
    }

    fn paths(&self, stores: &Stores) -> Result<InputPaths> {
        let mut p = match &self.data {
            Some(d) if is_s3(d) => remote::data_url_paths(d, stores)?,
            Some(d) => {
                let d = PathBuf::from(d);
                if !d.is_dir() {
                    bail!("--data `{}` is not a folder", d.display());
                }
                InputPaths::from_data_dir(&d)
            }
            None => InputPaths::default(),
        };
        if let Some(v) = &self.clickstream {
            p.clickstream = Some(v.clone());
        }
        if let Some(v) = &self.metadata {
            p.metadata = Some(v.clone());
        }
        if let Some(v) = &self.notification_actor {
            p.notification_actor = Some(v.clone());
        }
        if let Some(v) = &self.notification_clicks {
            p.notification_clicks = Some(v.clone());
        }
        for (name, v) in [
            ("--clickstream", &p.clickstream),
            ("--metadata", &p.metadata),
            ("--notification-actor", &p.notification_actor),
        ] {
            if v.is_none() {
                bail!("{name} is required (or --data DIR with the Saavn folder layout)");
            }
        }
        Ok(p)
    }

    /// The truth folder: --truth, else DATA/truth when it holds one.
    fn truth_dir(&self, stores: &Stores) -> Result<Option<String>> {
        if let Some(t) = &self.truth {
            return Ok(Some(t.clone()));
        }
        let Some(d) = &self.data else { return Ok(None) };
        if is_s3(d) {
            let t = S3Url::parse(d)?.join("truth");
            let found = block_on(stores.list(&t.join("click_probability.npy")))??;
            return Ok((!found.is_empty()).then(|| t.url()));
        }
        let t = PathBuf::from(d).join("truth");
        Ok(t.join("click_probability.npy").exists().then(|| t.to_string_lossy().into_owned()))
    }
}

/// Model hyperparameters.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Latent factors per user and artist.
    #[arg(long, default_value_t = AlsParams::default().factors)]
    factors: usize,
    /// ALS iterations.
    #[arg(long, default_value_t = AlsParams::default().iterations)]
    iterations: usize,
    /// L2 regularization λ.
    #[arg(long, default_value_t = AlsParams::default().regularization)]
    regularization: f32,
    /// Confidence scale: c = 1 + alpha * w(plays).
    #[arg(long, default_value_t = AlsParams::default().alpha)]
    alpha: f32,
    /// How plays become confidence w(plays): linear, log or bm25.
    #[arg(long, default_value = "log")]
    weighting: WeightingArg,
    /// Conjugate-gradient steps per row (the exact solver ignores it).
    #[arg(long, default_value_t = AlsParams::default().cg_steps)]
    cg_steps: usize,
    /// Row solver: cg (fast) or cholesky (exact reference, slow).
    #[arg(long, default_value = "cg")]
    solver: SolverArg,
    /// Number of cohorts (k of k-means).
    #[arg(long, default_value_t = 100)]
    cohorts: usize,
    /// Most k-means iterations.
    #[arg(long, default_value_t = KMeansParams::default().max_iterations)]
    max_iterations: usize,
    /// k-means seedings; the lowest inertia wins.
    #[arg(long, default_value_t = KMeansParams::default().n_init)]
    n_init: usize,
    /// k-means seeding: parallel (k-means||, a few passes over the users,
    /// as Spark) or plus-plus (greedy k-means++, one pass per cohort, as
    /// scikit-learn).
    #[arg(long, default_value = "parallel")]
    kmeans_init: InitArg,
    /// Seed of every random choice (factor init, k-means seeding, random baseline).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WeightingArg {
    Linear,
    Log,
    Bm25,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InitArg {
    Parallel,
    PlusPlus,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SolverArg {
    Cg,
    Cholesky,
}

impl ModelArgs {
    fn als(&self) -> Result<AlsParams> {
        let p = AlsParams {
            factors: self.factors,
            iterations: self.iterations,
            regularization: self.regularization,
            alpha: self.alpha,
            weighting: match self.weighting {
                WeightingArg::Linear => Weighting::Linear,
                WeightingArg::Log => Weighting::Log,
                WeightingArg::Bm25 => Weighting::Bm25,
            },
            solver: match self.solver {
                SolverArg::Cg => Solver::ConjugateGradient,
                SolverArg::Cholesky => Solver::Cholesky,
            },
            cg_steps: self.cg_steps,
            seed: self.seed,
        };
        p.check()?;
        Ok(p)
    }

    fn kmeans(&self) -> Result<KMeansParams> {
        let p = KMeansParams {
            n_clusters: self.cohorts,
            max_iterations: self.max_iterations,
            n_init: self.n_init,
            seed: self.seed,
            init: match self.kmeans_init {
                InitArg::Parallel => KMeansInit::Parallel,
                InitArg::PlusPlus => KMeansInit::PlusPlus,
            },
            ..KMeansParams::default()
        };
        p.check()?;
        Ok(p)
    }
}

/// Targeting parameters.
#[derive(Debug, Args, Clone)]
pub struct TargetArgsCommon {
    /// Weight of each user's own listening share beside the ALS preference
    /// in the expected-CTR score (0: factors only).
    #[arg(long, default_value_t = TargetingParams::default().history_weight)]
    history_weight: f32,
    /// How users are grouped for pushing: `release` (groups built for this
    /// batch's predicted clicks, at most as many as the model's cohorts,
    /// --cohorts), `taste` (one notification per taste cohort) or `user`
    /// (each user their own best).
    #[arg(long, default_value = "release")]
    grouping: GroupingArg,
    /// Fewest users in a release group; smaller groups are dissolved into
    /// their users' next best.
    #[arg(long, default_value_t = GroupingParams::default().min_group_size)]
    min_cohort_size: usize,
    /// Share of users to push, those with the highest predicted score for
    /// what they would be pushed (1: everyone).
    #[arg(long, default_value_t = 1.0)]
    reach: f64,
    /// Push only users whose predicted score for what they would be pushed
    /// reaches this floor (the score the API's `min_expected_ctr` uses: it
    /// ranks, it is not a calibrated probability; 0: no floor).
    #[arg(long, default_value_t = 0.0)]
    min_expected_ctr: f64,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum GroupingArg {
    Release,
    Taste,
    User,
}

/// Validated targeting choices.
#[derive(Debug, Clone)]
pub struct Targeting {
    pub params: TargetingParams,
    pub grouping: Grouping,
    pub min_group_size: usize,
    pub reach: f64,
    pub min_score: f64,
}

impl Default for Targeting {
    fn default() -> Self {
        Targeting {
            params: TargetingParams::default(),
            grouping: Grouping::default(),
            min_group_size: GroupingParams::default().min_group_size,
            reach: 1.0,
            min_score: 0.0,
        }
    }
}

impl Targeting {
    /// Release-group limits with `max_groups` groups.
    pub fn grouping_params(&self, max_groups: usize) -> GroupingParams {
        GroupingParams { max_groups, min_group_size: self.min_group_size }
    }
}

impl TargetArgsCommon {
    fn params(&self) -> Result<Targeting> {
        let p = TargetingParams { history_weight: self.history_weight };
        p.check()?;
        GroupingParams { max_groups: 1, min_group_size: self.min_cohort_size }.check()?;
        if !(self.reach > 0.0 && self.reach <= 1.0) {
            bail!("--reach must be a share of users in (0, 1], got {}", self.reach);
        }
        let grouping = match self.grouping {
            GroupingArg::Release => Grouping::Release,
            GroupingArg::Taste => Grouping::Taste,
            GroupingArg::User => Grouping::User,
        };
        if !(self.min_expected_ctr.is_finite() && self.min_expected_ctr >= 0.0) {
            bail!("--min-expected-ctr must be a score of 0 or more, got {}", self.min_expected_ctr);
        }
        Ok(Targeting {
            params: p,
            grouping,
            min_group_size: self.min_cohort_size,
            reach: self.reach,
            min_score: self.min_expected_ctr,
        })
    }
}

/// Which policy pushes.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PolicyArg {
    /// The notification with the highest predicted affinity, per group
    /// (see --grouping).
    ExpectedCtr,
    /// Each cohort the notification naming its most played artist.
    TopArtist,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    inputs: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    targeting: TargetArgsCommon,
    /// Targeting policy.
    #[arg(long, default_value = "expected-ctr")]
    policy: PolicyArg,
    /// Output folder (a path or an s3:// prefix).
    #[arg(long)]
    out: String,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output folder (the data goes to OUT/data).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Users to generate.
    #[arg(long, default_value_t = 50_000)]
    users: usize,
    /// Number of cohorts.
    #[arg(long, default_value_t = 100)]
    cohorts: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    inputs: InputArgs,
    /// Output folder (writes OUT/ingest/) (a path or an s3:// prefix).
    #[arg(long)]
    out: String,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Output folder holding ingest/ (writes OUT/model/) (a path or an s3:// prefix).
    #[arg(long)]
    out: String,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    #[command(flatten)]
    targeting: TargetArgsCommon,
    /// Targeting policy.
    #[arg(long, default_value = "expected-ctr")]
    policy: PolicyArg,
    /// Output folder holding ingest/ and model/ (a path or an s3:// prefix).
    #[arg(long)]
    out: String,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    targeting: TargetArgsCommon,
    /// Output folder holding ingest/, model/ and pushes.csv (a path or an s3:// prefix).
    #[arg(long)]
    out: String,
    /// Ground truth folder (or s3:// prefix) from `synth`.
    #[arg(long)]
    truth: Option<String>,
    /// Seed of the random baseline.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let stores = Stores::new(cli.s3.options());
    // A command's outputs, written locally or staged and uploaded when
    // the command has succeeded; `fetch`: it reads what earlier stages left.
    let staged = |out: &str, fetch: bool, stage: &dyn Fn(&std::path::Path) -> Result<()>| -> Result<()> {
        let dir = OutDir::open(out, &stores, fetch)?;
        stage(dir.path())?;
        dir.commit(&stores)
    };
    let truth = |t: Option<String>| t.map(|t| LocalCopy::of(&t, &stores)).transpose();
    match cli.command {
        Command::Synth(a) => synth::run(a),
        Command::Cluster(a) => cluster::run(a, cli.s3.options()),
        Command::Serve(a) => serve::run(a),
        Command::Demo(a) => {
            let staged = outdir::Staged::begin(&a.out, false)?;
            pipeline::demo(&a, staged.path())?;
            let out = staged.out().to_path_buf();
            staged.commit()?;
            println!("outputs in {}", out.display());
            Ok(())
        }
        Command::Run(a) => {
            let paths = a.inputs.paths(&stores)?;
            let (als, km) = (a.model.als()?, a.model.kmeans()?);
            let tp = a.targeting.params()?;
            let opts = a.inputs.ingest_options(&cli.s3);
            let truth = truth(a.inputs.truth_dir(&stores)?)?;
            let truth = truth.as_ref().map(|t| t.path());
            staged(&a.out, false, &|out| {
                pipeline::run_all(&paths, &opts, truth, &als, &km, &tp, a.policy, out).map(|_| ())
            })
        }
        Command::Ingest(a) => {
            let (paths, opts) = (a.inputs.paths(&stores)?, a.inputs.ingest_options(&cli.s3));
            staged(&a.out, false, &|out| pipeline::ingest_stage(&paths, &opts, out))
        }
        Command::Train(a) => {
            let (als, km) = (a.model.als()?, a.model.kmeans()?);
            staged(&a.out, true, &|out| pipeline::train_stage(out, &als, &km))
        }
        Command::Target(a) => {
            let tp = a.targeting.params()?;
            staged(&a.out, true, &|out| pipeline::target_stage(out, a.policy, &tp))
        }
        Command::Evaluate(a) => {
            let tp = a.targeting.params()?;
            let truth = truth(a.truth.clone())?;
            let truth = truth.as_ref().map(|t| t.path());
            staged(&a.out, true, &|out| pipeline::evaluate_stage(out, truth, &tp, a.seed))
        }
    }
}
