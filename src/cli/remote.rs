//! `s3://` outputs and side inputs for the commands, over local folders.
//!
//! A command whose `--out` is an `s3://` prefix works in a local staging
//! folder: what an earlier stage left under the prefix is downloaded first,
//! the stage writes locally as usual (each file under a temporary name,
//! renamed when complete), and only when the stage has succeeded are the
//! files it wrote uploaded, `summary.json` last. S3 shows an object only
//! once its upload is complete; if an upload fails, the objects this
//! command had already uploaded are deleted again, so a failed command
//! leaves no partial set of outputs behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use clap::Args;
use cohortcast_core::saavn::Input;
use cohortcast_data::inputs::InputPaths;
use cohortcast_data::store::{block_on, is_s3, S3Options, S3Url, Stores};

/// How to reach S3 (for every `s3://` path).
#[derive(Debug, Args, Clone)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000
    /// (default: AWS_ENDPOINT_URL, else AWS).
    #[arg(long, global = true)]
    s3_endpoint: Option<String>,
    /// Retries of a failed S3 request, with exponential backoff from 100 ms
    /// to at most 10 s.
    #[arg(long, global = true, default_value_t = S3Options::default().retries)]
    s3_retries: usize,
}

impl S3Args {
    pub fn options(&self) -> S3Options {
        S3Options { endpoint: self.s3_endpoint.clone(), retries: self.s3_retries, ..S3Options::default() }
    }
}

/// The inputs of the `--data` layout under an `s3://` prefix; clicks are
/// taken only when objects exist under `notification_clicks/`.
pub fn data_url_paths(spec: &str, stores: &Stores) -> Result<InputPaths> {
    let url = S3Url::parse(spec)?;
    // The same layout as `InputPaths::from_data_dir`: one prefix an input.
    let sub = |input: Input| url.join(input.name()).url();
    let clicks = url.join(Input::NotificationClicks.name());
    let has_clicks = !block_on(stores.list(&clicks))??.is_empty();
    Ok(InputPaths {
        clickstream: Some(sub(Input::Clickstream)),
        metadata: Some(sub(Input::Metadata)),
        notification_actor: Some(sub(Input::NotificationActor)),
        notification_clicks: has_clicks.then(|| clicks.url()),
    })
}

/// A folder given as a path or an `s3://` prefix, made local: a download
/// into a temporary folder for a prefix.
pub struct LocalCopy {
    path: PathBuf,
    _staging: Option<tempfile::TempDir>,
}

impl LocalCopy {
    /// Downloads everything under `spec` when it is an `s3://` prefix.
    pub fn of(spec: &str, stores: &Stores) -> Result<LocalCopy> {
        if !is_s3(spec) {
            return Ok(LocalCopy { path: PathBuf::from(spec), _staging: None });
        }
        let staging = tempfile::Builder::new().prefix("cohortcast-s3-").tempdir().context("a staging folder")?;
        download_prefix(&S3Url::parse(spec)?, staging.path(), stores)?;
        Ok(LocalCopy { path: staging.path().to_path_buf(), _staging: Some(staging) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Downloads everything under `url` into `to`, on one runtime (so the
/// client's connections are reused from object to object).
fn download_prefix(url: &S3Url, to: &Path, stores: &Stores) -> Result<()> {
    block_on(async {
        for o in stores.list(url).await? {
            let rel = o.url.key.strip_prefix(url.key.as_str()).unwrap_or(&o.url.key).trim_start_matches('/');
            if rel.is_empty() || rel.split('/').any(|p| p == ".." || p.is_empty()) {
                continue;
            }
            stores.download(&o.url, &to.join(rel)).await?;
        }
        Ok::<_, cohortcast_data::IoError>(())
    })??;
    Ok(())
}

type Snapshot = BTreeMap<PathBuf, (u64, Option<SystemTime>)>;

fn snapshot(root: &Path) -> Result<Snapshot> {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let meta = e.metadata()?;
            if meta.is_dir() {
                walk(root, &e.path(), out)?;
            } else {
                let rel = e.path().strip_prefix(root).expect("below the root").to_path_buf();
                out.insert(rel, (meta.len(), meta.modified().ok()));
            }
        }
        Ok(())
    }
    let mut out = Snapshot::new();
    if root.exists() {
        walk(root, root, &mut out).with_context(|| format!("listing {}", root.display()))?;
    }
    Ok(out)
}

/// The output folder of a command: a local folder, or a local staging
/// folder that [`OutDir::commit`] uploads to an `s3://` prefix.
pub struct OutDir {
    local: PathBuf,
    staged: Option<super::outdir::Staged>,
    remote: Option<(S3Url, tempfile::TempDir, Snapshot)>,
}

impl OutDir {
    /// Opens `spec`; for an `s3://` prefix, downloads what earlier stages
    /// left there when `fetch` is set.
    pub fn open(spec: &str, stores: &Stores, fetch: bool) -> Result<OutDir> {
        if !is_s3(spec) {
            let staged = super::outdir::Staged::begin(Path::new(spec), fetch)?;
            return Ok(OutDir { local: staged.path().to_path_buf(), staged: Some(staged), remote: None });
        }
        let url = S3Url::parse(spec)?;
        let staging = tempfile::Builder::new().prefix("cohortcast-out-").tempdir().context("a staging folder")?;
        if fetch {
            download_prefix(&url, staging.path(), stores)
                .with_context(|| format!("reading what earlier stages left in {}", url.url()))?;
        }
        let before = snapshot(staging.path())?;
        Ok(OutDir { local: staging.path().to_path_buf(), staged: None, remote: Some((url, staging, before)) })
    }

    /// Where the command writes.
    pub fn path(&self) -> &Path {
        &self.local
    }

    /// Uploads what the command wrote (new or changed files), summary.json
    /// last; on a failure deletes what this call uploaded and says which
    /// object failed.
    pub fn commit(self, stores: &Stores) -> Result<()> {
        if let Some(staged) = self.staged {
            return staged.commit();
        }
        let Some((url, staging, before)) = self.remote else { return Ok(()) };
        let after = snapshot(staging.path())?;
        let mut changed: Vec<&PathBuf> =
            after.iter().filter(|(p, m)| before.get(*p) != Some(*m)).map(|(p, _)| p).collect();
        // summary.json marks a complete set: it goes up last.
        changed.sort_by_key(|p| (p.as_path() == Path::new("summary.json"), (*p).clone()));
        // One runtime for the whole upload, so connections are reused.
        block_on(async {
            let mut done: Vec<S3Url> = Vec::new();
            for rel in changed {
                let key = rel.iter().map(|c| c.to_string_lossy()).collect::<Vec<_>>().join("/");
                let to = url.join(&key);
                if let Err(e) = stores.upload(&staging.path().join(rel), &to).await {
                    for u in done.iter().rev() {
                        let _ = stores.delete(u).await;
                    }
                    return Err(anyhow::Error::new(e).context(format!(
                        "uploading the outputs to {} failed; the {} objects already uploaded were deleted",
                        url.url(),
                        done.len()
                    )));
                }
                done.push(to);
            }
            Ok(())
        })??;
        Ok(())
    }
}
