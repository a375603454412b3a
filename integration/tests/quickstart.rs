//! The quickstart, end to end, exactly as the README tells it: `meltwater run
//! examples/quickstart/daily_revenue.sql --mode batch` in a working directory holding the
//! examples, then the table read back by pyiceberg and DuckDB and compared with the golden
//! result `integration/expected/quickstart_daily_revenue.csv` (computed from the CSV data
//! by an independent Python script).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use meltwater_integration::{copy_dir, interop_python, meltwater, read_iceberg, repo_root};
use serde_json::Value;

const DAILY_JOB: &str = "examples/quickstart/daily_revenue.sql";
const CUMULATIVE_JOB: &str = "examples/quickstart/cumulative_revenue.sql";
const DAILY_TABLE: &str = "lake.shop.daily_revenue";

/// A fresh working directory holding a copy of the repository's `examples/`.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    copy_dir(&repo_root().join("examples"), &dir.path().join("examples"));
    dir
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `meltwater ARGS` and asserts it succeeded; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = meltwater(dir, args);
    assert!(
        out.status.success(),
        "meltwater {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
}

/// The line of `text` starting with `prefix`.
fn line_starting<'a>(text: &'a str, prefix: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

/// One `meltwater run` of the daily job: its stdout, run id and committed snapshot id,
/// after checking the summary it prints.
fn run_daily(dir: &Path) -> (String, String, String) {
    let out = ok(dir, &["run", DAILY_JOB, "--mode", "batch"]);
    let running = line_starting(&out, "running ");
    assert!(
        running.contains("(job daily_revenue, run ") && running.contains("in batch mode"),
        "{out}"
    );
    let run_id = running
        .split("run ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("a run id")
        .to_string();
    assert_eq!(
        line_starting(&out, "read  orders"),
        "read  orders (filesystem): 1,500 rows, 68.3 KiB, 2 files",
        "{out}"
    );
    assert!(
        line_starting(&out, "insert lake.shop.daily_revenue:").contains(": 15 rows in "),
        "{out}"
    );
    let wrote = line_starting(&out, "wrote lake.shop.daily_revenue:");
    assert!(wrote.contains(": 15 rows, "), "{out}");
    let snapshot = wrote
        .rsplit("snapshot ")
        .next()
        .expect("a snapshot id")
        .to_string();
    assert!(
        snapshot.parse::<i64>().is_ok(),
        "snapshot id {snapshot:?} is not an integer: {out}"
    );
    assert!(line_starting(&out, "done in ").ends_with(" s"), "{out}");
    (out, run_id, snapshot)
}

/// The data lines (after the header) of `meltwater catalog snapshots TABLE`.
fn snapshot_lines(dir: &Path, table: &str) -> Vec<String> {
    let out = ok(dir, &["catalog", "snapshots", table]);
    let mut lines = out.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.starts_with("snapshot") && header.ends_with("job"),
        "{out}"
    );
    lines.map(str::to_string).collect()
}

/// A decimal string such as "14666.39" or "-0.5" in hundredths.
fn cents(decimal: &str) -> i128 {
    let (int, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    assert!(frac.len() <= 2, "more than 2 decimals: {decimal}");
    let negative = int.starts_with('-');
    let magnitude = int.trim_start_matches('-').parse::<i128>().expect("digits") * 100
        + format!("{frac:0<2}").parse::<i128>().expect("digits");
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The golden rows as the JSON lines `read_iceberg.py` prints (sorted, decimals as strings).
fn golden_lines() -> Vec<String> {
    let path = repo_root().join("integration/expected/quickstart_daily_revenue.csv");
    let text = std::fs::read_to_string(&path).expect("the golden CSV");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("day,category,orders,revenue"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 4, "golden line {l:?}");
            format!(
                r#"{{"day":"{}","category":"{}","orders":{},"revenue":"{}"}}"#,
                f[0], f[1], f[2], f[3]
            )
        })
        .collect()
}

fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn str_field<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {row}"))
}

fn int_field(row: &Value, key: &str) -> i64 {
    row[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} is not an integer in {row}"))
}

/// A (day, category) key.
type DayCategory = (String, String);

/// (day, category) → (rows, orders, revenue in cents), summed over the rows of the table.
fn totals_by_key(rows: &[Value]) -> BTreeMap<DayCategory, (i64, i64, i128)> {
    let mut totals = BTreeMap::new();
    for r in rows {
        let key = (
            str_field(r, "day").to_string(),
            str_field(r, "category").to_string(),
        );
        let t = totals.entry(key).or_insert((0, 0, 0));
        t.0 += 1;
        t.1 += int_field(r, "orders");
        t.2 += cents(str_field(r, "revenue"));
    }
    totals
}

#[test]
fn quickstart_daily_revenue_matches_golden_in_pyiceberg_and_duckdb() {
    let dir = workdir();
    let dir = dir.path();
    let golden = golden_lines();
    assert_eq!(golden.len(), 15);

    // First run: creates the table and commits one snapshot tagged with the job id.
    let (out, run1, snap1) = run_daily(dir);
    assert!(
        out.starts_with("created table lake.shop.daily_revenue\n"),
        "{out}"
    );
    let snapshots = snapshot_lines(dir, DAILY_TABLE);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let fields: Vec<&str> = snapshots[0].split_whitespace().collect();
    assert_eq!(fields[0], snap1, "{snapshots:?}");
    assert_eq!(
        fields[1], "-",
        "the first snapshot has no parent: {snapshots:?}"
    );
    assert!(fields.contains(&"append"), "{snapshots:?}");
    assert!(
        snapshots[0].ends_with(&format!(" 15 daily_revenue (run {run1})")),
        "snapshot line should show 15 added rows and job daily_revenue: {snapshots:?}"
    );

    let tables = ok(dir, &["catalog", "tables"]);
    assert_eq!(tables.lines().collect::<Vec<_>>(), vec![DAILY_TABLE]);
    let describe = ok(dir, &["catalog", "describe", DAILY_TABLE]);
    assert!(
        describe.contains(&format!("current snapshot  {snap1}")),
        "{describe}"
    );

    let python = interop_python("reading the quickstart table with pyiceberg and DuckDB");
    if let Some(python) = &python {
        for reader in ["pyiceberg", "duckdb"] {
            assert_eq!(
                read_iceberg(python, dir, "shop.daily_revenue", reader),
                golden,
                "{reader} reads other rows than integration/expected/quickstart_daily_revenue.csv"
            );
        }
    }

    // Second run: appends a second snapshot on top of the first, with the same 15 rows.
    let (out, run2, snap2) = run_daily(dir);
    assert!(
        !out.contains("created table"),
        "the table exists already: {out}"
    );
    assert_ne!(run1, run2);
    assert_ne!(snap1, snap2);
    let snapshots = snapshot_lines(dir, DAILY_TABLE);
    assert_eq!(snapshots.len(), 2, "{snapshots:?}");
    let second: Vec<&str> = snapshots[1].split_whitespace().collect();
    assert_eq!(
        (second[0], second[1]),
        (snap2.as_str(), snap1.as_str()),
        "{snapshots:?}"
    );
    assert!(
        snapshots[1].ends_with(&format!(" 15 daily_revenue (run {run2})")),
        "{snapshots:?}"
    );

    if let Some(python) = &python {
        let golden_totals = totals_by_key(&parse(&golden));
        for reader in ["pyiceberg", "duckdb"] {
            let rows = parse(&read_iceberg(python, dir, "shop.daily_revenue", reader));
            assert_eq!(rows.len(), 30, "{reader}");
            let totals = totals_by_key(&rows);
            assert_eq!(
                totals.keys().collect::<Vec<_>>(),
                golden_totals.keys().collect::<Vec<_>>(),
                "{reader}"
            );
            for (key, (n, orders, revenue)) in &totals {
                let (_, g_orders, g_revenue) = golden_totals[key];
                assert_eq!(
                    (*n, *orders, *revenue),
                    (2, 2 * g_orders, 2 * g_revenue),
                    "{reader}: {key:?} after two runs should hold two rows with double the golden sums"
                );
            }
        }
    }
}

#[test]
fn quickstart_cumulative_revenue_ends_each_day_at_the_daily_total() {
    let dir = workdir();
    let dir = dir.path();
    let out = ok(dir, &["run", CUMULATIVE_JOB, "--mode", "batch"]);
    assert!(
        out.contains("created table lake.shop.revenue_so_far_today\n"),
        "{out}"
    );
    assert!(
        line_starting(&out, "insert lake.shop.revenue_so_far_today:").contains(": 360 rows in "),
        "{out}"
    );
    assert!(
        line_starting(&out, "wrote lake.shop.revenue_so_far_today:").contains(": 360 rows, "),
        "{out}"
    );

    let Some(python) = interop_python("reading the CUMULATE quickstart table") else {
        return;
    };
    let golden = totals_by_key(&parse(&golden_lines()));
    let pyiceberg = read_iceberg(&python, dir, "shop.revenue_so_far_today", "pyiceberg");
    let duckdb = read_iceberg(&python, dir, "shop.revenue_so_far_today", "duckdb");
    assert_eq!(pyiceberg, duckdb, "pyiceberg and DuckDB disagree");
    let rows = parse(&pyiceberg);
    // 3 days × 24 hourly windows × 5 categories: every category sells in every first hour.
    assert_eq!(rows.len(), 3 * 24 * 5);

    // (day, category) → [(window end hour, orders, revenue cents)], in window-end order.
    let mut series: BTreeMap<DayCategory, Vec<(u32, i64, i128)>> = BTreeMap::new();
    for r in &rows {
        let start = str_field(r, "window_start");
        let end = str_field(r, "window_end");
        let (day, start_time) = start.split_once('T').expect("an ISO timestamp");
        assert_eq!(
            start_time, "00:00:00.000000",
            "windows start at midnight: {r}"
        );
        let (end_day, end_time) = end.split_once('T').expect("an ISO timestamp");
        let hour: u32 = end_time[..2].parse().expect("an hour");
        assert_eq!(
            &end_time[2..],
            ":00:00.000000",
            "windows end on the hour: {r}"
        );
        let hour = if end_day == day {
            assert!(hour >= 1, "{r}");
            hour
        } else {
            assert_eq!(hour, 0, "only the last window ends on the next day: {r}");
            24
        };
        series
            .entry((day.to_string(), str_field(r, "category").to_string()))
            .or_default()
            .push((hour, int_field(r, "orders"), cents(str_field(r, "revenue"))));
    }
    assert_eq!(
        series.keys().collect::<Vec<_>>(),
        golden.keys().collect::<Vec<_>>()
    );
    for (key, windows) in &mut series {
        windows.sort();
        let hours: Vec<u32> = windows.iter().map(|w| w.0).collect();
        assert_eq!(hours, (1..=24).collect::<Vec<_>>(), "{key:?}");
        for pair in windows.windows(2) {
            assert!(
                pair[0].1 <= pair[1].1 && pair[0].2 <= pair[1].2,
                "{key:?}: revenue so far today never decreases: {pair:?}"
            );
        }
        let (_, day_orders, day_revenue) = golden[key];
        let last = windows.last().expect("24 windows");
        assert_eq!(
            (last.1, last.2),
            (day_orders, day_revenue),
            "{key:?}: the window ending at midnight holds the whole day"
        );
    }
}
