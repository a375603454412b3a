//! Commits of a job run: writers hand their data files here, and the runtime commits
//! them once the whole job has succeeded (batch: after the last stage; stream: when a
//! checkpoint completes), one snapshot per table.
//!
//! Each snapshot carries `meltwater.job-id` and `meltwater.run-id`. Before committing,
//! the table's history is searched for a snapshot with the same pair, so a commit
//! retried after an unknown outcome is not applied twice. Conflicts with other writers
//! (the catalog's compare-and-swap failed) reload the table and retry with backoff: an
//! append always rebases onto the new head.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iceberg::spec::{DataFile, TableMetadata};
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, ErrorKind, TableIdent};

use crate::committer::{is_commit_state_unknown, CommitOutcome, LakeCatalog};
use crate::error::{IcebergContext, IcebergError, Result};
use crate::snapshot::{produce, AddedFiles, CommitIds};
use crate::{SUMMARY_JOB_ID, SUMMARY_RUN_ID};

/// Who writes: recorded in every snapshot a run commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobIdentity {
    pub job_id: String,
    pub run_id: String,
}

struct PendingTable {
    catalog: Arc<LakeCatalog>,
    ident: TableIdent,
    files: AddedFiles,
}

/// Data files written by a run and not yet committed, per table.
pub struct JobCommits {
    identity: JobIdentity,
    pending: Mutex<BTreeMap<String, PendingTable>>,
    /// A cluster executor's copy: writers return their files in their output for the
    /// job's client to register, instead of registering them here.
    detached: bool,
}

impl std::fmt::Debug for JobCommits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCommits")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What one table's commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// `catalog.namespace.table`.
    pub table: String,
    /// The new snapshot, or the earlier one holding this run's commit when it was
    /// already applied; `None` when the run wrote no rows.
    pub snapshot_id: Option<i64>,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// The table already held this run's commit: nothing was written again.
    pub already_committed: bool,
    /// Commits sent to the catalog: more than 1 when other writers committed first (or
    /// an outcome was unknown) and the commit was rebuilt on the new head; 0 when none
    /// was needed.
    pub attempts: u32,
    /// Attempts whose outcome the catalog left unknown (a 5xx, a timeout or a connection
    /// lost after the commit was sent). With `already_committed`, the last attempt had
    /// landed: the reload after it found the run's marker, and nothing was sent again.
    pub unknown_outcomes: u32,
}

const MAX_ATTEMPTS: u32 = 8;

impl JobCommits {
    pub fn new(identity: JobIdentity) -> Self {
        Self {
            identity,
            pending: Mutex::new(BTreeMap::new()),
            detached: false,
        }
    }

    /// The registry of a process that writes files for a job committed elsewhere (a
    /// cluster's scheduler or executor): writers output their files as rows
    /// ([`crate::codec::written_files_schema`]) and nothing is registered here.
    pub fn detached(identity: JobIdentity) -> Self {
        Self {
            detached: true,
            ..Self::new(identity)
        }
    }

    /// Whether writers hand their files back in their output (see [`Self::detached`]).
    pub fn is_detached(&self) -> bool {
        self.detached
    }

    pub fn identity(&self) -> &JobIdentity {
        &self.identity
    }

    /// Registers data files written for `table` (its full name) by one writer task.
    pub fn add(
        &self,
        table: &str,
        catalog: Arc<LakeCatalog>,
        ident: TableIdent,
        files: Vec<DataFile>,
    ) {
        self.add_files(
            table,
            catalog,
            ident,
            AddedFiles {
                data: files,
                deletes: Vec::new(),
                ..Default::default()
            },
        )
    }

    /// Registers data and delete files written for `table` by one writer task.
    pub(crate) fn add_files(
        &self,
        table: &str,
        catalog: Arc<LakeCatalog>,
        ident: TableIdent,
        files: AddedFiles,
    ) {
        let mut pending = self.pending.lock().expect("commit registry poisoned");
        let entry = pending
            .entry(table.to_string())
            .or_insert_with(|| PendingTable {
                catalog,
                ident,
                files: AddedFiles::default(),
            });
        entry.files.data.extend(files.data);
        entry.files.deletes.extend(files.deletes);
        entry.files.replace_partitions |= files.replace_partitions;
        entry.files.removed.extend(files.removed);
        entry.files.referenced.extend(files.referenced);
        entry.files.read_snapshot = entry.files.read_snapshot.or(files.read_snapshot);
    }

    /// Tables with pending files.
    pub fn tables(&self) -> Vec<String> {
        self.pending
            .lock()
            .expect("commit registry poisoned")
            .keys()
            .cloned()
            .collect()
    }

    /// Drops everything pending (the run failed; written files are orphans that table
    /// maintenance removes).
    pub fn abort(&self) {
        self.pending
            .lock()
            .expect("commit registry poisoned")
            .clear();
    }

    /// Commits every table's pending files, one snapshot per table.
    pub async fn commit_all(&self) -> Result<Vec<CommitSummary>> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("commit registry poisoned"));
        let mut summaries: Vec<CommitSummary> = Vec::new();
        let mut pending = pending.into_iter();
        while let Some((name, table)) = pending.next() {
            match self.commit_table(&name, table).await {
                Ok(summary) => summaries.push(summary),
                Err(e) => {
                    // One snapshot per table, one after another: say exactly what the run
                    // left behind, so nobody assumes an all-or-nothing outcome.
                    let mut message = e.to_string();
                    let done: Vec<String> = summaries
                        .iter()
                        .filter_map(|s| {
                            s.snapshot_id
                                .map(|id| format!("{} (snapshot {id})", s.table))
                        })
                        .collect();
                    if !done.is_empty() {
                        message.push_str(&format!(
                            "; committed before it, and kept: {}",
                            done.join(", ")
                        ));
                    }
                    let rest: Vec<String> = pending.map(|(n, _)| n).collect();
                    if !rest.is_empty() {
                        message.push_str(&format!("; not committed: {}", rest.join(", ")));
                    }
                    return Err(IcebergError::Table {
                        table: name,
                        message: format!("the run's commits stopped here: {message}"),
                    });
                }
            }
        }
        Ok(summaries)
    }

    async fn commit_table(&self, name: &str, pending: PendingTable) -> Result<CommitSummary> {
        let properties = HashMap::from([
            (SUMMARY_JOB_ID.to_string(), self.identity.job_id.clone()),
            (SUMMARY_RUN_ID.to_string(), self.identity.run_id.clone()),
        ]);
        commit_files(
            pending.catalog.as_ref(),
            &pending.ident,
            name,
            pending.files,
            properties,
        )
        .await
    }
}

/// The snapshot of `metadata` whose summary holds every pair of `marker`, if any.
pub(crate) fn find_marked_snapshot(
    metadata: &TableMetadata,
    marker: &HashMap<String, String>,
) -> Option<i64> {
    metadata
        .snapshots()
        .find(|s| {
            let p = &s.summary().additional_properties;
            marker.iter().all(|(k, v)| p.get(k) == Some(v))
        })
        .map(|s| s.snapshot_id())
}

/// The current metadata of `ident` (named `name` in the error) in `catalog`.
pub(crate) async fn load_head(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    name: &str,
) -> Result<iceberg::table::Table> {
    catalog
        .load_table(ident)
        .await
        .context(|| format!("loading {name}"))
}

/// Loads the table's head, unless its history already holds a snapshot carrying
/// `marker` (an earlier attempt landed): then `summary` records that snapshot.
async fn load_uncommitted(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    name: &str,
    marker: &HashMap<String, String>,
    summary: &mut CommitSummary,
) -> Result<Option<iceberg::table::Table>> {
    let table = load_head(catalog, ident, name).await?;
    if let Some(id) = find_marked_snapshot(table.metadata(), marker) {
        summary.snapshot_id = Some(id);
        summary.already_committed = true;
        return Ok(None);
    }
    Ok(Some(table))
}

/// Commits `files` to the table `ident` (named `name` in summaries and errors) as one
/// fast-append snapshot carrying `properties` in its summary, unless the table's
/// history already holds a snapshot carrying all of them (then nothing is written and
/// the summary says `already_committed`). Compare-and-swap conflicts reload the table,
/// look for the marker again (the earlier attempt may have landed) and rebase onto
/// the new head, with exponential backoff. No files: no snapshot.
pub(crate) async fn commit_fast_append(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    name: &str,
    files: Vec<DataFile>,
    properties: HashMap<String, String>,
    table_properties: &HashMap<String, String>,
) -> Result<CommitSummary> {
    let mut summary = CommitSummary {
        table: name.to_string(),
        snapshot_id: None,
        files: files.len(),
        rows: files.iter().map(|f| f.record_count()).sum(),
        bytes: files.iter().map(|f| f.file_size_in_bytes()).sum(),
        already_committed: false,
        attempts: 0,
        unknown_outcomes: 0,
    };
    if files.is_empty() {
        return Ok(summary);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(table) = load_uncommitted(catalog, ident, name, &properties, &mut summary).await?
        else {
            return Ok(summary);
        };
        let tx = Transaction::new(&table);
        let action = tx
            .fast_append()
            .set_snapshot_properties(properties.clone())
            .add_data_files(files.clone());
        let mut tx = action
            .apply(tx)
            .context(|| format!("preparing the commit to {name}"))?;
        if !table_properties.is_empty() {
            let mut update = tx.update_table_properties();
            for (k, v) in table_properties {
                update = update.set(k.clone(), v.clone());
            }
            tx = update
                .apply(tx)
                .context(|| format!("preparing the commit to {name}"))?;
        }
        summary.attempts = attempt;
        match tx.commit(catalog).await {
            Ok(committed) => {
                summary.snapshot_id = committed
                    .metadata()
                    .current_snapshot()
                    .map(|s| s.snapshot_id());
                return Ok(summary);
            }
            Err(e)
                if attempt < MAX_ATTEMPTS
                    && (e.kind() == ErrorKind::CatalogCommitConflicts
                        || e.retryable()
                        || is_commit_state_unknown(&e)) =>
            {
                // Another writer moved the table: reload and rebase. After an unknown
                // outcome, the reload's marker check tells whether the commit landed.
                if is_commit_state_unknown(&e) {
                    summary.unknown_outcomes += 1;
                }
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
            }
            Err(e) => {
                return Err(e).context(|| format!("committing to {name} (attempt {attempt})"))
            }
        }
    }
}

/// Commits `files` to `ident` as one snapshot carrying `properties` (the job's marker):
/// a fast append when only data files are added, else a row delta built by
/// [`produce`] and swapped in through the catalog's committer. Skipped when the
/// table's history already holds a snapshot with the marker; conflicts reload and
/// rebuild on the new head (row deltas of upserts never conflict: blind equality
/// deletes make the last committer win per key, as in Flink's Iceberg sink).
pub(crate) async fn commit_files(
    catalog: &LakeCatalog,
    ident: &TableIdent,
    name: &str,
    files: AddedFiles,
    properties: HashMap<String, String>,
) -> Result<CommitSummary> {
    if !files.is_row_level() {
        return commit_fast_append(
            catalog,
            ident,
            name,
            files.data,
            properties,
            &files.table_properties,
        )
        .await;
    }
    let all = files.data.iter().chain(files.deletes.iter());
    let mut summary = CommitSummary {
        table: name.to_string(),
        snapshot_id: None,
        files: files.data.len() + files.deletes.len(),
        rows: files.data.iter().map(|f| f.record_count()).sum(),
        bytes: all.map(|f| f.file_size_in_bytes()).sum(),
        already_committed: false,
        attempts: 0,
        unknown_outcomes: 0,
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = files
        .removed
        .iter()
        .chain(&files.referenced)
        .find(|p| !seen.insert(p.as_str()))
    {
        // Every statement of a run reads the same snapshot, so two statements changing
        // rows of one file would each keep (or bring back) rows the other changed.
        return Err(IcebergError::Table {
            table: name.to_string(),
            message: format!(
                "two DELETE/UPDATE statements of this job rewrite the same file ({twice}); run them in separate jobs, or combine them into one statement"
            ),
        });
    }
    let mut ids: Option<CommitIds> = None;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(table) = load_uncommitted(catalog, ident, name, &properties, &mut summary).await?
        else {
            return Ok(summary);
        };
        let nothing_added =
            files.data.is_empty() && files.deletes.is_empty() && files.removed.is_empty();
        let unpartitioned = table.metadata().default_partition_spec().is_unpartitioned();
        if nothing_added && !(files.replace_partitions && unpartitioned) {
            // A dynamic overwrite without rows replaces no partition (of an
            // unpartitioned table, it empties the table).
            return Ok(summary);
        }
        let ids = ids.get_or_insert_with(|| CommitIds::new(table.metadata()));
        let built = produce(name, &table, &files, &properties, ids, attempt).await?;
        summary.attempts = attempt;
        let outcome = catalog.swap_metadata(&table, &built).await;
        match outcome {
            CommitOutcome::Committed => {
                summary.snapshot_id = Some(ids.snapshot_id);
                return Ok(summary);
            }
            CommitOutcome::Conflict | CommitOutcome::Unknown(_) if attempt < MAX_ATTEMPTS => {
                // Reload: the marker check above tells whether an unknown outcome landed.
                if matches!(outcome, CommitOutcome::Unknown(_)) {
                    summary.unknown_outcomes += 1;
                }
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
            }
            CommitOutcome::Conflict => {
                return Err(IcebergError::Table {
                    table: name.to_string(),
                    message: format!(
                        "the commit lost the race to other writers {attempt} times; giving up"
                    ),
                })
            }
            CommitOutcome::Unknown(e) => {
                // The last answer was lost too: look once more before saying what happened.
                summary.unknown_outcomes += 1;
                return match load_uncommitted(catalog, ident, name, &properties, &mut summary)
                    .await
                {
                    Ok(None) => Ok(summary),
                    Ok(Some(_)) => Err(IcebergError::Table {
                        table: name.to_string(),
                        message: format!(
                            "committing (attempt {attempt}): {e}; the table does not hold the commit: nothing was committed"
                        ),
                    }),
                    Err(reload) => {
                        let mut marker: Vec<String> =
                            properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        marker.sort();
                        Err(IcebergError::Table {
                            table: name.to_string(),
                            message: format!(
                                "the outcome of the commit is unknown: the answer to attempt {attempt} was lost ({e}) and the table could not be read again ({reload}); a snapshot with {} in the table's history is this commit",
                                marker.join(", ")
                            ),
                        })
                    }
                };
            }
            CommitOutcome::Failed(e) => {
                return Err(IcebergError::Table {
                    table: name.to_string(),
                    message: format!("committing (attempt {attempt}): {e}"),
                })
            }
        }
    }
}
