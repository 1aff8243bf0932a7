//! Logging set-up: `tracing` to stdout or `logging.file`, as text or JSON.

use crate::config::LoggingConfig;
use std::fs::OpenOptions;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Returns an error naming the log file if
/// it cannot be opened.
pub fn init(cfg: &LoggingConfig) -> Result<(), String> {
    // glommio logs every reactor detail at info; keep it at warn.
    let filter = EnvFilter::try_new(format!("{},glommio=warn", cfg.level))
        .map_err(|e| format!("logging.level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_thread_names(true)
        .with_target(false);
    let result = match &cfg.file {
        Some(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("logging.file {}: {e}", path.display()))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("logging.file {}: {e}", path.display()))?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(file));
            if cfg.format == "json" {
                builder.json().try_init()
            } else {
                builder.try_init()
            }
        }
        None => {
            if cfg.format == "json" {
                builder.json().try_init()
            } else {
                builder.try_init()
            }
        }
    };
    result.map_err(|e| format!("cannot install logger: {e}"))
}
