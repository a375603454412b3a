//! Helpers shared by the end-to-end tests in `tests/`.

pub mod crash;
pub mod fault_proxy;

use std::io::Write;
pub mod kafka;
pub mod schema_registry;
pub mod seaweedfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The `meltwater` binary, built by `cargo build -p meltwater-cli` into the target directory
/// this test executable lives in (`target/<profile>/deps/<test>` → `target/<profile>/meltwater`).
///
/// `CARGO_BIN_EXE_meltwater` exists only inside `meltwater-cli`, so tests here locate the
/// binary themselves. `MELTWATER_BIN` overrides the lookup. The build runs once per test
/// process, so an edited engine is never tested through a stale binary; cargo makes it a
/// no-op when nothing changed.
pub fn meltwater_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("MELTWATER_BIN") {
            return PathBuf::from(bin);
        }
        let exe = std::env::current_exe().expect("the test executable's path");
        // target/<profile>/deps/<test-exe>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test executable lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile> has a parent");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 profile directory name");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(repo_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "meltwater-cli",
                "--bin",
                "meltwater",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if profile != "debug" {
            build.args(["--profile", profile]);
        }
        // `cargo test` sets these for the test process; build scripts that track them (ring's
        // tracks CARGO_MANIFEST_DIR) would see a change and rebuild half the dependency graph,
        // and the next plain `cargo build` would rebuild it back.
        for (name, _) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if name.starts_with("CARGO_PKG_")
                || matches!(
                    name,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
            {
                build.env_remove(name);
            }
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run `cargo build -p meltwater-cli`: {e}"));
        assert!(
            status.success(),
            "`cargo build -p meltwater-cli` failed: {status}"
        );
        let bin = profile_dir.join(format!("meltwater{}", std::env::consts::EXE_SUFFIX));
        assert!(
            bin.is_file(),
            "cargo built meltwater-cli but {} is missing",
            bin.display()
        );
        bin
    })
}

/// The `+I[...]` rows a run's print sink wrote to stdout, without a subtask prefix
/// (`2> `), sorted.
pub fn printed_rows(stdout: &str) -> Vec<String> {
    let mut rows: Vec<String> = stdout
        .lines()
        .filter_map(|l| {
            let l = l.split_once("> ").map(|(_, r)| r).unwrap_or(l);
            l.starts_with("+I[").then(|| l.to_string())
        })
        .collect();
    rows.sort();
    rows
}

/// Runs `meltwater ARGS` in `dir` and asserts it succeeded (the failure shows both
/// outputs); returns stdout and stderr.
pub fn meltwater_ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = meltwater(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "meltwater {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}

/// Runs `meltwater ARGS` in `dir` with `env` set to abort the process at a checkpoint
/// (`MELTWATER_ABORT_AFTER_COMMIT`, `MELTWATER_ABORT_BEFORE_COMMIT`) and asserts that it
/// did (`message` is the abort's line on stderr).
pub fn meltwater_aborted(dir: &Path, args: &[&str], env: (&str, &str), message: &str) {
    let out = meltwater_with_env(dir, args, &[env]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(message),
        "expected the run to abort ({message}), it ended with {}:\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Runs `meltwater ARGS` with `dir` as its working directory.
pub fn meltwater(dir: &Path, args: &[&str]) -> Output {
    meltwater_with_env(dir, args, &[])
}

/// Runs `meltwater ARGS` in `dir` with the environment variables `env` added.
pub fn meltwater_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(meltwater_bin())
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", meltwater_bin().display()))
}

/// The Python interpreter with pyiceberg and DuckDB: `MELTWATER_PYTHON`, else the project's
/// venv, created on first use by `integration/python/setup_venv.sh` (about 30 s once; a
/// no-op after), so `cargo test --workspace` runs the interop checks on a fresh machine.
///
/// Panics when `MELTWATER_PYTHON` names no file, or when the venv cannot be made under CI
/// (`CI=true`), so interop checks never vanish there silently. Elsewhere, when the venv
/// cannot be made (no network to PyPI), it says loudly on stderr (past the test harness's
/// capture) that `what` is skipped and returns `None`.
pub fn interop_python(what: &str) -> Option<PathBuf> {
    static SETUP: OnceLock<Option<PathBuf>> = OnceLock::new();
    if let Some(explicit) = std::env::var_os("MELTWATER_PYTHON").map(PathBuf::from) {
        assert!(
            explicit.is_file(),
            "MELTWATER_PYTHON points at '{}', which does not exist",
            explicit.display()
        );
        return Some(explicit);
    }
    // No interpreter given: create (or reuse) the project's venv, as `.ci/run` does.
    SETUP
        .get_or_init(|| {
            let script = repo_root().join("integration/python/setup_venv.sh");
            let out = Command::new("bash").arg(&script).stdin(std::process::Stdio::null()).output();
            let help = format!("`bash {}` failed", script.display());
            match out {
                Ok(out) if out.status.success() => {
                    let venv = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_string();
                    Some(PathBuf::from(venv).join("bin/python"))
                }
                Ok(out) => {
                    let _ = writeln!(std::io::stderr(), "{help}: {}", String::from_utf8_lossy(&out.stderr));
                    None
                }
                Err(e) => {
                    let _ = writeln!(std::io::stderr(), "{help}: {e}");
                    None
                }
            }
        })
        .clone()
        .or_else(|| {
            let help = "no Python with pyiceberg and DuckDB: run `bash integration/python/setup_venv.sh`, or point MELTWATER_PYTHON at a python that has them";
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{help}");
            }
            // Straight to the process's stderr: `eprintln!` would be captured by the harness.
            let _ = writeln!(std::io::stderr(), "\n!!! SKIPPING {what}: {help}\n");
            None
        })
}

/// `read_iceberg.py` for `namespace.table` of the catalog `lake` under
/// `<dir>/meltwater-data`, without the reader or `--snapshots` argument.
fn read_iceberg_command(python: &Path, dir: &Path, table: &str) -> Command {
    let data = dir.join("meltwater-data");
    let mut command = Command::new(python);
    command
        .arg(repo_root().join("integration/python/read_iceberg.py"))
        .arg("--catalog-db")
        .arg(data.join("catalog.db"))
        .arg("--warehouse")
        .arg(data.join("warehouse"))
        .args(["--catalog-name", "lake", "--table", table]);
    command
}

/// Reads `namespace.table` of the catalog `lake` under `<dir>/meltwater-data` with
/// `integration/python/read_iceberg.py --reader READER`: its rows as sorted JSON lines.
pub fn read_iceberg(python: &Path, dir: &Path, table: &str, reader: &str) -> Vec<String> {
    let out = read_iceberg_command(python, dir, table)
        .args(["--reader", reader])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "read_iceberg.py --reader {reader} --table {table} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("read_iceberg.py prints UTF-8")
        .lines()
        .map(str::to_string)
        .collect()
}

/// The snapshots of `namespace.table` in the catalog `lake` under `<dir>/meltwater-data`
/// as pyiceberg lists them (`read_iceberg.py --snapshots`), oldest first.
pub fn iceberg_snapshots(python: &Path, dir: &Path, table: &str) -> Vec<serde_json::Value> {
    let mut snapshots = read_iceberg_json(python, dir, table, "--snapshots");
    snapshots.sort_by_key(|s| s["sequence_number"].as_i64());
    snapshots
}

/// The live files of the current snapshot of `namespace.table` in the catalog `lake` under
/// `<dir>/meltwater-data` (`read_iceberg.py --files`): content, path, record count,
/// partition, and for position-delete files their field ids, whether they are sorted and
/// the data rows they delete.
pub fn iceberg_files(python: &Path, dir: &Path, table: &str) -> Vec<serde_json::Value> {
    read_iceberg_json(python, dir, table, "--files")
}

/// The JSON lines `read_iceberg.py MODE` prints for `namespace.table` (`--snapshots`,
/// `--files`).
fn read_iceberg_json(python: &Path, dir: &Path, table: &str, mode: &str) -> Vec<serde_json::Value> {
    let out = read_iceberg_command(python, dir, table)
        .arg(mode)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "read_iceberg.py {mode} --table {table} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Copies the directory tree `from` to `to` (created if needed).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
    {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}
