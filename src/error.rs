//! The library's error type: a caller can tell a missing adapter (fall back to the CPU
//! reference) from a request past a limit, bad input, a file that cannot be read or written,
//! and a GPU failure, without reading message text.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// `Result` with [`Error`] as the error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No wgpu adapter could be used (none installed, none matching `WGPU_BACKEND` /
    /// `WGPU_ADAPTER_NAME`, or one without compute): the CPU reference still works.
    #[error("{0}")]
    NoAdapter(String),
    /// A request past a size limit of the adapter or of this machine.
    #[error(
        "{what} needs {needed} bytes ({}), over {limit_name} of {limit} bytes ({})",
        human_bytes(*.needed),
        human_bytes(*.limit)
    )]
    LimitExceeded {
        /// What asked for the memory, with its sizes (e.g. "a grid of 1000 cells").
        what: String,
        /// Bytes needed.
        needed: u64,
        /// The limit's name (e.g. "the adapter's max_storage_buffer_binding_size").
        limit_name: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// Bad input; the message names the input (array, file, flag or setting), where (index,
    /// row, line) and why.
    #[error("{0}")]
    InvalidInput(String),
    /// A file or folder could not be read or written. The message says what was being done
    /// with `path`; the operating system's reason is the error's source.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. "cannot read map file".
        action: String,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The GPU failed while running (a device lost, a failed map or poll).
    #[error("GPU failure: {0}")]
    Gpu(String),
    /// The caller's progress callback stopped the solve (e.g. on Ctrl-C) after `sweeps` sweeps;
    /// nothing was written.
    #[error("solve cancelled by its caller after {sweeps} sweeps")]
    Cancelled {
        /// Sweeps done when the solve stopped.
        sweeps: u32,
    },
}

/// How an error message names a setting: by its name in the library and the Python API
/// (`max_iters`), or with the command line's flag beside it (`max_iters (--max-iters)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// The setting's name: what `softvi.solve(...)` and the library call it.
    Name,
    /// The name with its flag, for the command line.
    Flag,
}

impl Spelling {
    /// `name` spelled this way (`Flag`: the flag is `--` and the name with `-` for `_`).
    pub fn setting(self, name: &str) -> String {
        match self {
            Spelling::Name => name.to_string(),
            Spelling::Flag => format!("{name} (--{})", name.replace('_', "-")),
        }
    }
}

impl Error {
    /// An I/O error on `path` while doing `action` (e.g. "cannot write").
    pub fn io(action: impl Display, path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            action: action.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// A request of `needed` bytes for `what` past the limit `limit_name` of `limit` bytes.
    pub fn limit(what: impl Display, needed: u64, limit_name: impl Display, limit: u64) -> Self {
        Error::LimitExceeded {
            what: what.to_string(),
            needed,
            limit_name: limit_name.to_string(),
            limit,
        }
    }

    /// The same error with `context` in front of what it says (as `anyhow`'s context reads:
    /// `context: error`). The kind is kept.
    pub fn context(self, context: impl Display) -> Self {
        match self {
            Error::NoAdapter(m) => Error::NoAdapter(format!("{context}: {m}")),
            Error::LimitExceeded {
                what,
                needed,
                limit_name,
                limit,
            } => Error::LimitExceeded {
                what: format!("{context}: {what}"),
                needed,
                limit_name,
                limit,
            },
            Error::InvalidInput(m) => Error::InvalidInput(format!("{context}: {m}")),
            Error::Io {
                action,
                path,
                source,
            } => Error::Io {
                action: format!("{context}: {action}"),
                path,
                source,
            },
            Error::Gpu(m) => Error::Gpu(format!("{context}: {m}")),
            // Nothing went wrong with what the context names: the caller stopped the solve.
            cancelled @ Error::Cancelled { .. } => cancelled,
        }
    }
}

/// A size in decimal units for messages: `"3.2 GB"`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", b / 1e6),
        1_000_000_000..1_000_000_000_000 => format!("{:.1} GB", b / 1e9),
        _ => format!("{:.1} TB", b / 1e12),
    }
}

/// [`Error::LimitExceeded`] unless `needed <= limit`; `what` is built only on failure.
pub(crate) fn ensure_limit(
    needed: u64,
    limit: u64,
    what: impl FnOnce() -> String,
    limit_name: impl Display,
) -> Result<()> {
    if needed <= limit {
        Ok(())
    } else {
        Err(Error::limit(what(), needed, limit_name, limit))
    }
}

/// Adds context to a failure, keeping its kind: an [`Error`] keeps its variant, an absent
/// value or a foreign error (a parse or archive error) becomes [`Error::InvalidInput`].
pub trait Context<T> {
    /// Puts `context` in front of the error's message.
    fn context(self, context: impl Display) -> Result<T>;
    /// [`Context::context`] with the message built only on failure.
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl Display) -> Result<T> {
        self.ok_or_else(|| Error::InvalidInput(context.to_string()))
    }
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::InvalidInput(context().to_string()))
    }
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl Display) -> Result<T> {
        self.map_err(|e| into_error(e).context(context))
    }
    fn with_context<C: Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| into_error(e).context(context()))
    }
}

/// An [`Error`] as it is; any other error as [`Error::InvalidInput`] with its message.
fn into_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> Error {
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(e);
    match boxed.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => Error::InvalidInput(other.to_string()),
    }
}

/// Returns [`Error::InvalidInput`] with a formatted message unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        // `if c {} else` rather than `if !c`: a negated float comparison would read wrongly
        // for NaN (and clippy says so at every call site).
        if $cond {
        } else {
            return Err($crate::error::Error::InvalidInput(format!($($arg)+)));
        }
    };
}

/// Returns [`Error::InvalidInput`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)+) => {
        return Err($crate::error::Error::InvalidInput(format!($($arg)+)))
    };
}

pub(crate) use {bail, ensure};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_reads_like_a_chain() {
        let e = Error::limit("a grid of 9 cells", 36, "the adapter's max_buffer_size", 16)
            .context("task 3");
        assert!(matches!(
            e,
            Error::LimitExceeded {
                needed: 36,
                limit: 16,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "task 3: a grid of 9 cells needs 36 bytes (36 B), over the adapter's max_buffer_size \
             of 16 bytes (16 B)"
        );
        let parse: Result<u32> = "x".parse::<u32>().context("`width` is not a number");
        let e = parse.unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)));
        assert_eq!(
            e.to_string(),
            "`width` is not a number: invalid digit found in string"
        );
        let io = std::fs::read("/nonexistent/softvi")
            .map_err(|e| Error::io("cannot read", Path::new("/nonexistent/softvi"), e));
        let e = io.context("map").unwrap_err();
        assert_eq!(e.to_string(), "map: cannot read /nonexistent/softvi");
        assert!(std::error::Error::source(&e).is_some());
    }
}
