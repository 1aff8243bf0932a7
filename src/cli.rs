//! The command line: flags, `--version` and `--validate` (`--backup` and
//! `--verify` are `backup::offline`, `--restore` is `backup::restore`).

use crate::config::{CliOverrides, ConfigError, LoadedConfig};
use clap::Parser;
use std::path::{Path, PathBuf};

/// THEMIS multi-model database server.
#[derive(Debug, Parser)]
#[command(name = "themis_server", disable_version_flag = true)]
pub struct Cli {
    /// Config file (YAML or JSON); without it the standard paths are searched.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Listen port (overrides server.port; 0 picks a free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Listen address (overrides server.host).
    #[arg(long)]
    pub host: Option<String>,
    /// Data directory (overrides storage.rocksdb_path).
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Worker threads, one pinned core each (overrides server.worker_threads).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Check the configuration and environment, print the results, and exit.
    #[arg(long)]
    pub validate: bool,
    /// Back up the (stopped) database into the backup root DIR
    /// (`DIR/checkpoint_<ms>/`), print the manifest as JSON, and exit.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["validate", "verify"])]
    pub backup: Option<PathBuf>,
    /// Verify a backup (`DIR/manifest.json` checksums, then the database
    /// opened read-only) or a stopped database directory; print a JSON
    /// report and exit 0 when intact, 1 otherwise.
    #[arg(long, value_name = "DIR", conflicts_with = "validate")]
    pub verify: Option<PathBuf>,
    /// Restore the backup BACKUP (a `checkpoint_<ms>` directory) into the
    /// database directory (`--db` / storage.rocksdb_path, absent or empty),
    /// replaying `--wal-archive` up to `--until`; print a JSON report and
    /// exit 0, or 1 when the archive could not be read to its end.
    #[arg(long, value_name = "BACKUP", conflicts_with_all = ["validate", "verify", "backup"])]
    pub restore: Option<PathBuf>,
    /// With --restore: the WAL archive (storage.wal_archive_path) to replay.
    #[arg(long, value_name = "DIR", requires = "restore")]
    pub wal_archive: Option<PathBuf>,
    /// With --restore: where to stop: seq:N (change-feed sequence), an RFC
    /// 3339 time, ms:N (Unix ms) or rocksdb:N. Default: all archived.
    #[arg(long, value_name = "CUT", requires = "restore")]
    pub until: Option<String>,
    /// Print name, version, build date and commit, and exit.
    #[arg(long, short = 'V')]
    pub version: bool,
}

impl Cli {
    pub fn overrides(&self) -> CliOverrides {
        CliOverrides {
            host: self.host.clone(),
            port: self.port,
            db: self.db.clone(),
            threads: self.threads,
        }
    }
}

/// `THEMIS v0.1.0 (build: 2026-11-23, commit: abc1234)`
pub fn version_line() -> String {
    format!(
        "THEMIS v{} (build: {}, commit: {})",
        crate::VERSION,
        crate::BUILD_DATE,
        crate::GIT_COMMIT
    )
}

/// Whether a directory (existing, or to be created) is writable.
fn check_storage_path(path: &Path) -> Result<String, String> {
    if path.exists() {
        if !path.is_dir() {
            return Err(format!("{} exists and is not a directory", path.display()));
        }
        let probe = path.join(".themis-validate-probe");
        std::fs::write(&probe, b"ok")
            .map_err(|e| format!("{} is not writable: {e}", path.display()))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(format!("Storage path accessible: {}", path.display()));
    }
    let mut ancestor = path.parent();
    while let Some(a) = ancestor {
        let a = if a.as_os_str().is_empty() {
            Path::new(".")
        } else {
            a
        };
        if a.exists() {
            let probe = a.join(".themis-validate-probe");
            return match std::fs::write(&probe, b"ok") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                    Ok(format!(
                        "Storage path accessible: {} (will be created)",
                        path.display()
                    ))
                }
                Err(e) => Err(format!(
                    "{} does not exist and {} is not writable: {e}",
                    path.display(),
                    a.display()
                )),
            };
        }
        ancestor = a.parent();
    }
    Err(format!(
        "{} has no existing parent directory",
        path.display()
    ))
}

fn total_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// Runs the `--validate` checks, prints one line per check, and returns
/// whether all passed.
pub fn validate(loaded: &Result<LoadedConfig, ConfigError>, explicit: Option<&Path>) -> bool {
    let mut ok = true;
    let mut line = |pass: bool, text: String| {
        println!("{} {text}", if pass { "✓" } else { "✗" });
        ok &= pass;
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            let name = crate::config::find_file(explicit)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(built-in defaults)".into());
            line(false, format!("Config file invalid: {name}: {e}"));
            return false;
        }
    };
    let cfg = &loaded.config;
    match &loaded.source {
        Some(p) => line(true, format!("Config file valid: {}", p.display())),
        None => line(
            true,
            "Config valid: no file found, using built-in defaults".into(),
        ),
    }
    for w in &loaded.warnings {
        println!("! {w}");
    }
    match check_storage_path(&cfg.storage.rocksdb_path) {
        Ok(m) => line(true, m),
        Err(m) => line(false, format!("Storage path not accessible: {m}")),
    }
    let port = cfg.server.port;
    match themis_io::listener::resolve(&cfg.server.host, port)
        .and_then(|addr| themis_io::listener::port_available(addr).map(|_| addr))
    {
        Ok(addr) => line(true, format!("Port {port} available ({addr})")),
        Err(e) => line(
            false,
            format!("Port {port} not available on {}: {e}", cfg.server.host),
        ),
    }
    // `server.shard_ports`: each core's own port, for the cores it would
    // start with here.
    let cores = cfg.effective_threads(crate::node::usable_cpus().len());
    match cfg.shard_ports(cores) {
        Ok(Some(ports)) if port != 0 => {
            let busy: Vec<String> = ports
                .iter()
                .filter(|p| {
                    themis_io::listener::resolve(&cfg.server.host, **p)
                        .and_then(themis_io::listener::port_available)
                        .is_err()
                })
                .map(u16::to_string)
                .collect();
            line(
                busy.is_empty(),
                if busy.is_empty() {
                    format!(
                        "Shard ports {}..={} available (one per core)",
                        ports[0],
                        ports[ports.len() - 1]
                    )
                } else {
                    format!("Shard ports not available: {}", busy.join(", "))
                },
            );
        }
        Ok(_) => {}
        Err(why) => line(false, why),
    }
    let all_interfaces = matches!(cfg.server.host.trim(), "0.0.0.0" | "::" | "[::]" | "");
    if all_interfaces && !cfg.server.enable_auth {
        println!(
            "! server.host = {} listens on every interface with server.enable_auth = false: anyone who can reach port {port} can read and change all data (turn auth on, or bind 127.0.0.1)",
            cfg.server.host
        );
    }
    if let Some(files) = crate::tls::TlsFiles::from_config(&cfg.server) {
        match files.load() {
            Ok(loaded) => {
                let c = loaded.cert;
                line(
                    true,
                    format!(
                        "TLS certificate {} and key {} load and match: {}, expires {} ({} days){}",
                        files.cert.display(),
                        files.key.display(),
                        c.subject,
                        c.not_after,
                        c.days_left,
                        match &files.ca {
                            Some(ca) =>
                                format!("; client certificates required (CA {})", ca.display()),
                            None => String::new(),
                        }
                    ),
                );
                if c.days_left < 30 {
                    println!(
                        "! TLS certificate expires in {} days: renew it (SIGHUP reloads it)",
                        c.days_left
                    );
                }
            }
            Err(e) => line(false, format!("TLS certificate or key unusable: {e}")),
        }
    }
    let memtables = cfg.storage.memtable_budget_mb();
    let cache = cfg.storage.block_cache_size_mb;
    let total = memtables + cache;
    let ram = total_memory_mb();
    let fits = ram.is_none_or(|r| total <= r * 9 / 10);
    line(
        fits,
        format!(
            "Memory limits: memtable ({memtables} MB = {} MB x {} write buffers x {} written families) + block_cache ({cache} MB) = {total} MB{}",
            cfg.storage.memtable_size_mb,
            cfg.storage.max_write_buffer_number,
            crate::config::StorageConfig::WRITTEN_FAMILIES,
            match ram {
                Some(r) if fits => format!(" (of {r} MB RAM)"),
                Some(r) => format!(" exceeds 90% of the {r} MB RAM"),
                None => String::new(),
            }
        ),
    );
    let cpus = crate::node::usable_cpus().len();
    let threads = cfg.effective_threads(cpus);
    if threads <= cpus {
        let how = if threads == cpus { "optimal for" } else { "of" };
        line(
            true,
            format!("Worker threads: {threads} ({how} {cpus}-core CPU)"),
        );
    } else {
        line(
            false,
            format!("Worker threads: {threads} exceed the {cpus} usable CPUs (pinned executors would share cores)"),
        );
    }
    ok
}
