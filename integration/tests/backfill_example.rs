//! `examples/backfill/`: a month of daily partitions recomputed in one run through the
//! schedule-friendly wrapper, checked against metrics computed here from the CSV files;
//! rerunning it leaves the same rows; a one-day backfill after a correction replaces
//! that day only; the wrapper's exit codes (2 for bad arguments, 1 for a failed job that
//! committed nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

use meltwater_integration::{copy_dir, meltwater, meltwater_bin, printed_rows, repo_root};

const READ_JOB: &str = r#"
CREATE TABLE out (day DATE, country STRING, events BIGINT, users BIGINT, purchases BIGINT,
                  revenue DECIMAL(38, 2)) WITH ('connector' = 'print');
INSERT INTO out SELECT * FROM lake.analytics.daily_metrics;
"#;

fn backfill(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(dir.join("examples/backfill/backfill.sh"));
    cmd.current_dir(dir)
        .args(args)
        .env("MELTWATER", meltwater_bin())
        .env("BACKFILL_LOCK", dir.join("backfill.lock"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("backfill.sh runs")
}

fn ok(out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The table's rows as the print sink prints them, sorted.
fn table_rows(dir: &Path) -> Vec<String> {
    std::fs::write(dir.join("read.sql"), READ_JOB).unwrap();
    printed_rows(&ok(meltwater(dir, &["run", "read.sql", "--mode", "batch"])))
}

#[derive(Default)]
struct Metrics {
    events: u64,
    users: BTreeSet<u64>,
    purchases: u64,
    cents: i64,
}

/// The expected rows of `days`, computed from the CSV files.
fn expected(dir: &Path, days: &[String]) -> Vec<String> {
    let mut by: BTreeMap<(String, String), Metrics> = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("examples/backfill/data/events")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let day = f[5][..10].to_string();
            if !days.contains(&day) {
                continue;
            }
            let m = by.entry((day, f[2].to_string())).or_default();
            m.events += 1;
            m.users.insert(f[1].parse().unwrap());
            if f[3] == "purchase" {
                m.purchases += 1;
            }
            let (units, cents) = f[4].split_once('.').unwrap();
            m.cents += units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap();
        }
    }
    let mut rows: Vec<String> = by
        .into_iter()
        .map(|((day, country), m)| {
            format!(
                "+I[{day}, {country}, {}, {}, {}, {}.{:02}]",
                m.events,
                m.users.len(),
                m.purchases,
                m.cents / 100,
                m.cents % 100
            )
        })
        .collect();
    rows.sort();
    rows
}

fn march(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|d| format!("2026-03-{d:02}")).collect()
}

#[test]
fn the_backfill_example_recomputes_a_month_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &repo_root().join("examples/backfill"),
        &dir.path().join("examples/backfill"),
    );
    let month = ["--from", "2026-03-01", "--to", "2026-03-31"];
    let out = ok(backfill(dir.path(), &month, &[]));
    assert!(
        out.contains("overwrite lake.analytics.daily_metrics: "),
        "{out}"
    );
    let all = expected(dir.path(), &march(1, 31));
    assert!(all.len() > 31 * 5, "{} rows", all.len());
    let first = table_rows(dir.path());
    assert_eq!(first, all);

    // The same backfill again: the same rows.
    ok(backfill(dir.path(), &month, &[]));
    assert_eq!(table_rows(dir.path()), all);

    // A correction of one day's data, then a one-day backfill: that day changes, the
    // others keep their rows.
    let file = dir
        .path()
        .join("examples/backfill/data/events/events-2026-03-05.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text.lines().take(40).collect();
    std::fs::write(&file, kept.join("\n") + "\n").unwrap();
    ok(backfill(dir.path(), &["--date", "2026-03-05"], &[]));
    let now = table_rows(dir.path());
    assert_eq!(now, expected(dir.path(), &march(1, 31)));
    assert_ne!(now, first);
    let unchanged = |rows: &[String]| -> Vec<String> {
        rows.iter()
            .filter(|r| !r.starts_with("+I[2026-03-05"))
            .cloned()
            .collect()
    };
    assert_eq!(unchanged(&now), unchanged(&first));

    // Bad arguments: exit 2, nothing run.
    let out = backfill(dir.path(), &["--date", "2026-3-5"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be dates as YYYY-MM-DD"));

    // A failed job: exit 1, and the table is as it was.
    let out = backfill(
        dir.path(),
        &[
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-31",
            "--",
            "--max-attempts",
            "1",
        ],
        &[("MELTWATER_FAIL_TASK", "1/0")],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing was committed"), "{stderr}");
    assert!(stderr.contains("stage 1, partition 0 failed"), "{stderr}");
    assert_eq!(table_rows(dir.path()), now);
}
