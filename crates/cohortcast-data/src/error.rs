//! Errors of reading and writing, each naming the file (and line) at fault.

use std::path::PathBuf;

use thiserror::Error;

/// Something wrong with an input, an output, or the engine.
#[derive(Debug, Error)]
pub enum IoError {
    /// An input path that does not exist.
    #[error("{input}: `{path}` does not exist")]
    Missing {
        /// Which input (clickstream, metadata, ...).
        input: String,
        /// The path as given.
        path: String,
    },
    /// A folder or glob that matched no data files.
    #[error("{input}: no data files in `{path}` (hidden files and _SUCCESS markers are skipped)")]
    NoFiles {
        /// Which input.
        input: String,
        /// The path as given.
        path: String,
    },
    /// A file that is not in the expected layout at all (probably the wrong
    /// file was passed).
    #[error("{input}: `{path}` does not look like `{layout}`: {detail}")]
    NotTheLayout {
        /// Which input.
        input: String,
        /// The offending file.
        path: PathBuf,
        /// The expected columns.
        layout: String,
        /// What was seen, with line numbers.
        detail: String,
    },
    /// A file of ours (model, stage output) that is malformed.
    #[error("{path}: line {line}: {detail}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 when not line-oriented).
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The query engine failed.
    #[error("{context}: {source}")]
    Engine {
        /// What was being done.
        context: String,
        /// DataFusion's error.
        #[source]
        source: datafusion::error::DataFusionError,
    },
    /// A Parquet file could not be read or written.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet library's error.
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },
    /// A location (`s3://`, `ballista://`) that cannot be used.
    #[error("`{url}` is not a usable URL: {detail}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A request to S3 failed (after its retries, where it was retried).
    #[error("{url}: {what} failed: {hint}")]
    Remote {
        /// The object or prefix.
        url: String,
        /// What was being done.
        what: String,
        /// What the failure most likely means.
        hint: String,
        /// The client's error.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An input or model that the algorithms cannot use.
    #[error(transparent)]
    Data(#[from] cohortcast_core::DataError),
}

impl IoError {
    /// Wraps an `std::io::Error` with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Io { path: path.into(), source }
    }

    /// Wraps an S3 error with the URL and what was being done, and says
    /// what it most likely means.
    pub fn remote(url: &str, what: &str, source: object_store::Error) -> Self {
        let hint = remote_hint(&source);
        IoError::Remote { url: url.into(), what: what.into(), hint, source: Box::new(source) }
    }

    /// Wraps an engine error with what was being done.
    pub fn engine(context: impl Into<String>, source: datafusion::error::DataFusionError) -> Self {
        let mut context = context.into();
        match source.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(_) => {
                context.push_str(" (the ingest memory pool is too small for this step: raise --ingest-memory-mb)")
            }
            datafusion::error::DataFusionError::ObjectStore(e) => {
                context.push_str(&format!(" (reading from S3 failed: {})", remote_hint(e)))
            }
            _ => {}
        }
        IoError::Engine { context, source }
    }
}

/// What a failed S3 request most likely means, for a person.
fn remote_hint(source: &object_store::Error) -> String {
    let text = source.to_string();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let denied =
        matches!(source, object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. })
            || has(&["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403 Forbidden"]);
    match source {
        _ if has(&["NoSuchBucket", "bucket does not exist"]) => "the bucket does not exist".to_string(),
        object_store::Error::NotFound { .. } => "no such object: check the bucket and key".to_string(),
        _ if denied => "access denied: check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                        AWS_PROFILE) and the endpoint"
            .to_string(),
        _ if has(&["error sending request", "connect", "Connection refused", "timed out", "retries"]) => {
            "the S3 endpoint did not answer or broke off, and retrying did not help".to_string()
        }
        _ => text.clone(),
    }
}

/// Result alias of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
