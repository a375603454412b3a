//! Time travel on Iceberg tables: `FOR SYSTEM_VERSION AS OF <snapshot>` and `FOR
//! SYSTEM_TIME AS OF TIMESTAMP '...'` read a table as it was, in batch and stream mode,
//! with the snapshot ids and commit times pyiceberg reports; an unknown snapshot or a
//! time before the first commit is a clear error, and a past snapshot cannot be written.

use meltwater_integration::{
    iceberg_snapshots, interop_python, meltwater, meltwater_ok, printed_rows,
};

fn run(dir: &std::path::Path, args: &[&str]) -> String {
    meltwater_ok(dir, args).0
}

fn failure(dir: &std::path::Path, args: &[&str]) -> String {
    let out = meltwater(dir, args);
    assert!(!out.status.success(), "meltwater {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_table_is_read_as_of_a_snapshot_or_a_time_in_both_modes() {
    let Some(python) = interop_python("the time-travel test") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("write.sql"),
        "CREATE TABLE IF NOT EXISTS lake.tt.items (id BIGINT, name STRING);\n\
         INSERT INTO lake.tt.items VALUES (${a}, 'n${a}'), (${b}, 'n${b}');\n",
    )
    .unwrap();
    for (x, y) in [(1, 2), (3, 4)] {
        let (a, b) = (format!("a={x}"), format!("b={y}"));
        let args = [
            "run",
            "write.sql",
            "--mode",
            "batch",
            "--param",
            &a,
            "--param",
            &b,
        ];
        run(d, &args);
    }
    let snapshots = iceberg_snapshots(&python, d, "tt.items");
    assert_eq!(snapshots.len(), 2);
    let first = snapshots[0]["snapshot_id"].as_i64().unwrap();
    let second_ms = snapshots[1]["timestamp_ms"].as_i64().unwrap();
    let first_ms = snapshots[0]["timestamp_ms"].as_i64().unwrap();

    std::fs::write(
        d.join("version.sql"),
        "CREATE TABLE out (id BIGINT, name STRING) WITH ('connector' = 'print');\n\
         INSERT INTO out SELECT id, name FROM lake.tt.items FOR SYSTEM_VERSION AS OF ${s};\n",
    )
    .unwrap();
    std::fs::write(
        d.join("time.sql"),
        "CREATE TABLE out (id BIGINT, name STRING) WITH ('connector' = 'print');\n\
         INSERT INTO out SELECT i.id, i.name FROM lake.tt.items\n  FOR SYSTEM_TIME AS OF TIMESTAMP '${t}' AS i;\n",
    )
    .unwrap();
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S%.3f")
            .to_string()
    };
    let first_rows = vec!["+I[1, n1]".to_string(), "+I[2, n2]".to_string()];
    let all_rows: Vec<String> = (1..=4).map(|i| format!("+I[{i}, n{i}]")).collect();
    for mode in ["batch", "stream"] {
        // A stream job resumes from its last checkpoint: each run here starts afresh.
        let read = |file: &str, param: &str| {
            let mut args = vec!["run", file, "--mode", mode, "--param", param];
            if mode == "stream" {
                args.push("--fresh");
            }
            printed_rows(&run(d, &args))
        };
        let s = format!("s={first}");
        assert_eq!(
            read("version.sql", &s),
            first_rows,
            "{mode}, snapshot {first}"
        );
        // Between the two commits: the first snapshot; at the second: all rows.
        let t = format!("t={}", at(first_ms + (second_ms - first_ms) / 2));
        assert_eq!(read("time.sql", &t), first_rows, "{mode}, {t}");
        let t = format!("t={}", at(second_ms));
        assert_eq!(read("time.sql", &t), all_rows, "{mode}, {t}");
    }

    let e = failure(
        d,
        &["run", "version.sql", "--mode", "batch", "--param", "s=42"],
    );
    assert!(e.contains("lake.tt.items: no snapshot 42"), "{e}");
    assert!(e.contains(&first.to_string()), "{e}");
    let t = format!("t={}", at(first_ms - 60_000));
    let e = failure(d, &["run", "time.sql", "--mode", "batch", "--param", &t]);
    assert!(e.contains("no snapshot at or before"), "{e}");
    let e = failure(
        d,
        &["run", "time.sql", "--mode", "batch", "--param", "t=soon"],
    );
    assert!(
        e.contains("time.sql:3:") && e.contains("'soon' is not a timestamp"),
        "{e}"
    );
    std::fs::write(
        d.join("write_past.sql"),
        format!("INSERT INTO lake.tt.items FOR SYSTEM_VERSION AS OF {first} VALUES (9, 'x');\n"),
    )
    .unwrap();
    let e = failure(d, &["run", "write_past.sql", "--mode", "batch"]);
    assert!(e.contains("cannot be written to"), "{e}");
}
