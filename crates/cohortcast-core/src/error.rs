//! Errors of the core: bad parameters, bad data, and failed fits.

use thiserror::Error;

/// A parameter outside its valid range. Raised by `check()` on every params
/// struct, before any work starts.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ParamError {
    /// A count parameter that must be positive was zero.
    #[error("{name} must be at least {min}, got {value}")]
    TooSmall {
        /// Parameter name as the CLI spells it.
        name: &'static str,
        /// Smallest allowed value.
        min: f64,
        /// What was given.
        value: f64,
    },
    /// A parameter above its allowed maximum.
    #[error("{name} must be at most {max}, got {value}")]
    TooLarge {
        /// Parameter name as the CLI spells it.
        name: &'static str,
        /// Largest allowed value.
        max: f64,
        /// What was given.
        value: f64,
    },
    /// A real-valued parameter that is NaN or infinite.
    #[error("{name} must be a finite number, got {value}")]
    NotFinite {
        /// Parameter name as the CLI spells it.
        name: &'static str,
        /// What was given.
        value: f64,
    },
}

/// Checks `min <= value <= max` and finiteness for a named parameter.
pub(crate) fn check_range(name: &'static str, value: f64, min: f64, max: f64) -> Result<(), ParamError> {
    if !value.is_finite() {
        return Err(ParamError::NotFinite { name, value });
    }
    if value < min {
        return Err(ParamError::TooSmall { name, min, value });
    }
    if value > max {
        return Err(ParamError::TooLarge { name, max, value });
    }
    Ok(())
}

/// Input that the algorithms cannot use.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DataError {
    /// A cell outside the declared matrix shape.
    #[error("cell ({row}, {col}) is outside a {rows}x{cols} matrix")]
    OutOfBounds {
        /// Row index given.
        row: usize,
        /// Column index given.
        col: usize,
        /// Declared rows.
        rows: usize,
        /// Declared columns.
        cols: usize,
    },
    /// A NaN or infinite value in the input.
    #[error("cell ({row}, {col}) holds a NaN or infinite value")]
    NonFinite {
        /// Row index.
        row: usize,
        /// Column index.
        col: usize,
    },
    /// Nothing to learn from.
    #[error("{0}")]
    Empty(String),
    /// Shapes of two inputs do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// A fit that started but could not produce a usable model.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum FitError {
    /// Parameters failed validation.
    #[error(transparent)]
    Params(#[from] ParamError),
    /// The data cannot be fitted.
    #[error(transparent)]
    Data(#[from] DataError),
    /// NaN or infinity appeared in the factors: the model diverged. Lower
    /// `alpha` or raise `regularization`.
    #[error("{side} factors became NaN or infinite at iteration {iteration}; lower --alpha or raise --regularization")]
    NonFinite {
        /// "user" or "artist".
        side: &'static str,
        /// 1-based ALS iteration.
        iteration: usize,
    },
}
