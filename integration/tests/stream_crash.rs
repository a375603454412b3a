//! Crash and restart: a stream job from a bounded `datagen` into two Iceberg tables (the
//! rows as they are, and a TUMBLE count per key) is killed with SIGKILL at random moments
//! several times and restarted each time; it resumes from its last complete checkpoint,
//! the last time at parallelism 3 instead of 2.
//! At the end both tables must hold every row exactly once: checked with DuckDB and
//! pyiceberg against the rows the generator defines (the batch run of the same job).
//! The scenario is in `meltwater_integration::crash`; `stream_crash_s3.rs` runs it with
//! the checkpoints in an S3-compatible store.
//!
//! `MELTWATER_CRASH_KILLS` sets the number of kills (default 3).

use meltwater_integration::crash::{assert_exactly_once, clock_seed, crash_job, kill_repeatedly};
use meltwater_integration::{interop_python, meltwater};

const ROWS: u64 = 40_000;

#[test]
fn killed_stream_job_resumes_and_commits_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("job.sql"), crash_job(ROWS, "", "")).unwrap();
    std::fs::write(dir.path().join("batch.sql"), crash_job(ROWS, "_batch", "")).unwrap();
    let kills: usize = std::env::var("MELTWATER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut seed = clock_seed();
    eprintln!("crash test: {kills} kills, seed {seed}");
    let killed = kill_repeatedly(
        dir.path(),
        &["run", "job.sql", "--mode", "stream"],
        &[],
        kills,
        &mut seed,
    );
    assert!(
        killed >= 1,
        "the job finished before it could be killed once"
    );
    // The last run goes to the end, at another parallelism: keyed state is redistributed
    // by key group and splits by id.
    let out = meltwater(
        dir.path(),
        &["run", "job.sql", "--mode", "stream", "--parallelism", "3"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "final run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");

    // The batch run of the same job gives the reference rows.
    let out = meltwater(dir.path(), &["run", "batch.sql", "--mode", "batch"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let Some(python) = interop_python("the crash test's read-back") else {
        return;
    };
    assert_exactly_once(&python, dir.path(), "", ROWS);
}
