//! What `meltwater` says when a job, its data or its invocation is wrong: a non-zero exit
//! and one line on stderr, `error: ...`, naming what to look at (file:line:column, table,
//! option, path, column). Also the happy ends of the same commands (`validate`, `explain`,
//! `'error.policy' = 'skip'`). `docs/errors.md` shows these messages to users.

use std::path::{Path, PathBuf};
use std::process::Output;

use meltwater_integration::{meltwater, repo_root};
use tempfile::TempDir;

/// A fresh working directory holding `job.sql` with `sql` as its text.
fn job_dir(sql: &str) -> TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("job.sql"), sql).expect("write job.sql");
    dir
}

/// The quickstart's orders, by absolute path.
fn orders_path() -> PathBuf {
    repo_root().join("examples/quickstart/data/orders")
}

/// `CREATE TABLE orders` over the quickstart's CSV files, on one line.
fn orders_ddl() -> String {
    format!(
        "CREATE TABLE orders (order_id BIGINT, customer_id BIGINT, category STRING, \
         amount DECIMAL(10, 2), order_time TIMESTAMP(3)) WITH ('connector' = 'filesystem', \
         'path' = '{}', 'format' = 'csv', 'csv.header' = 'true');",
        orders_path().display()
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `meltwater ARGS` in `dir`, asserts it failed (exit code 1) with exactly one line on
/// stderr, and returns that line without its `error: ` prefix.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = meltwater(dir, args);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "meltwater {} should fail with exit code 1 but exited {}:\nstdout:\n{}\nstderr:\n{stderr}",
        args.join(" "),
        out.status,
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "meltwater {}: expected one line on stderr, got:\n{stderr}",
        args.join(" ")
    );
    lines[0]
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("stderr line does not start with 'error: ': {stderr}"))
        .to_string()
}

/// Runs `meltwater ARGS` in `dir` and asserts it succeeded; returns stdout.
fn succeeds(dir: &Path, args: &[&str]) -> String {
    let out: Output = meltwater(dir, args);
    assert!(
        out.status.success(),
        "meltwater {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

const RUN: &[&str] = &["run", "job.sql", "--mode", "batch"];

/// The tables `meltwater catalog tables` lists in `dir`.
fn tables(dir: &Path) -> Vec<String> {
    succeeds(dir, &["catalog", "tables"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn syntax_error_names_file_line_and_column() {
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         \n\
         INSERT INTO lake.t.out\n\
         SELECT category, COUNT(*) AS n\n\
         FROM orders\n\
         GROUP BY category HAVING;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    // `;` is the 25th character of line 7.
    let expected = "job.sql:7:25: Expected: an expression, found: ;";
    assert_eq!(fails(dir.path(), RUN), expected);
    assert_eq!(fails(dir.path(), &["validate", "job.sql"]), expected);
    assert_eq!(
        fails(dir.path(), &["explain", "job.sql", "--mode", "batch"]),
        expected
    );
    // Nothing ran, so nothing was created.
    assert_eq!(tables(dir.path()), Vec::<String>::new());
}

#[test]
fn syntax_error_position_is_in_the_file_even_after_parameter_substitution() {
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         INSERT INTO lake.t.out SELECT category, COUNT(*) FROM orders \
         WHERE category = '${{cat}}' AND ) GROUP BY category;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    let line3 = sql.lines().nth(2).expect("line 3");
    let column = line3.find("AND )").expect("the error") + "AND ".len() + 1;
    let out = fails(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--param",
            "cat=a-category-name-much-longer-than-the-placeholder",
        ],
    );
    assert_eq!(
        out,
        format!("job.sql:3:{column}: Expected: an expression, found: )")
    );
}

#[test]
fn parameter_without_value_is_named_with_its_position() {
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         INSERT INTO lake.t.out\n\
         SELECT category, COUNT(*) FROM orders\n\
         WHERE order_time >= TIMESTAMP '${{start_day}} 00:00:00'\n\
         GROUP BY category;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    // `${start_day}` starts at column 32 of line 5.
    let expected = "job.sql:5:32: parameter 'start_day' has no value; pass --param start_day=VALUE";
    assert_eq!(fails(dir.path(), RUN), expected);
    assert_eq!(
        fails(
            dir.path(),
            &["run", "job.sql", "--mode", "batch", "--param", "other=1"]
        ),
        expected
    );
    assert_eq!(fails(dir.path(), &["validate", "job.sql"]), expected);
    assert_eq!(tables(dir.path()), Vec::<String>::new());

    // With the value the job runs, and the value reached the filter: the last two of the
    // three days still hold every category.
    let out = succeeds(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "batch",
            "--param",
            "start_day=2026-03-02",
        ],
    );
    assert!(out.contains("insert lake.t.out: 5 rows in "), "{out}");
    assert!(
        out.contains("read  orders (filesystem): 1,500 rows"),
        "{out}"
    );
}

#[test]
fn malformed_param_argument_is_rejected() {
    let dir = job_dir("");
    let out = meltwater(
        dir.path(),
        &["run", "job.sql", "--mode", "batch", "--param", "novalue"],
    );
    // A usage error (clap's): exit code 2.
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(
            "error: invalid value 'novalue' for '--param <NAME=VALUE>': expected NAME=VALUE, got 'novalue'"
        ),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn unknown_connector_option_names_table_option_and_valid_options() {
    let sql = format!(
        "CREATE TABLE orders (order_id BIGINT, category STRING)\n\
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv', 'csv.headers' = 'true');\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         INSERT INTO lake.t.out SELECT category, COUNT(*) FROM orders GROUP BY category;\n",
        orders_path().display()
    );
    let dir = job_dir(&sql);
    let expected = "job.sql:1:1: table 'orders': unknown option 'csv.headers' for connector \
                    'filesystem' (valid options: 'connector', 'path', 'format', 'error.policy', \
                    'source.monitor-interval', 'scan.watermark.idle-timeout', \
                    'scan.late-records', 'scan.late-records.table', \
                    'csv.field-delimiter', 'csv.quote-character', 'csv.header', 'csv.null-literal')";
    assert_eq!(fails(dir.path(), RUN), expected);
    assert_eq!(fails(dir.path(), &["validate", "job.sql"]), expected);
}

#[test]
fn unknown_connector_lists_known_ones() {
    let dir = job_dir(
        "CREATE TABLE orders (order_id BIGINT) WITH ('connector' = 'kafkaa', 'topic' = 'x');\n\
         INSERT INTO lake.t.out SELECT order_id FROM orders;\n",
    );
    let msg = fails(dir.path(), RUN);
    assert!(
        msg.starts_with(
            "job.sql:1:1: table 'orders': unknown connector 'kafkaa' (known connectors: "
        ),
        "{msg}"
    );
    assert!(
        msg.contains("filesystem") && msg.contains("datagen"),
        "{msg}"
    );
}

#[test]
fn missing_input_path_is_named() {
    let dir = job_dir("");
    let missing = dir.path().join("no-such-dir/orders");
    let sql = format!(
        "CREATE TABLE orders (order_id BIGINT, category STRING)\n\
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         INSERT INTO lake.t.out SELECT category, COUNT(*) FROM orders GROUP BY category;\n",
        missing.display()
    );
    std::fs::write(dir.path().join("job.sql"), &sql).expect("write job.sql");
    let msg = fails(dir.path(), RUN);
    assert_eq!(
        msg,
        format!(
            "job.sql:4:1: table 'orders': path '{}' does not exist",
            missing.display()
        )
    );

    // A glob that matches nothing says so.
    let glob = dir.path().join("*.csv");
    let sql = sql.replace(&missing.display().to_string(), &glob.display().to_string());
    std::fs::write(dir.path().join("job.sql"), &sql).expect("write job.sql");
    assert_eq!(
        fails(dir.path(), RUN),
        format!(
            "job.sql:4:1: table 'orders': path '{}' matches no files",
            glob.display()
        )
    );
}

#[test]
fn missing_job_file_is_named() {
    let dir = job_dir("");
    let msg = fails(dir.path(), &["run", "nope.sql", "--mode", "batch"]);
    assert!(msg.starts_with("cannot read job file nope.sql: "), "{msg}");
}

#[test]
fn insert_type_mismatch_names_both_columns_and_types_and_suggests_cast() {
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.totals (category STRING, total BIGINT);\n\
         INSERT INTO lake.t.totals SELECT category, SUM(amount) FROM orders GROUP BY category;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    let expected = "job.sql:3:1: INSERT INTO lake.t.totals: column 2 'sum(orders.amount)' of the \
                    query has type DECIMAL(20, 2) but column 'total' of the table has type \
                    BIGINT; add a CAST";
    assert_eq!(fails(dir.path(), &["validate", "job.sql"]), expected);
    assert_eq!(fails(dir.path(), RUN), expected);

    // Columns out of order: the first mismatch is reported.
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.swapped (n INT, category STRING);\n\
         INSERT INTO lake.t.swapped SELECT category, order_id FROM orders;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    assert_eq!(
        fails(dir.path(), &["validate", "job.sql"]),
        "job.sql:3:1: INSERT INTO lake.t.swapped: column 1 'category' of the query has type \
         STRING but column 'n' of the table has type INT; add a CAST"
    );
}

#[test]
fn insert_column_count_mismatch_names_the_table_columns() {
    let sql = format!(
        "{}\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (category STRING, n BIGINT);\n\
         INSERT INTO lake.t.out SELECT category FROM orders;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    assert_eq!(
        fails(dir.path(), &["validate", "job.sql"]),
        "job.sql:3:1: INSERT INTO lake.t.out: the query yields 1 columns but the table takes 2 \
         (category, n)"
    );
}

#[test]
fn insert_into_unknown_table_says_how_to_create_it() {
    let sql = format!(
        "{}\nINSERT INTO lake.t.nothere SELECT order_id FROM orders;\n",
        orders_ddl()
    );
    let dir = job_dir(&sql);
    assert_eq!(
        fails(dir.path(), RUN),
        "job.sql:2:1: INSERT INTO lake.t.nothere: no such table; create it with CREATE TABLE \
         [IF NOT EXISTS] in the job"
    );
}

/// A directory with `bad.csv` (line 4 has a non-numeric amount) and `bad.json` (line 3 is
/// cut short), and a job reading one of them into `lake.t.<sink>`.
fn malformed_inputs(format: &str, extra_options: &str, sink: &str) -> TempDir {
    let dir = job_dir("");
    std::fs::write(
        dir.path().join("bad.csv"),
        "id,name,amount\n1,a,1.50\n2,b,2.50\n3,c,notanumber\n4,d,4.00\n",
    )
    .expect("write bad.csv");
    std::fs::write(
        dir.path().join("bad.json"),
        "{\"id\":1,\"name\":\"a\",\"amount\":1.5}\n\
         {\"id\":2,\"name\":\"b\",\"amount\":2.5}\n\
         {\"id\":3,\"name\":\"c\",\n\
         {\"id\":4,\"name\":\"d\",\"amount\":4.0}\n",
    )
    .expect("write bad.json");
    let header = if format == "csv" {
        ", 'csv.header' = 'true'"
    } else {
        ""
    };
    let sql = format!(
        "CREATE TABLE src (id BIGINT, name STRING, amount DECIMAL(10, 2))\n\
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = '{format}'{header}{extra_options});\n\
         CREATE TABLE IF NOT EXISTS lake.t.{sink} (id BIGINT, name STRING, amount DECIMAL(10, 2));\n\
         INSERT INTO lake.t.{sink} SELECT id, name, amount FROM src;\n",
        dir.path().join(format!("bad.{format}")).display()
    );
    std::fs::write(dir.path().join("job.sql"), sql).expect("write job.sql");
    dir
}

#[test]
fn malformed_csv_record_names_file_line_and_column() {
    let dir = malformed_inputs("csv", "", "out");
    let file = dir.path().join("bad.csv");
    assert_eq!(
        fails(dir.path(), RUN),
        format!(
            "job.sql:4:1: table 'src': malformed record at {} line 4, column 'amount': cannot \
             parse 'notanumber' as DECIMAL(10, 2)",
            file.display()
        )
    );
}

#[test]
fn malformed_json_record_names_file_and_line() {
    let dir = malformed_inputs("json", "", "out");
    let file = dir.path().join("bad.json");
    let msg = fails(dir.path(), RUN);
    let prefix = format!(
        "job.sql:4:1: table 'src': malformed record at {} line 3: invalid JSON",
        file.display()
    );
    assert!(
        msg.starts_with(&prefix),
        "{msg}\nshould start with\n{prefix}"
    );

    // A well-formed line with a value of the wrong type names the column.
    std::fs::write(
        &file,
        "{\"id\":1,\"name\":\"a\",\"amount\":1.5}\n{\"id\":\"x\",\"name\":\"b\",\"amount\":2.5}\n",
    )
    .expect("rewrite bad.json");
    assert_eq!(
        fails(dir.path(), RUN),
        format!(
            "job.sql:4:1: table 'src': malformed record at {} line 2, column 'id': cannot parse \
             'x' as BIGINT",
            file.display()
        )
    );
}

#[test]
fn error_policy_skip_succeeds_and_reports_skipped_records() {
    for format in ["csv", "json"] {
        let dir = malformed_inputs(format, ", 'error.policy' = 'skip'", "kept");
        let out = succeeds(dir.path(), RUN);
        let read = out
            .lines()
            .find(|l| l.starts_with("read  src (filesystem): "))
            .unwrap_or_else(|| panic!("{format}: no read line in:\n{out}"));
        assert!(
            read.starts_with("read  src (filesystem): 3 rows, ")
                && read.ends_with(", 1 file, 1 malformed record skipped"),
            "{format}: {read}"
        );
        assert!(
            out.contains("insert lake.t.kept: 3 rows in "),
            "{format}: {out}"
        );
        assert!(
            out.contains("wrote lake.t.kept: 3 rows, "),
            "{format}: {out}"
        );
    }
}

#[test]
fn invalid_error_policy_value_is_rejected() {
    let dir = malformed_inputs("csv", ", 'error.policy' = 'ignore'", "out");
    let msg = fails(dir.path(), &["validate", "job.sql"]);
    assert!(
        msg.starts_with(
            "job.sql:1:1: table 'src': invalid value 'ignore' for option 'error.policy': "
        ),
        "{msg}"
    );
}

const UNBOUNDED_DATAGEN: &str = "\
CREATE TABLE gen (id BIGINT, amount DECIMAL(10, 2))
WITH ('connector' = 'datagen', 'fields.amount.min' = '1', 'fields.amount.max' = '10');
CREATE TABLE IF NOT EXISTS lake.t.gen_out (id BIGINT, amount DECIMAL(10, 2));
INSERT INTO lake.t.gen_out SELECT id, amount FROM gen;
";

const UNBOUNDED_REASON: &str = "table 'gen' (datagen connector) is unbounded because \
    'number-of-rows' is not set; batch mode reads bounded sources only (run with --mode stream, \
    or bound the source)";

#[test]
fn batch_mode_rejects_an_unbounded_datagen_with_the_reason() {
    let dir = job_dir(UNBOUNDED_DATAGEN);
    assert_eq!(
        fails(dir.path(), RUN),
        format!("job.sql:4:1: {UNBOUNDED_REASON}")
    );

    // validate accepts the job (it may run in stream mode) but says batch mode would not.
    let out = succeeds(dir.path(), &["validate", "job.sql"]);
    assert!(
        out.contains(&format!("job.sql:4:1: batch mode: {UNBOUNDED_REASON}")),
        "{out}"
    );
    // explain shows the logical plan and why there is no batch plan.
    let out = succeeds(dir.path(), &["explain", "job.sql", "--mode", "batch"]);
    assert!(out.contains("-- logical plan\n"), "{out}");
    assert!(
        out.contains(&format!("-- rejected in batch mode: {UNBOUNDED_REASON}")),
        "{out}"
    );
    assert!(!out.contains("-- physical plan"), "{out}");
}

#[test]
fn batch_rejection_happens_before_any_catalog_change() {
    let dir = job_dir(UNBOUNDED_DATAGEN);
    fails(dir.path(), RUN);
    assert_eq!(
        tables(dir.path()),
        Vec::<String>::new(),
        "a job rejected at planning must not create its sink tables"
    );
}

#[test]
fn validate_a_good_job_changes_no_catalog() {
    let dir = tempfile::tempdir().expect("a temp dir");
    meltwater_integration::copy_dir(&repo_root().join("examples"), &dir.path().join("examples"));
    let out = succeeds(
        dir.path(),
        &["validate", "examples/quickstart/daily_revenue.sql"],
    );
    assert_eq!(
        out,
        "examples/quickstart/daily_revenue.sql: ok (1 statements, 1 inserts, sources: orders \
         (filesystem))\nwould create table lake.shop.daily_revenue\n"
    );
    assert_eq!(tables(dir.path()), Vec::<String>::new());
    let warehouse = dir.path().join("meltwater-data/warehouse");
    let entries = std::fs::read_dir(&warehouse)
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "validate wrote into {}", warehouse.display());
    // Still nothing after a second validate: "would create" again.
    let out = succeeds(
        dir.path(),
        &["validate", "examples/quickstart/daily_revenue.sql"],
    );
    assert!(
        out.contains("would create table lake.shop.daily_revenue"),
        "{out}"
    );
}

/// Checks `meltwater explain` output of the quickstart job at parallelism 3.
fn assert_quickstart_explain(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "== INSERT INTO lake.shop.daily_revenue (examples/quickstart/daily_revenue.sql:31:1)",
        "{out}"
    );
    assert_eq!(lines[1], "-- logical plan", "{out}");
    assert!(
        lines[2].starts_with("Dml: op=[Insert Into] table=[lake.shop.daily_revenue]"),
        "{out}"
    );
    assert!(
        out.contains("WindowTvf: TUMBLE(size=86400000ms) on orders.order_time"),
        "{out}"
    );
    assert!(out.contains("TableScan: orders"), "{out}");
    let stages = lines
        .iter()
        .position(|l| *l == "-- stages (batch, 3 stages)")
        .unwrap_or_else(|| panic!("no stages header with 3 stages:\n{out}"));
    assert!(stages > 3, "{out}");
    let plan = lines[stages + 1..].join("\n");
    assert!(
        plan.starts_with("stage 1/3: 2 tasks, reads sources, writes hash [window_start@0, window_end@1, category@2] into 3 partitions"),
        "{out}"
    );
    assert!(
        plan.contains(
            "stage 2/3: 3 tasks, reads stage 1, writes hash [category@1] into 3 partitions"
        ),
        "{out}"
    );
    assert!(
        plan.contains("stage 3/3: 3 tasks, reads stage 2, final"),
        "{out}"
    );
    assert!(
        plan.contains("  IcebergWriteExec: table=lake.shop.daily_revenue"),
        "{out}"
    );
    assert!(
        plan.contains("AggregateExec: mode=FinalPartitioned"),
        "{out}"
    );
    assert!(
        plan.contains("ShuffleReadExec: stage=1, partitions=3"),
        "{out}"
    );
    assert!(
        plan.contains("FileScanExec: table=orders, format=csv, files=2, partitions=2"),
        "{out}"
    );
}

/// `explain --pipelined`: DataFusion's physical plan, with its partition counts.
fn assert_quickstart_pipelined(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    let physical = lines
        .iter()
        .position(|l| *l == "-- physical plan (batch, pipelined, 3 output partitions)")
        .unwrap_or_else(|| panic!("no physical plan header with 3 partitions:\n{out}"));
    let plan = lines[physical + 1..].join("\n");
    assert!(
        plan.starts_with("IcebergWriteExec: table=lake.shop.daily_revenue"),
        "{out}"
    );
    assert!(
        plan.contains("RepartitionExec: partitioning=Hash("),
        "{out}"
    );
    assert!(plan.contains(", 3), input_partitions="), "{out}");
}

#[test]
fn explain_prints_logical_and_physical_plans_with_partition_counts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    meltwater_integration::copy_dir(&repo_root().join("examples"), &dir.path().join("examples"));
    // The sink table exists: explain of a job that creates it is a known bug (below).
    succeeds(
        dir.path(),
        &[
            "run",
            "examples/quickstart/daily_revenue.sql",
            "--mode",
            "batch",
        ],
    );
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "examples/quickstart/daily_revenue.sql",
            "--mode",
            "batch",
            "--parallelism",
            "3",
        ],
    );
    assert_quickstart_explain(&out);
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "examples/quickstart/daily_revenue.sql",
            "--mode",
            "batch",
            "--parallelism",
            "3",
            "--pipelined",
        ],
    );
    assert_quickstart_pipelined(&out);
}

#[test]
fn explain_works_before_the_sink_table_exists() {
    let dir = tempfile::tempdir().expect("a temp dir");
    meltwater_integration::copy_dir(&repo_root().join("examples"), &dir.path().join("examples"));
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "examples/quickstart/daily_revenue.sql",
            "--mode",
            "batch",
            "--parallelism",
            "3",
        ],
    );
    assert_quickstart_explain(&out);
    assert_eq!(tables(dir.path()), Vec::<String>::new());
}

#[test]
fn catalog_describe_unknown_table_names_it() {
    let dir = job_dir("");
    let msg = fails(dir.path(), &["catalog", "describe", "lake.shop.nope"]);
    assert!(msg.contains("lake.shop.nope"), "{msg}");
    assert_eq!(
        msg,
        "no table lake.shop.nope; `meltwater catalog tables` lists the tables"
    );
    let msg = fails(dir.path(), &["catalog", "snapshots", "lake.shop.nope"]);
    assert!(msg.contains("lake.shop.nope"), "{msg}");

    assert_eq!(
        fails(dir.path(), &["catalog", "describe", "nocat.shop.nope"]),
        "no catalog 'nocat'; catalogs: lake"
    );
    assert_eq!(
        fails(dir.path(), &["catalog", "describe", "nope"]),
        "'nope' is not a table name of the form catalog.namespace.table"
    );
}

#[test]
fn catalog_describe_unknown_table_message_is_plain() {
    let dir = job_dir("");
    let msg = fails(dir.path(), &["catalog", "describe", "lake.shop.nope"]);
    assert!(
        !msg.contains("TableIdent") && !msg.contains("NamespaceIdent") && !msg.contains("=>"),
        "{msg}"
    );
}

#[test]
fn stream_mode_rejects_an_updating_insert_into_an_iceberg_table_and_creates_nothing() {
    let dir = job_dir(&format!(
        "{}\nCREATE TABLE lake.db.totals (category STRING, n BIGINT);\n\
         INSERT INTO lake.db.totals SELECT category, COUNT(*) FROM orders GROUP BY category;\n",
        orders_ddl()
    ));
    let msg = fails(dir.path(), &["run", "job.sql", "--mode", "stream"]);
    assert!(
        msg.starts_with(
            "job.sql:3:1: INSERT INTO lake.db.totals: the query produces an updating stream"
        ),
        "{msg}"
    );
    assert!(msg.contains("aggregate over a window"), "{msg}");
    assert!(
        tables(dir.path()).is_empty(),
        "nothing may be created: {:?}",
        tables(dir.path())
    );
    // The same job runs in batch mode.
    succeeds(dir.path(), &["run", "job.sql", "--mode", "batch"]);
}

#[test]
fn explain_stream_prints_the_dataflow() {
    let dir = job_dir(&format!(
        "{}\nCREATE TABLE lake.db.daily (w TIMESTAMP(3), category STRING, n BIGINT);\n\
         INSERT INTO lake.db.daily SELECT window_start, category, COUNT(*) \
         FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' DAY)) \
         GROUP BY window_start, window_end, category;\n",
        orders_ddl()
    ));
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "job.sql",
            "--mode",
            "stream",
            "--parallelism",
            "3",
        ],
    );
    assert!(out.contains("== dataflow (stream, parallelism 3)"), "{out}");
    assert!(out.contains("source: orders (filesystem)"), "{out}");
    assert!(out.contains("HASH[orders.category]"), "{out}");
    assert!(
        out.contains("window aggregate TUMBLE(size=86400000ms)"),
        "{out}"
    );
    assert!(out.contains("sink: iceberg lake.db.daily"), "{out}");
    assert!(
        out.contains("state=accumulators per open window and key"),
        "{out}"
    );
    assert!(tables(dir.path()).is_empty());
}

#[test]
fn stream_operator_settings_set_parallelism_and_state_names() {
    let job = |settings: &str| {
        format!(
            "{settings}\n{}\n\
             CREATE TABLE IF NOT EXISTS lake.db.daily_${{mode}} (w TIMESTAMP(3), category STRING, n BIGINT);\n\
             INSERT INTO lake.db.daily_${{mode}} SELECT window_start, category, COUNT(*) \
             FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' DAY)) \
             GROUP BY window_start, window_end, category;\n",
            orders_ddl()
        )
    };
    // A typo names the operators the job has.
    let dir = job_dir(&job("SET 'operator.s1-window-agg-9.parallelism' = '3';"));
    let msg = fails(
        dir.path(),
        &[
            "explain", "job.sql", "--mode", "stream", "--param", "mode=s",
        ],
    );
    assert!(
        msg.contains("the job has no operator 's1-window-agg-9'"),
        "{msg}"
    );
    assert!(msg.contains("s1-window-agg-4"), "{msg}");

    let dir = job_dir(&job("SET 'operator.s1-window-agg-4.parallelism' = '3';\n\
         SET 'operator.s1-window-agg-4.uid' = 'daily-counts';"));
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "job.sql",
            "--mode",
            "stream",
            "--parallelism",
            "2",
            "--param",
            "mode=s",
        ],
    );
    // The aggregate and the operators chained after it run with 3 subtasks, under the uid.
    assert!(out.contains("task 2 (parallelism 3):"), "{out}");
    assert!(out.contains("[daily-counts] window aggregate"), "{out}");
    assert!(out.contains("[s1-sink-6] sink: iceberg lake.db.daily_s <- s1-calc-5 FORWARD (chained)\n      parallelism=3"), "{out}");

    let stream = run_in_mode(dir.path(), "stream");
    let batch = run_in_mode(dir.path(), "batch");
    assert!(
        stream.contains("wrote lake.db.daily_stream: 15 rows"),
        "{stream}"
    );
    assert!(
        batch.contains("wrote lake.db.daily_batch: 15 rows"),
        "{batch}"
    );
    // The aggregate's state is stored under its uid.
    let manifest = std::fs::read_to_string(
        dir.path()
            .join("meltwater-data/checkpoints/job/chk-1/_manifest.json"),
    )
    .expect("the final checkpoint's manifest");
    assert!(manifest.contains("\"daily-counts\""), "{manifest}");
    assert!(!manifest.contains("\"s1-window-agg-4\""), "{manifest}");
}

#[test]
fn checkpoint_store_errors_name_the_profile_or_variable_and_change_nothing() {
    let dir = job_dir(
        "SET 'execution.checkpointing.dir' = 'profile:nope';\n\
         CREATE TABLE gen (x BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '5');\n\
         CREATE TABLE IF NOT EXISTS lake.t.out (x BIGINT);\n\
         INSERT INTO lake.t.out SELECT x FROM gen;\n",
    );
    let e = fails(dir.path(), &["run", "job.sql", "--mode", "stream"]);
    assert_eq!(
        e,
        "checkpoint store profile:nope: no storage profile 'nope': the catalog file defines none ([storage.<name>] tables)"
    );
    assert_eq!(tables(dir.path()), Vec::<String>::new());

    std::fs::write(
        dir.path().join("catalog.toml"),
        "[iceberg.lake]\ntype = 'sqlite'\npath = 'meltwater-data/catalog.db'\n\
         warehouse = 'meltwater-data/warehouse'\n\n\
         [storage.chk]\nurl = 's3://bucket/chk'\nendpoint = 'http://127.0.0.1:9'\n\
         access-key-id-env = 'MELTWATER_TEST_NEVER_SET_KEY'\nallow-http = true\n",
    )
    .unwrap();
    let e = fails(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "stream",
            "--catalog",
            "catalog.toml",
            "--checkpoint-dir",
            "profile:chk/team",
        ],
    );
    assert_eq!(
        e,
        "checkpoint store s3://bucket/chk/team: storage profile 'chk': access-key-id-env names the environment variable MELTWATER_TEST_NEVER_SET_KEY, which is not set"
    );
    let e = fails(
        dir.path(),
        &[
            "checkpoints",
            "job.sql",
            "--catalog",
            "catalog.toml",
            "--checkpoint-dir",
            "gs://bucket/chk",
        ],
    );
    assert_eq!(
        e,
        "checkpoint store gs://bucket/chk: unsupported storage URL scheme 'gs://' (supported: a local path, file://, s3://, memory://, or profile:<name>)"
    );
    assert_eq!(
        tables(dir.path()),
        Vec::<String>::new(),
        "nothing was created"
    );
}

#[test]
fn explain_stream_shows_a_join_with_both_exchanges_and_its_state() {
    let dir = job_dir(&format!(
        "{}\nCREATE TABLE IF NOT EXISTS lake.db.pairs (a BIGINT, b BIGINT);\n\
         INSERT INTO lake.db.pairs SELECT x.order_id, y.order_id FROM orders x \
         JOIN orders y ON x.customer_id = y.customer_id AND x.amount < y.amount;\n",
        orders_ddl()
    ));
    let out = succeeds(
        dir.path(),
        &[
            "explain",
            "job.sql",
            "--mode",
            "stream",
            "--parallelism",
            "2",
        ],
    );
    assert!(
        out.contains("Inner join on x.customer_id = y.customer_id with a residual condition"),
        "{out}"
    );
    assert!(out.contains("HASH[x.customer_id]"), "{out}");
    assert!(out.contains("HASH[y.customer_id]"), "{out}");
    assert!(
        out.contains("output=append-only state=rows of both inputs by key [x.customer_id] with their match counts"),
        "{out}"
    );
    // An outer join's output is updating: the planner refuses it into a table without a
    // primary key, saying why.
    std::fs::write(
        dir.path().join("outer.sql"),
        format!(
            "{}\nCREATE TABLE IF NOT EXISTS lake.db.pairs (a BIGINT, b BIGINT);\n\
             INSERT INTO lake.db.pairs SELECT x.order_id, y.order_id FROM orders x \
             LEFT JOIN orders y ON x.customer_id = y.customer_id;\n",
            orders_ddl()
        ),
    )
    .unwrap();
    let msg = fails(dir.path(), &["explain", "outer.sql", "--mode", "stream"]);
    assert!(msg.contains("updating stream"), "{msg}");
}

#[test]
fn stream_window_aggregate_spills_over_its_memory_budget_with_the_same_rows() {
    let dir = job_dir(&format!(
        "SET 'state.memory-budget' = '1 KiB';\n{}\n\
         CREATE TABLE IF NOT EXISTS lake.db.hourly_${{mode}} (w TIMESTAMP(3), category STRING, n BIGINT, s DECIMAL(20, 2));\n\
         INSERT INTO lake.db.hourly_${{mode}} SELECT window_start, category, COUNT(*), SUM(amount) \
         FROM TABLE(HOP(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' HOUR, INTERVAL '3' HOUR)) \
         GROUP BY window_start, window_end, category;\n",
        orders_ddl()
    ));
    spills_with_the_rows_of_the_batch_run(dir.path(), "hourly");
}

/// A window aggregate keeping its state per window and key (COUNT(DISTINCT ...)) spills
/// its key groups under the budget and writes the rows of the batch run.
#[test]
fn stream_distinct_window_aggregate_spills_over_its_memory_budget_with_the_same_rows() {
    let dir = job_dir(&format!(
        "SET 'state.memory-budget' = '1 KiB';\n{}\n\
         CREATE TABLE IF NOT EXISTS lake.db.daily_${{mode}} (w TIMESTAMP(3), category STRING, customers BIGINT, n BIGINT);\n\
         INSERT INTO lake.db.daily_${{mode}} SELECT window_start, category, COUNT(DISTINCT customer_id), COUNT(*) \
         FROM TABLE(TUMBLE(TABLE orders, DESCRIPTOR(order_time), INTERVAL '1' DAY)) \
         GROUP BY window_start, window_end, category;\n",
        orders_ddl()
    ));
    spills_with_the_rows_of_the_batch_run(dir.path(), "daily");
}

/// Runs the job in `dir` in both modes: the stream run reports spilled state, and both
/// write as many rows to `lake.db.<table>_<mode>`.
fn spills_with_the_rows_of_the_batch_run(dir: &Path, table: &str) {
    let stream = run_in_mode(dir, "stream");
    let batch = run_in_mode(dir, "batch");
    assert!(stream.contains("spilled "), "{stream}");
    assert!(stream.contains("over its memory budget"), "{stream}");
    let rows = |out: &str, mode: &str| -> String {
        let table = format!("lake.db.{table}_{mode}");
        out.lines()
            .find(|l| l.starts_with(&format!("wrote {table}: ")))
            .unwrap_or_else(|| panic!("no line for {table} in:\n{out}"))
            .split(" rows")
            .next()
            .unwrap()
            .replace(mode, "")
    };
    assert_eq!(rows(&stream, "stream"), rows(&batch, "batch"));
}

/// Runs `job.sql` in `mode` at parallelism 2 with `--param mode=<mode>` (so the job can
/// name its tables per mode) and returns stdout.
fn run_in_mode(dir: &Path, mode: &str) -> String {
    succeeds(
        dir,
        &[
            "run",
            "job.sql",
            "--mode",
            mode,
            "--parallelism",
            "2",
            "--param",
            &format!("mode={mode}"),
        ],
    )
}
