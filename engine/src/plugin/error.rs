//! The plugin module's error and failure-code types: [`PluginError`] (the host could not be
//! opened), [`PluginLoadError`] (an upload, load or config check was refused) and
//! [`PluginFailureCode`] (the stable code of an attempt a plugin made fail, which is an outcome,
//! not an `Err`).

use std::path::PathBuf;
use std::time::Duration;

use crate::quota::QuotaExceeded;

/// The plugin host could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The wasmtime engine (or its compile cache) could not be configured.
    #[error("cannot configure the wasmtime engine: {0}")]
    Engine(String),
    /// A state directory could not be created or read.
    #[error("plugin state directory {path}: {source}")]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// An upload, load or config check was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginLoadError {
    /// The component is larger than `max_upload_bytes`.
    #[error("plugin is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge {
        /// Size of the upload in bytes.
        size: usize,
        /// The configured cap in bytes.
        limit: usize,
    },
    /// The component is unusable (not a component, does not compile in time, imports
    /// something outside the allow-list, lacks the required exports, its `meta` misbehaves,
    /// or the plugin or tenant name is malformed). API code `plugin_invalid`.
    #[error("invalid plugin: {reason}")]
    Invalid {
        /// What is wrong, naming the offending import or missing export where there is one.
        reason: String,
    },
    /// No plugin of that name exists for the tenant.
    #[error("plugin not found")]
    NotFound,
    /// The plugin exists but has no stored version of this id.
    #[error("the plugin has no stored version {version}")]
    VersionNotFound { version: u64 },
    /// The plugin refused the config (`meta.validate-config` returned an error).
    #[error("invalid plugin config: {0}")]
    InvalidConfig(String),
    /// The plugin loaded but could not be stored (disk error); nothing was published.
    #[error("plugin storage failed: {0}")]
    Storage(String),
    /// The component has more functions, or a larger function, than the host compiles
    /// ([`MAX_FUNCTIONS`](super::settings::MAX_FUNCTIONS),
    /// [`MAX_FUNCTION_BODY_BYTES`](super::settings::MAX_FUNCTION_BODY_BYTES)); checked before
    /// compiling. API code `plugin_too_large`.
    #[error("plugin is too large to compile: {0}")]
    TooComplex(String),
    /// The install would pass the tenant's `plugins` or `plugin_bytes` quota; nothing was
    /// compiled or written.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    /// No compile slot (the tenant's, then the engine's) freed up within `compile_wait`.
    #[error(
        "the plugin compiler is busy (another upload of this tenant, or {} uploads of others, are compiling); retry after {} s",
        super::settings::MAX_CONCURRENT_COMPILES,
        retry_after.as_secs().max(1)
    )]
    CompileBusy {
        /// When to try again.
        retry_after: Duration,
    },
    /// The version would change what webhooks using the plugin run: a hook the current version
    /// has is missing, or an attached config is refused by its `validate-config`. Nothing was
    /// published (`?force=true` publishes anyway). API code `plugin_incompatible`.
    #[error("{0}")]
    Incompatible(String),
}

impl PluginLoadError {
    /// Shorthand for [`PluginLoadError::Invalid`].
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::Invalid {
            reason: reason.into(),
        }
    }

    /// Whether this refusal is about the component itself (recorded as the live version's
    /// `last_error`), rather than about the tenant's quota or the compiler being busy.
    pub fn is_about_the_component(&self) -> bool {
        !matches!(
            self,
            Self::QuotaExceeded(_) | Self::CompileBusy { .. } | Self::Incompatible(_)
        )
    }

    /// The stable API error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "plugin_too_large",
            Self::Invalid { .. } => "plugin_invalid",
            Self::NotFound => "plugin_not_found",
            Self::VersionNotFound { .. } => "plugin_version_not_found",
            Self::InvalidConfig(_) => "plugin_invalid_config",
            Self::Storage(_) => "internal",
            Self::TooComplex(_) => "plugin_too_large",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::CompileBusy { .. } => "compile_busy",
            Self::Incompatible(_) => "plugin_incompatible",
        }
    }
}

/// Why a plugin made a delivery attempt fail. Stored with the attempt as [`as_str`](Self::as_str).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginFailureCode {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, stack overflow, ...).
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    Memory,
    /// The call exhausted its fuel budget.
    Fuel,
    /// The plugin returned `retry-later`, `internal` or `invalid-config`, or the host failed
    /// to run it (e.g. instance pool exhausted). Retried.
    Error,
    /// The plugin returned `invalid-event`: this event can never be processed. Not retried.
    InvalidEvent,
    /// A transform or sign hook returned something the output policy refuses.
    InvalidOutput,
    /// A chain step names a plugin the tenant does not have (any more).
    NotFound,
}

impl PluginFailureCode {
    /// The stable snake_case code stored with the attempt and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "plugin_trap",
            Self::Timeout => "plugin_timeout",
            Self::Memory => "plugin_memory",
            Self::Fuel => "plugin_fuel",
            Self::Error => "plugin_error",
            Self::InvalidEvent => "plugin_invalid_event",
            Self::InvalidOutput => "plugin_invalid_output",
            Self::NotFound => "plugin_not_found",
        }
    }

    /// Whether the attempt should be retried on the webhook's schedule: everything except
    /// [`InvalidEvent`](Self::InvalidEvent), so that a fixed plugin (or a restored one) makes
    /// the next attempt succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Self::InvalidEvent)
    }
}

impl std::fmt::Display for PluginFailureCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
