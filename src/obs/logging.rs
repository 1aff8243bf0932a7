//! Logging: `tracing` to stdout or `logging.file`, as text or JSON, with
//! level and format switchable at runtime and size-based file rotation.
//!
//! The subscriber is a registry with two reloadable layers: the level
//! filter and the formatting layer (text or JSON). [`apply`] swaps them;
//! tracing then rebuilds its per-callsite interest cache, so a disabled
//! `debug!` on the request path stays a cached "no" between reloads.

use crate::config::LoggingConfig;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt::MakeWriter, reload, EnvFilter, Layer, Registry};

type FilterLayer = reload::Layer<EnvFilter, Registry>;
type Base = Layered<FilterLayer, Registry>;
type FmtLayer = Box<dyn Layer<Base> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<FmtLayer, Base>,
    writer: LogWriter,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

/// A log file that rotates by size: `server.log` is renamed to
/// `server.log.1` (and older ones shift up) once it would exceed the limit;
/// at most `max_files` files are kept, the current one included.
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    limit: u64,
    max_files: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, limit: u64, max_files: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            limit: limit.max(1),
            max_files: max_files.max(1),
        })
    }

    fn archive(&self, n: u32) -> PathBuf {
        let mut s = self.path.clone().into_os_string();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let keep = self.max_files - 1;
        if keep == 0 {
            // Only the current file is kept: start it over.
            self.file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)?;
            self.size = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(self.archive(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(self.archive(n), self.archive(n + 1));
        }
        std::fs::rename(&self.path, self.archive(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.limit {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Where log lines go.
#[derive(Clone)]
pub enum LogWriter {
    Stdout,
    File(Arc<Mutex<RotatingFile>>),
}

/// One write of a log line.
pub enum LogSink<'a> {
    Stdout(io::StdoutLock<'a>),
    File(std::sync::MutexGuard<'a, RotatingFile>),
}

impl Write for LogSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            LogSink::Stdout(s) => s.write(buf),
            LogSink::File(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            LogSink::Stdout(s) => s.flush(),
            LogSink::File(f) => f.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogSink<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        match self {
            LogWriter::Stdout => LogSink::Stdout(io::stdout().lock()),
            LogWriter::File(f) => LogSink::File(match f.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            }),
        }
    }
}

fn filter(level: &str) -> Result<EnvFilter, String> {
    // glommio logs reactor details at info; keep it at warn.
    EnvFilter::try_new(format!("{level},glommio=warn,hnsw_rs=warn,anndists=warn"))
        .map_err(|e| format!("logging.level: {e}"))
}

fn fmt_layer(format: &str, writer: LogWriter) -> FmtLayer {
    let ansi =
        matches!(writer, LogWriter::Stdout) && std::io::IsTerminal::is_terminal(&io::stdout());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_thread_names(true)
        .with_target(false)
        .with_ansi(ansi);
    if format == "json" {
        Box::new(layer.json())
    } else {
        Box::new(layer)
    }
}

/// Installs the global subscriber from `logging.*`.
pub fn init(cfg: &LoggingConfig) -> Result<(), String> {
    let writer = match &cfg.file {
        Some(path) => LogWriter::File(Arc::new(Mutex::new(
            RotatingFile::open(path, cfg.rotation_size_mb << 20, cfg.max_files)
                .map_err(|e| format!("logging.file {}: {e}", path.display()))?,
        ))),
        None => LogWriter::Stdout,
    };
    let (filter_layer, filter_handle) = reload::Layer::new(filter(&cfg.level)?);
    let (format_layer, format_handle) = reload::Layer::new(fmt_layer(&cfg.format, writer.clone()));
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(format_layer)
        .try_init()
        .map_err(|e| format!("cannot install logger: {e}"))?;
    let _ = HANDLES.set(Handles {
        filter: filter_handle,
        format: format_handle,
        writer,
    });
    Ok(())
}

/// Switches level and format at runtime (no-op before [`init`]).
pub fn apply(level: &str, format: &str) -> Result<(), String> {
    let Some(h) = HANDLES.get() else {
        return Ok(());
    };
    h.filter.reload(filter(level)?).map_err(|e| e.to_string())?;
    h.format
        .reload(fmt_layer(format, h.writer.clone()))
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let mut f = RotatingFile::open(&path, 100, 3).unwrap();
        for i in 0..20 {
            writeln!(f, "line {i:03} {}", "x".repeat(40)).unwrap();
        }
        f.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["s.log", "s.log.1", "s.log.2"]);
        for n in &names {
            assert!(std::fs::metadata(dir.path().join(n)).unwrap().len() <= 100);
        }
        let newest = std::fs::read_to_string(&path).unwrap();
        assert!(newest.contains("line 019"));
    }
}
