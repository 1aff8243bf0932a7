//! `themis_server`: parse the command line, load the configuration, run.

use clap::Parser;
use std::process::ExitCode;
use themis::cli::{self, Cli};
use themis::obs::logging;
use themis::{backup, config, node};

/// Prints `v` as pretty JSON on stdout (a closed pipe is not an error).
fn print_json(v: &impl serde::Serialize) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn main() -> ExitCode {
    let args = Cli::parse();
    if args.version {
        println!("{}", cli::version_line());
        return ExitCode::SUCCESS;
    }
    let loaded = config::load(args.config.as_deref(), &args.overrides());
    if args.validate {
        return if cli::validate(&loaded, args.config.as_deref()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("themis_server: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.verify {
        let report = backup::offline::verify(dir, loaded.config.backup.io_limit_mb_per_s);
        print_json(&report);
        return if report.ok {
            ExitCode::SUCCESS
        } else {
            eprintln!("themis_server: verification of {} failed", dir.display());
            ExitCode::FAILURE
        };
    }
    if let Some(from) = &args.restore {
        let cut = match args.until.as_deref().map(backup::restore::parse_until) {
            None => backup::restore::Cut::Latest,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                eprintln!("themis_server: {e}");
                return ExitCode::from(2);
            }
        };
        let target = &loaded.config.storage.rocksdb_path;
        return match backup::restore::run(from, target, args.wal_archive.as_deref(), cut) {
            Ok(r) => {
                print_json(&r);
                match &r.wal_read_error {
                    None => ExitCode::SUCCESS,
                    Some(e) => {
                        eprintln!("themis_server: restore incomplete: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("themis_server: restore failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(root) = &args.backup {
        return match backup::offline::backup(&loaded.config, root) {
            Ok(v) => {
                print_json(&v);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("themis_server: backup failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Err(e) = logging::init(&loaded.config.logging) {
        eprintln!("themis_server: {e}");
        return ExitCode::from(2);
    }
    match &loaded.source {
        Some(p) => tracing::info!(file = %p.display(), "configuration loaded"),
        None => tracing::info!("no config file found; using built-in defaults"),
    }
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let reload = node::ReloadSource {
        explicit: args.config.clone(),
        cli: args.overrides(),
    };
    match node::run(loaded.config, reload, node::Faults::from_env()) {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("themis_server: {e}");
            // Executors may still be parked waiting for a peer that failed;
            // leave without joining them.
            std::process::exit(1);
        }
    }
}
