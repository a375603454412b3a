//! What a run prints: a progress line while it works, a summary when it is done.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use meltwater_batch::stage::{JobProgress, StageProgress};

use meltwater_batch::RunReport;
use meltwater_connectors::SourceMetrics;
use meltwater_plan::source::SourceRef;

/// The progress display of a batch run; `finish` stops it.
pub struct Progress {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

fn read_so_far(sources: &[SourceRef]) -> (u64, u64) {
    let rows = sources
        .iter()
        .map(|s| SourceMetrics::get(&s.metrics.rows))
        .sum();
    let bytes = sources
        .iter()
        .map(|s| SourceMetrics::get(&s.metrics.bytes))
        .sum();
    (rows, bytes)
}

fn stage_message(p: &StageProgress) -> String {
    let mut m = format!(
        "{} rows, {} written",
        count(StageProgress::get(&p.rows)),
        size(StageProgress::get(&p.bytes_written))
    );
    let spilled = StageProgress::get(&p.spilled_bytes);
    if spilled > 0 {
        m.push_str(&format!(", {} spilled", size(spilled)));
    }
    let retries = StageProgress::get(&p.retries);
    if retries > 0 {
        m.push_str(&format!(
            ", {retries} {}",
            if retries == 1 { "retry" } else { "retries" }
        ));
    }
    m
}

/// Shows progress on stderr until finished: on a terminal, a bar per stage (tasks done
/// of the stage's tasks, rows, bytes written and spilled) under a line of what the
/// sources read; otherwise a line every `every`.
pub fn spawn_progress(sources: Vec<SourceRef>, job: Arc<JobProgress>, every: Duration) -> Progress {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let handle = if std::io::stderr().is_terminal() {
        tokio::spawn(async move {
            let multi = MultiProgress::new();
            let read = multi.add(ProgressBar::new_spinner());
            read.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} read {msg}")
                    .expect("template"),
            );
            let style =
                ProgressStyle::with_template("  {prefix:<28} [{bar:24}] {pos}/{len} tasks  {msg}")
                    .expect("template")
                    .progress_chars("=> ");
            let mut bars: Vec<ProgressBar> = Vec::new();
            loop {
                let (rows, bytes) = read_so_far(&sources);
                read.set_message(format!("{} rows, {}", count(rows), size(bytes)));
                read.tick();
                let stages = job.stages();
                for (i, p) in stages.iter().enumerate() {
                    if i == bars.len() {
                        let bar = multi.add(ProgressBar::new(p.tasks));
                        bar.set_style(style.clone());
                        bar.set_prefix(format!("stage {}/{} {}", p.stage, p.stages, p.statement));
                        bars.push(bar);
                    }
                    let bar = &bars[i];
                    if !bar.is_finished() {
                        bar.set_position(StageProgress::get(&p.tasks_done));
                        bar.set_message(stage_message(p));
                        if p.is_done() {
                            bar.finish();
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopped.changed() => break,
                }
            }
            for b in &bars {
                if !b.is_finished() {
                    b.abandon();
                }
            }
            read.finish_and_clear();
        })
    } else {
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => break,
                }
                let (rows, bytes) = read_so_far(&sources);
                let mut line = format!(
                    "… {:.0} s: read {} rows, {}",
                    started.elapsed().as_secs_f64(),
                    count(rows),
                    size(bytes)
                );
                if let Some(p) = job.stages().iter().rev().find(|p| !p.is_done()) {
                    line.push_str(&format!(
                        "; stage {}/{} ({}): {}/{} tasks, {}",
                        p.stage,
                        p.stages,
                        p.statement,
                        StageProgress::get(&p.tasks_done),
                        p.tasks,
                        stage_message(p)
                    ));
                }
                eprintln!("{line}");
            }
        })
    };
    Progress { stop, handle }
}

/// The stages a staged run ran, as a table.
pub fn print_stages(stages: &[Arc<StageProgress>]) {
    if stages.is_empty() {
        return;
    }
    let rows: Vec<[String; 8]> = stages
        .iter()
        .map(|p| {
            [
                format!("{}/{}", p.stage, p.stages),
                p.statement.clone(),
                format!("{}/{}", StageProgress::get(&p.tasks_done), p.tasks),
                count(StageProgress::get(&p.rows)),
                size(StageProgress::get(&p.bytes_written)),
                size(StageProgress::get(&p.spilled_bytes)),
                StageProgress::get(&p.retries).to_string(),
                p.elapsed
                    .lock()
                    .expect("stage progress")
                    .map(|d| format!("{:.2} s", d.as_secs_f64()))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = [
        "stage",
        "statement",
        "tasks",
        "rows out",
        "shuffled",
        "spilled",
        "retries",
        "time",
    ];
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            // Text columns left-aligned, numbers right-aligned.
            if i == 1 {
                out.push_str(&format!("{c:<w$}  "));
            } else {
                out.push_str(&format!("{c:>w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
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
        let dead = SourceMetrics::get(&m.records_dead_lettered);
        if dead > 0 {
            line.push_str(&format!(
                ", {} sent to the dead-letter topic",
                plural(dead, "malformed record")
            ));
        }
        println!("{line}");
    }
}

pub fn print_run(sources: &[SourceRef], report: &RunReport) {
    print_sources(sources);
    if report.spilled_bytes > 0 {
        println!(
            "spilled {} to disk over the memory limit",
            size(report.spilled_bytes)
        );
    }
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
            // This run's own commit landed, but the catalog's answer was lost.
            Some(id) if c.already_committed && c.unknown_outcomes > 0 => println!(
                "wrote {}: {}, {}, {}, snapshot {id} (the answer to attempt {} was lost; \
                 the reload found the commit in the table, not sent again)",
                c.table,
                plural(c.rows, "row"),
                plural(c.files as u64, "file"),
                size(c.bytes),
                c.attempts
            ),
            Some(id) if c.already_committed => {
                println!("wrote {}: already committed as snapshot {id}", c.table)
            }
            Some(id) => println!(
                "wrote {}: {}, {}, {}, snapshot {id}{}",
                c.table,
                plural(c.rows, "row"),
                plural(c.files as u64, "file"),
                size(c.bytes),
                match (c.attempts, c.unknown_outcomes) {
                    (0 | 1, _) => String::new(),
                    (n, 0) => format!(" (on attempt {n}: the table changed meanwhile)"),
                    (n, lost) => format!(
                        " (on attempt {n}: {} lost, the commit had not landed)",
                        plural(lost.into(), "answer")
                    ),
                }
            ),
            None => println!("wrote {}: no rows, no snapshot", c.table),
        }
    }
}

/// Exactly-once kafka sinks: records and transactions per topic; a restored
/// checkpoint's transaction found committed is said so.
fn print_kafka_commits(commits: &[meltwater_connectors::kafka::KafkaCommit]) {
    let mut per_topic: std::collections::BTreeMap<(&str, &str), (u64, u64)> =
        std::collections::BTreeMap::new();
    for c in commits {
        if c.already_committed {
            println!(
                "wrote {}: checkpoint {}'s transaction to topic {} was already committed",
                c.table, c.checkpoint_id, c.topic
            );
            continue;
        }
        let e = per_topic.entry((&c.table, &c.topic)).or_default();
        e.0 += c.records;
        e.1 += 1;
    }
    for ((table, topic), (records, transactions)) in per_topic {
        println!(
            "wrote {table}: {} to topic {topic} in {}, exactly once",
            plural(records, "record"),
            plural(transactions, "transaction")
        );
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
    print_kafka_commits(&report.kafka_commits);
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
