//! SQL semantics as SQL (DESIGN.md §8): every `integration/slt/**/*.slt` file runs once
//! per mode in [`modes::modes`], against the same expected rows, so a file that passes
//! in every mode is a proof of mode equivalence for what it covers.
//!
//! One test per (file, mode), named `<file> [<mode>]`. Each gets a fresh temp directory
//! (its embedded Iceberg catalog lives there) and a [`session::SltSession`]; see that
//! module for how records become job files. `SLT_FILTER=windows` (or a libtest filter
//! after `--`) runs the matching files only. How to add a file or a mode:
//! `docs/testing.md`.
//!
//! ```text
//! cargo test -p meltwater-integration --test slt
//! SLT_FILTER=windows_session cargo test -p meltwater-integration --test slt
//! ```

mod modes;
mod rows;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sqllogictest::harness::{Arguments, Failed, Trial};
use sqllogictest::{Condition, Record, Runner};

use crate::modes::ModeRunner;
use crate::session::{SltSession, ENGINE};

/// `integration/slt`, where the `.slt` files and their data live.
fn slt_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("slt")
}

/// Every `.slt` file below `dir`, in path order.
fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            slt_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "slt") {
            out.push(path);
        }
    }
}

fn main() {
    let args = Arguments::from_args();
    let root = slt_root();
    let filter = std::env::var("SLT_FILTER").ok().filter(|f| !f.is_empty());
    let mut files = Vec::new();
    slt_files(&root, &mut files);
    assert!(!files.is_empty(), "no .slt files under {}", root.display());

    let mut trials = Vec::new();
    for path in files {
        let relative = path
            .strip_prefix(&root)
            .expect("found under the root")
            .to_string_lossy()
            .into_owned();
        if filter
            .as_ref()
            .is_some_and(|f| !relative.contains(f.as_str()))
        {
            continue;
        }
        for runner in modes::modes() {
            let name = format!("{relative} [{}]", runner.mode());
            let path = path.clone();
            let relative = relative.clone();
            trials.push(Trial::test(name, move || {
                run_file(&path, &relative, runner)
            }));
        }
    }
    assert!(
        !trials.is_empty(),
        "SLT_FILTER={filter:?} matches no file under {}",
        root.display()
    );
    sqllogictest::harness::run(&args, trials).exit();
}

/// Runs one file in one mode. Every failing record is reported (not only the first), each
/// with the file and line of the record and a diff of expected and actual rows.
fn run_file(path: &Path, relative: &str, runner: Arc<dyn ModeRunner>) -> Result<(), Failed> {
    let script = std::fs::read_to_string(path)
        .map_err(|e| Failed::from(format!("cannot read {}: {e}", path.display())))?;
    let display_name = format!("integration/slt/{relative}");
    let records = sqllogictest::parse_with_name(&script, display_name.as_str())
        .map_err(|e| Failed::from(format!("{display_name}: {e}")))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("cannot start a tokio runtime: {e}")))?;
    let mode = runner.mode();
    let dir = path.parent().expect("a file has a parent").to_path_buf();
    let name = display_name.clone();
    let failures = tokio.block_on(async move {
        let tmp = tempfile::Builder::new()
            .prefix("meltwater-slt-")
            .tempdir()
            .map_err(|e| vec![format!("cannot create a temp dir: {e}")])?;
        let tmp_path = tmp.path().to_path_buf();
        let file_name = relative.to_string();
        let mut sqllogic = Runner::new(move || {
            let session = SltSession::new(runner.clone(), &file_name, &dir, &tmp_path);
            async move { Ok::<_, session::SltError>(session) }
        });
        // `onlyif batch` / `skipif batch`: only for marking a known engine bug in one mode
        // (see docs/testing.md); expected rows are never mode-specific.
        let labels = [mode.to_string(), ENGINE.to_string()];
        sqllogic.add_label(&labels[0]);
        sqllogic.with_column_validator(sqllogictest::strict_column_validator);
        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        for record in records {
            if matches!(record, Record::Halt { .. }) {
                break;
            }
            if let Some(loc) = skipped_in(&record, &labels) {
                skipped.push(loc);
            }
            if let Err(e) = sqllogic.run_async(record).await {
                failures.push(e.display(false).to_string());
            }
        }
        sqllogic.shutdown_async().await;
        drop(tmp);
        if !skipped.is_empty() {
            // Known-bug records must not vanish silently.
            eprintln!(
                "note: {name} [{mode}]: {} record(s) skipped in this mode: {}",
                skipped.len(),
                skipped.join(", ")
            );
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    });
    failures.map_err(|f| {
        Failed::from(format!(
            "{} failing record(s) in {display_name} [{mode}]:\n\n{}",
            f.len(),
            f.join("\n")
        ))
    })
}

/// Where `record` is, when its `skipif` / `onlyif` conditions skip it given `labels`.
fn skipped_in<T: sqllogictest::ColumnType>(
    record: &Record<T>,
    labels: &[String],
) -> Option<String> {
    let (conditions, loc) = match record {
        Record::Statement {
            conditions, loc, ..
        }
        | Record::Query {
            conditions, loc, ..
        } => (conditions, loc),
        _ => return None,
    };
    conditions
        .iter()
        .any(|c| match c {
            Condition::SkipIf { label } => labels.contains(label),
            Condition::OnlyIf { label } => !labels.contains(label),
        })
        .then(|| format!("line {}", loc.line()))
}
