//! Errors that decide the exit code.
//!
//! Most failures are plain `anyhow` errors with context and exit with 1. The few that a script
//! must be able to tell apart carry a [`Fatal`] variant somewhere in their chain; `main` looks
//! for it and maps it to the documented exit code.

/// Exit code of a runtime failure (network, disk, a model that fails to load).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a usage or configuration error (unknown model, bad flag, malformed file).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a license must be accepted first and there is no terminal to ask on.
pub const EXIT_LICENSE_NOT_ACCEPTED: u8 = 3;
/// Exit code when the model's license does not allow the use the user declared.
pub const EXIT_LICENSE_FORBIDS_USE: u8 = 4;

#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    LicenseNotAccepted(String),
    #[error("{0}")]
    LicenseForbidsUse(String),
}

impl Fatal {
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Usage(_) => EXIT_USAGE,
            Fatal::LicenseNotAccepted(_) => EXIT_LICENSE_NOT_ACCEPTED,
            Fatal::LicenseForbidsUse(_) => EXIT_LICENSE_FORBIDS_USE,
        }
    }
}

/// Shorthand for a usage error as an `anyhow::Error`.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    Fatal::Usage(msg.into()).into()
}

/// The exit code for an error: the first [`Fatal`] in its chain decides, else 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fatal>())
        .map(Fatal::exit_code)
        .unwrap_or(EXIT_FAILURE)
}

/// True when the error is, at bottom, a closed pipe on our output (`owrun run … | head`).
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
