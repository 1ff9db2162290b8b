//! Library error type.

use std::path::PathBuf;

/// Every failure the library reports. Messages name the file, key, shape or argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint file that cannot be read as a checkpoint (bad zip, bad pickle, truncated data...).
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A key the model needs is absent from the checkpoint.
    #[error("missing key `{key}` (expected shape {expected:?}) in {source_name}")]
    MissingKey {
        key: String,
        expected: Vec<usize>,
        source_name: String,
    },
    /// Keys present in the checkpoint that the model does not use.
    #[error("unexpected key(s) in {source_name}: {}", format_keys(.keys))]
    UnexpectedKeys {
        keys: Vec<String>,
        source_name: String,
    },
    /// A tensor whose shape does not match the model's.
    #[error("shape mismatch for `{key}` in {source_name}: checkpoint has {found:?}, model expects {expected:?}")]
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        source_name: String,
    },
    /// A bad configuration value.
    #[error("invalid config: {0}")]
    Config(String),
    /// A bad argument to a public function (wrong shape, NaN, out-of-range value...).
    #[error("invalid argument `{name}`: {message}")]
    InvalidArgument { name: &'static str, message: String },
    /// An image that cannot be read or used.
    #[error("image: {0}")]
    Image(String),
    /// An image file (or in-memory image data, `name`) that cannot be decoded: corrupt, truncated,
    /// unsupported or over the pixel limit.
    #[error("{name}: {message}")]
    ImageFile { name: String, message: String },
    /// A failed download (unreachable server, HTTP error, dropped connection, wrong size or hash).
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    /// A failure inside the tensor backend.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn format_keys(keys: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = keys
        .iter()
        .take(SHOWN)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if keys.len() > SHOWN {
        s.push_str(&format!(" and {} more", keys.len() - SHOWN));
    }
    s
}

/// Library result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn arg(name: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name,
            message: message.into(),
        }
    }
}
