//! `PluginError` and `PluginResult`, as in the original Backworks SDK.

use std::fmt;

use crate::json::JsonError;

/// Why a plugin call failed.
///
/// An `Err` crosses the boundary as `BW_FAIL` with [`Display`](fmt::Display) text as
/// the message (the host logs it and counts it against the plugin's circuit
/// breaker), except [`Cancelled`](PluginError::Cancelled), which becomes
/// `BW_CANCELLED`. A deliberate 4xx/5xx answer is not an error: return
/// `Ok(Response::error(404, "..."))` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin could not start (a resource it needs is missing, ...).
    InitializationError(String),
    /// The plugin's configuration is invalid; say which key and why.
    ConfigurationError(String),
    /// A request (or a health check, or a hook) could not be processed.
    ProcessingError(String),
    /// The host gave up on the call (see [`Request::is_cancelled`](crate::Request::is_cancelled)).
    Cancelled,
}

/// The result of every fallible plugin method.
pub type PluginResult<T> = Result<T, PluginError>;

impl PluginError {
    /// A [`PluginError::InitializationError`].
    pub fn init(message: impl Into<String>) -> PluginError {
        PluginError::InitializationError(message.into())
    }

    /// A [`PluginError::ConfigurationError`].
    pub fn config(message: impl Into<String>) -> PluginError {
        PluginError::ConfigurationError(message.into())
    }

    /// A [`PluginError::ProcessingError`].
    pub fn processing(message: impl Into<String>) -> PluginError {
        PluginError::ProcessingError(message.into())
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginError::InitializationError(m) => write!(f, "initialization failed: {m}"),
            PluginError::ConfigurationError(m) => write!(f, "invalid configuration: {m}"),
            PluginError::ProcessingError(m) => write!(f, "processing failed: {m}"),
            PluginError::Cancelled => f.write_str("cancelled by the host"),
        }
    }
}

impl std::error::Error for PluginError {}

impl From<JsonError> for PluginError {
    fn from(e: JsonError) -> PluginError {
        PluginError::ProcessingError(format!("invalid JSON: {e}"))
    }
}

impl From<std::io::Error> for PluginError {
    fn from(e: std::io::Error) -> PluginError {
        PluginError::ProcessingError(e.to_string())
    }
}

impl From<String> for PluginError {
    fn from(message: String) -> PluginError {
        PluginError::ProcessingError(message)
    }
}

impl From<&str> for PluginError {
    fn from(message: &str) -> PluginError {
        PluginError::ProcessingError(message.to_owned())
    }
}
