//! The library's typed error: every variant names the file, layer or tensor involved.
use std::path::{Path, PathBuf};

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when loading, building, running or saving a network.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error while reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A file whose content is malformed (IDX, npy, image, safetensors, CSV...).
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    /// A model description that is invalid; `layer` reads like "layer 3 (conv2d)".
    #[error("{source_name}: {}{msg}", layer.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
    Model {
        source_name: String,
        layer: Option<String>,
        msg: String,
    },

    /// A tensor of a weights file that is missing, extra or misshaped.
    #[error("{}: tensor `{tensor}`: {msg}", path.display())]
    Weights {
        path: PathBuf,
        tensor: String,
        msg: String,
    },

    /// Two shapes that should agree do not.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    /// An option or argument value that is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),

    /// Training produced a NaN or infinite loss.
    #[error("the loss became {value} in epoch {epoch}, batch {batch}; try a lower learning rate (the last completed epoch is kept)")]
    NonFinite {
        epoch: usize,
        batch: usize,
        value: f64,
    },

    /// Training was stopped by the user (Ctrl-C) after the given completed epoch.
    #[error("{}", if *epochs_done == 0 {
        "interrupted before the first epoch completed; nothing was saved".to_string()
    } else {
        format!("interrupted; the run keeps its last completed epoch ({epochs_done}) and continues with --resume")
    })]
    Interrupted { epochs_done: usize },

    /// A rank of a run over several processes failed; every rank stops with its message.
    #[error("{message} (rank {rank} of {ranks})")]
    Rank {
        rank: usize,
        ranks: usize,
        message: String,
    },
}

impl Error {
    /// An I/O error for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    /// A format error for `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    /// An invalid-value error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }
}
