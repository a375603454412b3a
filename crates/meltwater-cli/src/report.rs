//! What a run prints: a progress line while it works, a summary when it is done.

use std::time::Duration;

use meltwater_batch::RunReport;
use meltwater_connectors::SourceMetrics;
use meltwater_plan::source::SourceRef;

/// Prints rows read so far every `every`, on stderr, until aborted.
pub fn spawn_progress(sources: Vec<SourceRef>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let rows: u64 = sources
                .iter()
                .map(|s| SourceMetrics::get(&s.metrics.rows))
                .sum();
            let bytes: u64 = sources
                .iter()
                .map(|s| SourceMetrics::get(&s.metrics.bytes))
                .sum();
            eprintln!(
                "… {:.0} s: read {} rows, {}",
                started.elapsed().as_secs_f64(),
                count(rows),
                size(bytes)
            );
        }
    })
}

pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `n thing` or `n things`, with `n` grouped by thousands.
pub fn plural(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{} {thing}s", count(n))
    }
}

pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_sources(sources: &[SourceRef]) {
    for s in sources {
        let m = &s.metrics;
        let skipped = SourceMetrics::get(&m.records_skipped);
        let mut line = format!(
            "read  {} ({}): {}, {}",
            s.name,
            s.connector,
            plural(SourceMetrics::get(&m.rows), "row"),
            size(SourceMetrics::get(&m.bytes))
        );
        let files = SourceMetrics::get(&m.files);
        if files > 0 {
            line.push_str(&format!(", {}", plural(files, "file")));
        }
        if skipped > 0 {
            line.push_str(&format!(
                ", {} skipped",
                plural(skipped, "malformed record")
            ));
        }
        println!("{line}");
    }
}

pub fn print_run(sources: &[SourceRef], report: &RunReport) {
    print_sources(sources);
    for i in &report.inserts {
        println!(
            "{} {}: {} in {:.2} s",
            i.operation,
            i.target,
            plural(i.rows, "row"),
            i.elapsed.as_secs_f64()
        );
    }
    print_commits(&report.commits);
    println!("done in {:.2} s", report.elapsed.as_secs_f64());
}

fn print_commits(commits: &[meltwater_iceberg::CommitSummary]) {
    for c in commits {
        match c.snapshot_id {
            Some(id) if c.already_committed => {
                println!("wrote {}: already committed as snapshot {id}", c.table)
            }
            Some(id) => println!(
                "wrote {}: {}, {}, {}, snapshot {id}",
                c.table,
                plural(c.rows, "row"),
                plural(c.files as u64, "file"),
                size(c.bytes)
            ),
            None => println!("wrote {}: no rows, no snapshot", c.table),
        }
    }
}

/// The summary of a stream run that ended (its sources ended).
pub fn print_stream(
    sources: &[SourceRef],
    sinks: &[crate::stream_cmd::ConnectorSink],
    report: &meltwater_stream::StreamReport,
) {
    print_sources(sources);
    print_commits(&report.commits);
    for s in sinks {
        println!(
            "wrote {} ({}): {}",
            s.target,
            s.connector,
            plural(s.rows(), "row")
        );
    }
    println!(
        "{}{}",
        plural(report.checkpoints, "checkpoint"),
        report
            .last_checkpoint
            .map(|c| format!(", last {c}"))
            .unwrap_or_default()
    );
    println!("done in {:.2} s", report.elapsed.as_secs_f64());
}
