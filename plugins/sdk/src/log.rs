//! Plugin logging through the host's `host.log` import. Lines are stored with the delivery
//! attempt and returned by `simulate`; the host caps the bytes per call (4 KiB by default) and
//! drops the rest, so log decisions, not data.

use crate::LogLevel;
use crate::bindings::hookd::plugin::host;

/// Write one log line at `level`.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message);
}

/// Write one `trace` line.
pub fn trace(message: &str) {
    log(LogLevel::Trace, message);
}

/// Write one `debug` line.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// Write one `info` line.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Write one `warn` line.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Write one `error` line.
pub fn error(message: &str) {
    log(LogLevel::Error, message);
}
