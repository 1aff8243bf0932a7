//! `themis-migrate` (the guide's `vccdb-migrate`): converts a database of
//! an older on-disk format into a new directory. See `backup::migrate`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Convert a THEMIS database to another on-disk format version
/// (copy-and-convert: the source is only read).
#[derive(Debug, Parser)]
#[command(name = "themis-migrate")]
struct Args {
    /// The database to convert (stopped).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Where the converted database goes (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
    /// The source's format version (0: written before versions were recorded).
    #[arg(long, value_name = "N")]
    version: u32,
    /// The format version to write.
    #[arg(long, value_name = "N")]
    target: u32,
    /// Count what would be converted; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Verify the target afterwards (checksums, invariants, key counts).
    #[arg(long)]
    verify: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    match themis::backup::migrate::run(&a.from, &a.to, a.version, a.target, a.dry_run, a.verify) {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&outcome).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("themis-migrate: {e}");
            ExitCode::FAILURE
        }
    }
}
