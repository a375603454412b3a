//! Copy-on-write `MERGE` (the default `write.merge.mode`) on a real embedded SQLite
//! catalog: the commit replaces exactly the data files holding updated or deleted rows
//! (untouched files keep their paths; a file whose rows all go gets no replacement; a
//! `MERGE` that only inserts removes nothing), and it fails instead of losing a
//! concurrent change to a file it replaces (another rewrite of the file, or a position
//! delete against it), while a concurrent change to another file does not stop it.

mod common;
use common::catalog;
use common::row_level::{data_files, merge, rows, session, setup, sql};

use std::collections::BTreeSet;
use std::sync::Arc;

use meltwater_iceberg::rewrite::RowLevelMode::CopyOnWrite;
use meltwater_iceberg::{JobCommits, LakeCatalog};

/// The table of [`setup`] plus a second file in group 1 (id 7); returns the paths of
/// the three files: group 1's first, group 2's, group 1's second.
async fn three_files(catalog: &Arc<LakeCatalog>) -> (String, String, String) {
    setup(catalog).await;
    let first = data_files(catalog).await;
    let (ctx, commits) = session(catalog.clone(), "append-7").await;
    sql(&ctx, "INSERT INTO lake.db.t VALUES (7, 1, 70)").await;
    commits.commit_all().await.unwrap();
    let all = data_files(catalog).await;
    let path = |group: i64, rows: u64, in_first: bool| {
        let found: Vec<&String> = all
            .iter()
            .filter(|(p, (n, g))| *g == group && *n == rows && first.contains_key(*p) == in_first)
            .map(|(p, _)| p)
            .collect();
        assert_eq!(found.len(), 1, "{all:?}");
        found[0].clone()
    };
    (path(1, 3, true), path(2, 3, true), path(1, 1, false))
}

/// The paths of `after` not in `before`, and those of `before` not in `after`.
fn diff(
    before: &std::collections::BTreeMap<String, (u64, i64)>,
    after: &std::collections::BTreeMap<String, (u64, i64)>,
) -> (Vec<(u64, i64)>, BTreeSet<String>) {
    let mut added: Vec<(u64, i64)> = after
        .iter()
        .filter(|(p, _)| !before.contains_key(*p))
        .map(|(_, f)| *f)
        .collect();
    added.sort();
    let removed = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .cloned()
        .collect();
    (added, removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_replaces_only_the_files_with_changed_rows() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    let (_, group_2, group_1_second) = three_files(&catalog).await;

    // Updates id 4 of group 2's file and inserts id 9 into group 2: only that file goes;
    // its replacement holds its three rows (one updated), the insert lands beside it.
    let before = data_files(&catalog).await;
    let (ctx, commits) = session(catalog.clone(), "merge-1").await;
    merge(&ctx, CopyOnWrite, "(4, 2, 400), (9, 2, 900)")
        .await
        .unwrap();
    commits.commit_all().await.unwrap();
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 10),
            (2, 20),
            (3, 30),
            (4, 400),
            (5, 50),
            (6, 60),
            (7, 70),
            (9, 900)
        ]
    );
    let after = data_files(&catalog).await;
    let (added, removed) = diff(&before, &after);
    assert_eq!(
        removed,
        BTreeSet::from([group_2]),
        "{before:?} -> {after:?}"
    );
    let added_rows: u64 = added.iter().map(|(n, _)| n).sum();
    assert_eq!(added_rows, 4, "{added:?}");
    assert!(added.iter().all(|(_, g)| *g == 2), "{added:?}");

    // Deletes every row of group 1's second file: it goes without a replacement.
    let before = after;
    let (ctx, commits) = session(catalog.clone(), "merge-2").await;
    merge(&ctx, CopyOnWrite, "(7, 1, -1)").await.unwrap();
    commits.commit_all().await.unwrap();
    let after = data_files(&catalog).await;
    let (added, removed) = diff(&before, &after);
    assert_eq!(removed, BTreeSet::from([group_1_second]));
    assert_eq!(added, vec![]);
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 10),
            (2, 20),
            (3, 30),
            (4, 400),
            (5, 50),
            (6, 60),
            (9, 900)
        ]
    );

    // Only inserts: every file stays.
    let before = after;
    let (ctx, commits) = session(catalog.clone(), "merge-3").await;
    merge(&ctx, CopyOnWrite, "(10, 1, 100)").await.unwrap();
    commits.commit_all().await.unwrap();
    let after = data_files(&catalog).await;
    let (added, removed) = diff(&before, &after);
    assert_eq!(removed, BTreeSet::new());
    assert_eq!(added, vec![(1, 1)]);

    // Two source rows for one target row fail the statement.
    let (ctx, _) = session(catalog.clone(), "merge-4").await;
    let err = merge(&ctx, CopyOnWrite, "(1, 1, 100), (1, 1, 101)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MERGE INTO lake.db.t: a target row matches more than one source row"),
        "{err}"
    );
}

/// A copy-on-write `MERGE` of `source` planned by job run `run`, waiting to commit.
async fn planned_merge(catalog: &Arc<LakeCatalog>, run: &str, source: &str) -> Arc<JobCommits> {
    let (ctx, commits) = session(catalog.clone(), run).await;
    merge(&ctx, CopyOnWrite, source).await.unwrap();
    commits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_fails_when_another_writer_changed_a_file_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    three_files(&catalog).await;

    // Another job rewrites group 2's file while a MERGE of group 1's first file waits
    // to commit: different files, both land.
    let waiting = planned_merge(&catalog, "merge-1", "(1, 1, 100)").await;
    let other = planned_merge(&catalog, "merge-2", "(4, 2, 400)").await;
    other.commit_all().await.unwrap();
    waiting.commit_all().await.unwrap();
    let mut expected = vec![
        (1, 100),
        (2, 20),
        (3, 30),
        (4, 400),
        (5, 50),
        (6, 60),
        (7, 70),
    ];
    assert_eq!(rows(&catalog).await, expected);

    // Two MERGEs rewriting the same file: the second to commit would bring back the
    // first one's old row, so it fails and changes nothing.
    let waiting = planned_merge(&catalog, "merge-3", "(2, 1, 200)").await;
    let other = planned_merge(&catalog, "merge-4", "(3, 1, 300)").await;
    other.commit_all().await.unwrap();
    let err = waiting.commit_all().await.unwrap_err().to_string();
    assert!(err.contains("is no longer in the table"), "{err}");
    expected[2] = (3, 300);
    assert_eq!(rows(&catalog).await, expected);

    // A merge-on-read DELETE of a row of the file a MERGE rewrites: the rewrite would
    // carry the deleted row over, so the MERGE fails.
    let waiting = planned_merge(&catalog, "merge-5", "(5, 2, 500)").await;
    let (ctx, other) = session(catalog.clone(), "delete-6").await;
    sql(&ctx, "DELETE FROM lake.db.t WHERE id = 6").await;
    other.commit_all().await.unwrap();
    let err = waiting.commit_all().await.unwrap_err().to_string();
    assert!(err.contains("against a file this commit rewrites"), "{err}");
    expected.remove(5);
    assert_eq!(rows(&catalog).await, expected);

    // Planned again, it lands, and the deleted row stays deleted.
    let again = planned_merge(&catalog, "merge-6", "(5, 2, 500)").await;
    again.commit_all().await.unwrap();
    expected[4] = (5, 500);
    assert_eq!(rows(&catalog).await, expected);
}

/// An unpartitioned `lake.db.<name> (x BIGINT)`.
async fn create_plain(catalog: &Arc<LakeCatalog>, name: &str) {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let (_, commits) = session(catalog.clone(), "create").await;
    let schema = Schema::new(vec![Field::new("x", DataType::Int64, true)]);
    let creation = meltwater_iceberg::schema::table_creation(
        &format!("lake.db.{name}"),
        name,
        &schema,
        &[],
        Default::default(),
    )
    .unwrap();
    let provider =
        meltwater_iceberg::IcebergCatalogProvider::try_new("lake", catalog.clone(), commits)
            .await
            .unwrap();
    assert!(provider.create_table("db", creation, false).await.unwrap());
}

/// A run writing three tables commits them one after another (one snapshot each); when
/// the second fails, the error names the table committed before it, which stays, and
/// the one left uncommitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_says_which_tables_of_the_run_were_committed() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    three_files(&catalog).await;
    for name in ["a", "z"] {
        create_plain(&catalog, name).await;
    }
    let (ctx, waiting) = session(catalog.clone(), "three-tables").await;
    sql(&ctx, "INSERT INTO lake.db.a VALUES (1)").await;
    merge(&ctx, CopyOnWrite, "(1, 1, 100)").await.unwrap();
    sql(&ctx, "INSERT INTO lake.db.z VALUES (2)").await;
    // Another run rewrites the file the MERGE replaces, and commits first.
    planned_merge(&catalog, "other", "(2, 1, 200)")
        .await
        .commit_all()
        .await
        .unwrap();
    let err = waiting.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("iceberg table lake.db.t: the run's commits stopped here"),
        "{err}"
    );
    assert!(err.contains("is no longer in the table"), "{err}");
    assert!(
        err.contains("committed before it, and kept: lake.db.a (snapshot "),
        "{err}"
    );
    assert!(err.ends_with("not committed: lake.db.z"), "{err}");
}
