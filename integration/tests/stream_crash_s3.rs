//! Checkpoints in an S3-compatible object store: the crash scenario of `stream_crash.rs`
//! (a bounded stream job into two Iceberg tables, SIGKILLed at random moments and
//! restarted) with its checkpoints on a local moto server (`python -m moto.server`, from
//! the project venv), reached through a storage profile of the catalog file
//! (`SET 'execution.checkpointing.dir' = 'profile:chk'`, credentials from environment
//! variables the profile names). `meltwater checkpoints` lists them by URL, the last run
//! resumes with `--from-checkpoint s3://...`, and the tables must hold every row exactly
//! once. Old checkpoints are pruned from the bucket.
//!
//! Needs the venv's python (`MELTWATER_PYTHON`, always set by `.ci/run`) with moto; without
//! it the test says why on stderr and passes. `MELTWATER_CRASH_KILLS` sets the number of
//! kills (default 3).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meltwater_integration::crash::{assert_exactly_once, clock_seed, crash_job, kill_repeatedly};
use meltwater_integration::meltwater_with_env;

const ROWS: u64 = 40_000;
const BUCKET: &str = "meltwater-chk";
const ENV: [(&str, &str); 2] = [
    ("MELTWATER_TEST_S3_KEY", "testing"),
    ("MELTWATER_TEST_S3_SECRET", "testing"),
];

/// A moto S3 server on a free local port, killed when dropped (also when a test panics).
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start(python: &Path, log: &Path) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let log_file = std::fs::File::create(log).expect("moto log file");
        let child = Command::new(python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start moto with {}: {e}", python.display()));
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = moto.child.try_wait().expect("moto's status") {
                panic!(
                    "moto server exited ({status}) before listening: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto server did not listen on port {port} within 60 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Runs boto3 code with `s3`, a client for this server, in scope; returns its stdout.
    fn boto3(&self, python: &Path, code: &str) -> String {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
             aws_secret_access_key='testing', region_name='us-east-1')\n{code}",
            self.endpoint
        );
        let out = Command::new(python)
            .args(["-c", &script])
            .output()
            .expect("run boto3");
        assert!(
            out.status.success(),
            "boto3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// Every key in the bucket under `prefix`.
    fn keys(&self, python: &Path, prefix: &str) -> Vec<String> {
        self.boto3(
            python,
            &format!(
                "p = s3.get_paginator('list_objects_v2')\n\
                 for page in p.paginate(Bucket='{BUCKET}', Prefix='{prefix}'):\n    \
                 for o in page.get('Contents', []):\n        print(o['Key'])"
            ),
        )
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// The checkpoint numbers with a manifest among `keys` (`.../chk-<n>/_manifest.json`).
fn complete_checkpoints(keys: &[String]) -> Vec<u64> {
    let mut ids: Vec<u64> = keys
        .iter()
        .filter_map(|k| k.strip_suffix("/_manifest.json"))
        .filter_map(|d| d.rsplit('/').next()?.strip_prefix("chk-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// `meltwater checkpoints`' rows: (id, path).
fn listed_checkpoints(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let id = l.split_whitespace().next()?.parse().ok()?;
            Some((id, l.split_whitespace().last()?.to_string()))
        })
        .collect()
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn checkpoints_in_s3_survive_kills_and_resume_exactly_once() {
    let Some(python) = std::env::var_os("MELTWATER_PYTHON").map(PathBuf::from) else {
        // Straight to the process's stderr: `eprintln!` would be captured by the harness.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPING the S3 checkpoint test: MELTWATER_PYTHON is unset, so there is no \
             venv python to run the moto S3 server with (`.ci/run` sets it; or run \
             `bash integration/python/setup_venv.sh` and export MELTWATER_PYTHON=<venv>/bin/python)\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(&python, &dir.path().join("moto.log"));
    moto.boto3(&python, &format!("s3.create_bucket(Bucket='{BUCKET}')"));

    std::fs::write(
        dir.path().join("catalog.toml"),
        format!(
            r#"
[iceberg.lake]
type = "sqlite"
path = "meltwater-data/catalog.db"
warehouse = "meltwater-data/warehouse"

[storage.chk]
url = "s3://{BUCKET}/checkpoints"
endpoint = "{}"
region = "us-east-1"
access-key-id-env = "MELTWATER_TEST_S3_KEY"
secret-access-key-env = "MELTWATER_TEST_S3_SECRET"
allow-http = true
"#,
            moto.endpoint
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("job.sql"),
        crash_job(
            ROWS,
            "_s3",
            "SET 'execution.checkpointing.dir' = 'profile:chk';",
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("batch.sql"), crash_job(ROWS, "_batch", "")).unwrap();

    // A profile the catalog file does not define is refused before anything runs.
    let out = meltwater_with_env(
        dir.path(),
        &[
            "checkpoints",
            "job.sql",
            "--catalog",
            "catalog.toml",
            "--checkpoint-dir",
            "profile:nope",
        ],
        &ENV,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no storage profile 'nope'; profiles: chk"),
        "{stderr}"
    );

    let kills: usize = std::env::var("MELTWATER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut seed = clock_seed();
    eprintln!(
        "S3 crash test: {kills} kills, seed {seed}, moto at {}",
        moto.endpoint
    );
    let killed = kill_repeatedly(
        dir.path(),
        &[
            "run",
            "job.sql",
            "--mode",
            "stream",
            "--catalog",
            "catalog.toml",
        ],
        &ENV,
        kills,
        &mut seed,
    );
    assert!(
        killed >= 1,
        "the job finished before it could be killed once"
    );
    assert!(
        !dir.path().join("meltwater-data/checkpoints").exists(),
        "checkpoints went to the local default instead of S3"
    );

    // Listed by URL: a URL inside the profile's URL takes the profile's endpoint and keys.
    let stdout = ok(
        &meltwater_with_env(
            dir.path(),
            &[
                "checkpoints",
                "job.sql",
                "--catalog",
                "catalog.toml",
                "--checkpoint-dir",
                &format!("s3://{BUCKET}/checkpoints"),
            ],
            &ENV,
        ),
        "meltwater checkpoints",
    );
    let listed = listed_checkpoints(&stdout);
    assert!(
        stdout.contains(&format!("in s3://{BUCKET}/checkpoints/crash_s3")),
        "{stdout}"
    );
    let keys = moto.keys(&python, "checkpoints/crash_s3/");
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        complete_checkpoints(&keys),
        "the listed checkpoints are those with a manifest in the bucket:\n{stdout}\n{keys:#?}"
    );
    let (newest, url) = listed
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("no complete checkpoint in S3 after {killed} kills:\n{stdout}"));
    assert_eq!(
        url,
        format!("s3://{BUCKET}/checkpoints/crash_s3/chk-{newest}")
    );

    // The last run resumes from that checkpoint, named by its URL, at parallelism 3.
    let stdout = ok(
        &meltwater_with_env(
            dir.path(),
            &[
                "run",
                "job.sql",
                "--mode",
                "stream",
                "--catalog",
                "catalog.toml",
                "--parallelism",
                "3",
                "--from-checkpoint",
                &url,
            ],
            &ENV,
        ),
        "final run",
    );
    assert!(
        stdout.contains(&format!("restored from checkpoint {newest}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("in s3://{BUCKET}/checkpoints (profile:chk)")),
        "the run names its checkpoint store: {stdout}"
    );

    // Old checkpoints were pruned from the bucket (3 retained), and the final one is there.
    let keys = moto.keys(&python, "checkpoints/crash_s3/");
    let complete = complete_checkpoints(&keys);
    assert!(
        !complete.is_empty() && complete.len() <= 3,
        "complete checkpoints left in S3: {complete:?}"
    );
    assert!(*complete.last().unwrap() > newest, "{complete:?}");
    for k in &keys {
        let id: u64 = k
            .strip_prefix("checkpoints/crash_s3/chk-")
            .and_then(|r| r.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected key {k}"));
        assert!(
            id >= complete[0],
            "{k}: objects of pruned checkpoints are deleted (kept: {complete:?})"
        );
    }
    assert!(!dir.path().join("meltwater-data/checkpoints").exists());

    // The batch run of the same job gives the reference rows.
    ok(
        &meltwater_with_env(
            dir.path(),
            &[
                "run",
                "batch.sql",
                "--mode",
                "batch",
                "--catalog",
                "catalog.toml",
            ],
            &ENV,
        ),
        "batch run",
    );
    assert_exactly_once(&python, dir.path(), "_s3", ROWS);
}
