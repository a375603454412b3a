//! Merge-on-read `DELETE`, `UPDATE` and `MERGE` against concurrent writers, on a real embedded
//! SQLite catalog: the position deletes of a job whose data file was compacted away in
//! the meantime are refused (the rows would survive in the new file), an `UPDATE`
//! racing a delete of the same file is refused (the deleted row would come back), and two
//! racing `DELETE`s both land. A merge-on-read `MERGE` validates like an `UPDATE`.

mod common;
use common::catalog;
use common::row_level::{file_counts, ident, merge, rows, session, setup, sql};

use meltwater_iceberg::rewrite::RowLevelMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_in_between_refuses_the_position_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;
    let (ctx, commits) = session(catalog.clone(), "delete-1").await;
    sql(&ctx, "DELETE FROM lake.db.t WHERE id = 2").await;
    // Another writer first: group 1 gets a second file, then compaction merges it with
    // the file the DELETE read.
    let (other, other_commits) = session(catalog.clone(), "append-1").await;
    sql(&other, "INSERT INTO lake.db.t VALUES (7, 1, 70)").await;
    other_commits.commit_all().await.unwrap();
    let report = meltwater_iceberg::maintain::compact(&catalog, "lake.db.t", &ident(), None)
        .await
        .unwrap();
    assert_eq!(report.data_files_removed, 2);
    let err = commits.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("whose rows this commit deletes by position, after the job read the table"),
        "{err}"
    );
    // Nothing lost, nothing deleted.
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 10),
            (2, 20),
            (3, 30),
            (4, 40),
            (5, 50),
            (6, 60),
            (7, 70)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_racing_a_delete_of_its_rows_is_refused_and_deletes_race_fine() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;

    // Two DELETEs of group 1 planned on the same snapshot: both land.
    let (ctx1, commits1) = session(catalog.clone(), "delete-1").await;
    sql(&ctx1, "DELETE FROM lake.db.t WHERE id = 1").await;
    let (ctx2, commits2) = session(catalog.clone(), "delete-2").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 3").await;
    commits2.commit_all().await.unwrap();
    commits1.commit_all().await.unwrap();
    assert_eq!(
        rows(&catalog).await,
        vec![(2, 20), (4, 40), (5, 50), (6, 60)]
    );
    assert_eq!(file_counts(&catalog).await, (2, 2));

    // An UPDATE of group 2 while another job deletes a row of the same file: the row
    // would come back with its new value, so the UPDATE fails.
    let (ctx1, commits1) = session(catalog.clone(), "update-1").await;
    sql(&ctx1, "UPDATE lake.db.t SET v = v + 1 WHERE grp = 2").await;
    let (ctx2, commits2) = session(catalog.clone(), "delete-3").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 5").await;
    commits2.commit_all().await.unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("that may delete rows this update changes"),
        "{err}"
    );
    assert_eq!(rows(&catalog).await, vec![(2, 20), (4, 40), (6, 60)]);

    // The same UPDATE planned afterwards lands: new rows, old ones deleted by position,
    // no data file removed.
    let (ctx1, commits1) = session(catalog.clone(), "update-2").await;
    sql(&ctx1, "UPDATE lake.db.t SET v = v + 1 WHERE grp = 2").await;
    commits1.commit_all().await.unwrap();
    assert_eq!(rows(&catalog).await, vec![(2, 20), (4, 41), (6, 61)]);
    assert_eq!(file_counts(&catalog).await, (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_validates_like_an_update() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = catalog(dir.path()).await;
    setup(&catalog).await;

    // A MERGE updating a row of group 2's file while another job deletes another row of
    // that file: the MERGE adds rows, so it fails rather than risk bringing one back.
    let (ctx1, commits1) = session(catalog.clone(), "merge-1").await;
    merge(&ctx1, RowLevelMode::MergeOnRead, "(4, 2, 400), (9, 2, 900)")
        .await
        .unwrap();
    let (ctx2, commits2) = session(catalog.clone(), "delete-1").await;
    sql(&ctx2, "DELETE FROM lake.db.t WHERE id = 5").await;
    commits2.commit_all().await.unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("that may delete rows this update changes"),
        "{err}"
    );
    assert_eq!(
        rows(&catalog).await,
        vec![(1, 10), (2, 20), (3, 30), (4, 40), (6, 60)]
    );

    // A MERGE whose file is compacted before it commits: its deletes would miss the
    // rows in the new file, so it fails.
    let (ctx1, commits1) = session(catalog.clone(), "merge-2").await;
    merge(&ctx1, RowLevelMode::MergeOnRead, "(1, 1, 100)")
        .await
        .unwrap();
    let (other, other_commits) = session(catalog.clone(), "append-1").await;
    sql(&other, "INSERT INTO lake.db.t VALUES (7, 1, 70)").await;
    other_commits.commit_all().await.unwrap();
    meltwater_iceberg::maintain::compact(&catalog, "lake.db.t", &ident(), None)
        .await
        .unwrap();
    let err = commits1.commit_all().await.unwrap_err().to_string();
    assert!(
        err.contains("whose rows this commit deletes by position, after the job read the table"),
        "{err}"
    );

    // Two source rows for one target row fail the statement.
    let (ctx1, _) = session(catalog.clone(), "merge-3").await;
    let err = merge(&ctx1, RowLevelMode::MergeOnRead, "(1, 1, 100), (1, 1, 101)")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MERGE INTO lake.db.t: a target row matches more than one source row"),
        "{err}"
    );

    // Planned on the current snapshot, the MERGE lands as a row delta: the old rows
    // deleted by position in the files that held them, no data file removed.
    let before = file_counts(&catalog).await;
    let (ctx1, commits1) = session(catalog.clone(), "merge-4").await;
    merge(
        &ctx1,
        RowLevelMode::MergeOnRead,
        "(1, 1, 100), (6, 2, 600), (8, 1, 80)",
    )
    .await
    .unwrap();
    commits1.commit_all().await.unwrap();
    assert_eq!(
        rows(&catalog).await,
        vec![
            (1, 100),
            (2, 20),
            (3, 30),
            (4, 40),
            (6, 600),
            (7, 70),
            (8, 80)
        ]
    );
    let after = file_counts(&catalog).await;
    assert_eq!(after.1, before.1 + 2, "{before:?} -> {after:?}");
    assert!(after.0 > before.0, "{before:?} -> {after:?}");
}
