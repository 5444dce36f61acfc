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
    /// An input or model that the algorithms cannot use.
    #[error(transparent)]
    Data(#[from] cohortcast_core::DataError),
}

impl IoError {
    /// Wraps an `std::io::Error` with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IoError::Io { path: path.into(), source }
    }

    /// Wraps an engine error with what was being done.
    pub fn engine(context: impl Into<String>, source: datafusion::error::DataFusionError) -> Self {
        let mut context = context.into();
        if matches!(source.find_root(), datafusion::error::DataFusionError::ResourcesExhausted(_)) {
            context.push_str(" (the ingest memory pool is too small for this step: raise --ingest-memory-mb)");
        }
        IoError::Engine { context, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;
