//! [`DataGenSource`]: a datagen table as a streaming source.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use tokio::time::Instant;

use super::Generator;
use crate::stream::{Split, SplitPosition, SplitReader, StreamSource};
use crate::{ConnectorError, Result, SourceMetrics};

/// Rows of one block of an unbounded split (see [`DataGenSource`]).
/// Fixed: positions in checkpoints depend on it.
pub const UNBOUNDED_BLOCK_ROWS: u64 = 1024;

/// How far a paced reader may fall behind before it stops trying to catch up.
const MAX_BACKLOG: Duration = Duration::from_secs(1);

/// A datagen table as a streaming source.
///
/// - **Splits.** `'source.splits'` = `S` splits (default
///   [`DEFAULT_SOURCE_SPLITS`](super::DEFAULT_SOURCE_SPLITS)) with ids `rows-<i>-of-<S>`.
///   The count is part of the id, so a checkpoint taken with another `'source.splits'`
///   names splits this source does not have (opening one is an error) instead of being
///   read as positions of different row sets. The split set is fixed.
/// - **Bounded** (`N` rows): split `i` holds the contiguous rows
///   `[N·i/S, N·(i+1)/S)`; some are empty when `N < S`. The splits together hold rows
///   `0..N`, each once.
/// - **Unbounded**: the row numbers are cut into blocks of [`UNBOUNDED_BLOCK_ROWS`];
///   split `i` holds blocks `i, i + S, i + 2S, ...` in that order, without end.
/// - **Positions.** A split's position is the number of its rows emitted; the row at
///   position `p` is the `p`-th row number of the split, so a split resumed at `p`
///   continues at exactly the next row. The values are those
///   [`DataGenTable::generate`](super::DataGenTable::generate) gives the same row
///   numbers, so a stream run and a batch run of a bounded table see the same rows.
/// - **Pace.** An unbounded source, and a bounded one whose `'rows-per-second'` is set,
///   emits `rows-per-second` rows per second over all splits: each split paces
///   `rows-per-second / S` from the moment it is opened, in batches of about a tenth of a
///   second of its rate (at most `batch_size` rows, at least one row), so a low rate
///   still emits steadily. A reader that falls more than a second behind (its consumer
///   was slow) does not catch up in a burst: it continues at the rate from then on. An
///   unpaced bounded split emits batches of `batch_size` rows as fast as it is read.
#[derive(Debug)]
pub struct DataGenSource {
    table: String,
    generator: Arc<Generator>,
    /// Rows of a bounded table.
    rows: Option<u64>,
    splits: u64,
    /// Rows per second over all splits; `None`: unpaced.
    rate: Option<u64>,
    metrics: Arc<SourceMetrics>,
}

impl DataGenSource {
    pub(super) fn new(
        table: String,
        generator: Arc<Generator>,
        rows: Option<u64>,
        splits: u64,
        rate: Option<u64>,
        metrics: Arc<SourceMetrics>,
    ) -> Self {
        Self {
            table,
            generator,
            rows,
            splits: splits.max(1),
            rate,
            metrics,
        }
    }

    /// The id of split `index`.
    fn split_id(&self, index: u64) -> String {
        format!("rows-{index}-of-{}", self.splits)
    }

    /// The index of the split named `id`, if it is one of this source's.
    fn split_index(&self, id: &str) -> Option<u64> {
        let (index, count) = id.strip_prefix("rows-")?.split_once("-of-")?;
        let index: u64 = index.parse().ok()?;
        let count: u64 = count.parse().ok()?;
        (count == self.splits && index < count && self.split_id(index) == id).then_some(index)
    }

    /// The rows of split `index` of a bounded table of `n` rows.
    fn bounded_rows(&self, n: u64, index: u64) -> Range<u64> {
        let (n, s, i) = (u128::from(n), u128::from(self.splits), u128::from(index));
        ((n * i / s) as u64)..((n * (i + 1) / s) as u64)
    }
}

#[async_trait]
impl StreamSource for DataGenSource {
    /// The table schema projected; indices out of range are left out (opening a split
    /// with such a projection is an error).
    fn schema(&self, projection: Option<&[usize]>) -> SchemaRef {
        let schema = &self.generator.schema;
        match projection {
            None => schema.clone(),
            Some(p) => Arc::new(Schema::new_with_metadata(
                p.iter()
                    .filter_map(|&i| schema.fields().get(i).cloned())
                    .collect::<Vec<_>>(),
                schema.metadata().clone(),
            )),
        }
    }

    async fn discover_splits(&self) -> Result<Vec<Split>> {
        Ok((0..self.splits)
            .map(|i| Split {
                id: self.split_id(i),
            })
            .collect())
    }

    fn discovery_interval_ms(&self) -> Option<u64> {
        None
    }

    async fn open(
        &self,
        split: &Split,
        position: SplitPosition,
        projection: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Box<dyn SplitReader>> {
        let index = self
            .split_index(&split.id)
            .ok_or_else(|| ConnectorError::Unsupported {
                table: self.table.clone(),
                message: format!(
                    "'{}' is not a split of this datagen source (its splits are rows-0-of-{s} \
                     to rows-{}-of-{s}; was 'source.splits' changed?)",
                    split.id,
                    self.splits - 1,
                    s = self.splits
                ),
            })?;
        if let Some(p) = projection {
            // The schema's own error for an index out of range.
            self.generator.schema.project(p)?;
        }
        let batch_size = batch_size.max(1) as u64;
        let layout = match self.rows {
            Some(n) => Layout::Bounded(self.bounded_rows(n, index)),
            None => Layout::Unbounded {
                index,
                splits: self.splits,
            },
        };
        let (batch_rows, pacer) = match self.rate {
            Some(rate) => {
                let per_split = rate as f64 / self.splits as f64;
                let chunk = ((per_split / 10.0) as u64).clamp(1, batch_size);
                (chunk, Some(Pacer::new(per_split)))
            }
            None => (batch_size, None),
        };
        Ok(Box::new(DataGenSplitReader {
            generator: self.generator.clone(),
            projection: projection.map(<[usize]>::to_vec),
            metrics: self.metrics.clone(),
            layout,
            position,
            batch_rows,
            pacer,
        }))
    }
}

/// Which row numbers a split holds.
#[derive(Debug)]
enum Layout {
    /// These rows.
    Bounded(Range<u64>),
    /// Blocks `index, index + splits, ...` of [`UNBOUNDED_BLOCK_ROWS`] rows.
    Unbounded { index: u64, splits: u64 },
}

impl Layout {
    /// The row numbers at positions `[position, position + len)` of the split, as
    /// ranges of consecutive rows (empty past the end of a bounded split).
    fn rows(&self, position: u64, len: u64) -> Result<Vec<Range<u64>>> {
        match self {
            Layout::Bounded(range) => {
                let start = range.start.saturating_add(position).min(range.end);
                let end = start.saturating_add(len).min(range.end);
                Ok(std::iter::once(start..end)
                    .filter(|r| !r.is_empty())
                    .collect())
            }
            Layout::Unbounded { index, splits } => {
                let exhausted =
                    || super::internal("an unbounded split ran out of 64-bit row numbers");
                let mut ranges = Vec::new();
                let (mut position, end) = (position, position.saturating_add(len));
                while position < end {
                    let block = position / UNBOUNDED_BLOCK_ROWS;
                    let offset = position % UNBOUNDED_BLOCK_ROWS;
                    let take = (UNBOUNDED_BLOCK_ROWS - offset).min(end - position);
                    let first = block
                        .checked_mul(*splits)
                        .and_then(|b| b.checked_add(*index))
                        .and_then(|b| b.checked_mul(UNBOUNDED_BLOCK_ROWS))
                        .and_then(|r| r.checked_add(offset))
                        .ok_or_else(exhausted)?;
                    let last = first.checked_add(take).ok_or_else(exhausted)?;
                    ranges.push(first..last);
                    position += take;
                }
                Ok(ranges)
            }
        }
    }
}

/// Paces one split to a rate.
#[derive(Debug)]
struct Pacer {
    rows_per_second: f64,
    started: Instant,
    /// Rows emitted since `started`.
    emitted: u64,
}

impl Pacer {
    fn new(rows_per_second: f64) -> Self {
        Self {
            rows_per_second,
            started: Instant::now(),
            emitted: 0,
        }
    }

    /// Waits until `rows` more rows are due.
    async fn wait(&mut self, rows: u64) {
        let due =
            self.started + Duration::from_secs_f64(self.emitted as f64 / self.rows_per_second);
        let now = Instant::now();
        if now > due + MAX_BACKLOG {
            self.started = now;
            self.emitted = 0;
        } else {
            tokio::time::sleep_until(due).await;
        }
        self.emitted += rows;
    }
}

/// Reads one datagen split.
struct DataGenSplitReader {
    generator: Arc<Generator>,
    projection: Option<Vec<usize>>,
    metrics: Arc<SourceMetrics>,
    layout: Layout,
    position: u64,
    batch_rows: u64,
    pacer: Option<Pacer>,
}

#[async_trait]
impl SplitReader for DataGenSplitReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, SplitPosition)>> {
        let ranges = self.layout.rows(self.position, self.batch_rows)?;
        let len: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if len == 0 {
            return Ok(None);
        }
        if let Some(pacer) = &mut self.pacer {
            pacer.wait(len).await;
        }
        let projection = self.projection.as_deref();
        let mut batches = ranges
            .into_iter()
            .map(|rows| self.generator.generate(rows, projection))
            .collect::<Result<Vec<_>>>()?;
        let batch = if batches.len() == 1 {
            batches.remove(0)
        } else {
            concat_batches(&batches[0].schema(), &batches)?
        };
        self.position += len;
        SourceMetrics::add(&self.metrics.rows, len);
        Ok(Some((batch, self.position)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::datatypes::{DataType, Field};

    use super::*;
    use crate::datagen::{DataGenTable, DEFAULT_SOURCE_SPLITS};
    use crate::{ConnectorTable, TableDef};

    fn table(options: &[(&str, &str)]) -> Result<DataGenTable> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ]));
        let mut map = BTreeMap::new();
        map.insert("connector".to_string(), "datagen".to_string());
        map.insert("seed".to_string(), "11".to_string());
        map.insert("fields.s.length".to_string(), "5".to_string());
        map.insert("fields.n.null-rate".to_string(), "0.1".to_string());
        for (k, v) in options {
            map.insert(k.to_string(), v.to_string());
        }
        DataGenTable::try_new(TableDef {
            name: "gen".into(),
            schema,
            options: map,
            primary_key: vec![],
            metadata: Default::default(),
        })
    }

    fn split(id: &str) -> Split {
        Split { id: id.into() }
    }

    /// Reads up to `max_batches` batches of a split; returns them with the positions.
    async fn read(
        source: &dyn StreamSource,
        split: &Split,
        position: u64,
        batch_size: usize,
        max_batches: usize,
    ) -> (Vec<RecordBatch>, Vec<u64>) {
        let mut reader = source
            .open(split, position, None, batch_size)
            .await
            .unwrap();
        let (mut batches, mut positions) = (Vec::new(), Vec::new());
        while batches.len() < max_batches {
            let Some((batch, pos)) = reader.next_batch().await.unwrap() else {
                break;
            };
            assert!(batch.num_rows() <= batch_size && batch.num_rows() > 0);
            batches.push(batch);
            positions.push(pos);
        }
        (batches, positions)
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        concat_batches(&batches[0].schema(), batches).unwrap()
    }

    #[tokio::test]
    async fn bounded_splits_hold_exactly_the_batch_rows() {
        for (rows, splits) in [
            (1000u64, 1u64),
            (1000, 3),
            (1000, 4),
            (997, 7),
            (2, 4),
            (0, 2),
        ] {
            let t = table(&[
                ("number-of-rows", &rows.to_string()),
                ("source.splits", &splits.to_string()),
            ])
            .unwrap();
            let expected = t.generate(0..rows, None).unwrap();
            let source = t.stream_source().unwrap();
            assert_eq!(source.discovery_interval_ms(), None);
            let ids: Vec<String> = source
                .discover_splits()
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect();
            let want: Vec<String> = (0..splits)
                .map(|i| format!("rows-{i}-of-{splits}"))
                .collect();
            assert_eq!(ids, want);
            let mut all = Vec::new();
            let mut total = 0;
            for id in &ids {
                let (batches, positions) =
                    read(source.as_ref(), &split(id), 0, 64, usize::MAX).await;
                let mut seen = 0;
                for (b, p) in batches.iter().zip(&positions) {
                    seen += b.num_rows() as u64;
                    assert_eq!(*p, seen);
                }
                total += seen;
                all.extend(batches);
            }
            assert_eq!(total, rows, "{rows} rows in {splits} splits");
            assert_eq!(SourceMetrics::get(&t.metrics().rows), rows);
            if rows > 0 {
                assert_eq!(concat(&all), expected, "{rows} rows in {splits} splits");
            }
        }
    }

    #[tokio::test]
    async fn resuming_a_split_continues_at_the_next_row() {
        for options in [
            vec![("number-of-rows", "10000")],
            vec![("rows-per-second", "100000000"), ("source.splits", "3")],
        ] {
            let t = table(&options).unwrap();
            let source = t.stream_source().unwrap();
            let s = source.discover_splits().await.unwrap().remove(1);
            let (whole, _) = read(source.as_ref(), &s, 0, 37, 60).await;
            let whole = concat(&whole);
            // Stop after 5 batches (185 rows) and again inside the next block.
            let (first, positions) = read(source.as_ref(), &s, 0, 37, 5).await;
            assert_eq!(positions.last(), Some(&185));
            let (second, positions) = read(source.as_ref(), &s, 185, 37, 30).await;
            let resumed_at = *positions.last().unwrap();
            assert_eq!(resumed_at, 185 + 30 * 37);
            let (third, _) = read(source.as_ref(), &s, resumed_at, 37, 40).await;
            let mut parts = first;
            parts.extend(second);
            parts.extend(third);
            let resumed = concat(&parts);
            let len = whole.num_rows().min(resumed.num_rows());
            assert!(len >= 250, "{len}");
            assert_eq!(resumed.slice(0, len), whole.slice(0, len), "{options:?}");
        }
    }

    #[tokio::test]
    async fn unbounded_splits_interleave_blocks() {
        let t = table(&[("rows-per-second", "100000000"), ("source.splits", "2")]).unwrap();
        let source = t.stream_source().unwrap();
        let (batches, positions) = read(source.as_ref(), &split("rows-1-of-2"), 0, 700, 3).await;
        assert_eq!(positions, [700, 1400, 2100]);
        let got = concat(&batches);
        let b = UNBOUNDED_BLOCK_ROWS;
        let expected = concat(&[
            t.generate(b..2 * b, None).unwrap(),
            t.generate(3 * b..4 * b, None).unwrap(),
            t.generate(5 * b..5 * b + (2100 - 2 * b), None).unwrap(),
        ]);
        assert_eq!(got, expected);

        // No projected column: batches carry row counts.
        let mut reader = source
            .open(&split("rows-0-of-2"), 1000, Some(&[]), 100)
            .await
            .unwrap();
        let (batch, position) = reader.next_batch().await.unwrap().unwrap();
        assert_eq!(
            (batch.num_rows(), batch.num_columns(), position),
            (100, 0, 1100)
        );
        assert_eq!(source.schema(Some(&[])).fields().len(), 0);
        assert_eq!(
            source
                .schema(Some(&[2, 0]))
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["x", "n"]
        );
        let mut reader = source
            .open(&split("rows-0-of-2"), 0, Some(&[1]), 10)
            .await
            .unwrap();
        let (batch, _) = reader.next_batch().await.unwrap().unwrap();
        assert_eq!(batch, t.generate(0..10, Some(&[1])).unwrap());
    }

    #[tokio::test]
    async fn unbounded_splits_are_paced_to_the_total_rate() {
        let t = table(&[("rows-per-second", "200")]).unwrap();
        let source = t.stream_source().unwrap();
        let splits = source.discover_splits().await.unwrap();
        assert_eq!(splits.len() as u64, DEFAULT_SOURCE_SPLITS);
        let window = Duration::from_secs(1);
        let started = Instant::now();
        let counts = futures::future::join_all(splits.iter().map(|s| {
            let source = source.clone();
            async move {
                let mut reader = source.open(s, 0, None, 8192).await.unwrap();
                let mut rows = 0;
                let mut batches = 0;
                let deadline = started + window;
                while let Ok(next) = tokio::time::timeout_at(deadline, reader.next_batch()).await {
                    rows += next.unwrap().unwrap().0.num_rows();
                    batches += 1;
                }
                (rows, batches)
            }
        }))
        .await;
        let rows: usize = counts.iter().map(|c| c.0).sum();
        assert!(
            (100..=400).contains(&rows),
            "{rows} rows in {window:?}: {counts:?}"
        );
        // 50 rows/s per split in batches of a tenth of a second: several per split.
        assert!(counts.iter().all(|c| c.1 >= 5), "{counts:?}");
    }

    #[tokio::test]
    async fn bounded_splits_are_paced_only_when_a_rate_is_set() {
        let t = table(&[
            ("number-of-rows", "100"),
            ("rows-per-second", "200"),
            ("source.splits", "4"),
        ])
        .unwrap();
        let source = t.stream_source().unwrap();
        let started = Instant::now();
        // 25 rows at 50 rows/s in batches of 5: the last is due after 400 ms.
        let (batches, positions) = read(source.as_ref(), &split("rows-2-of-4"), 0, 8192, 100).await;
        assert_eq!(batches.len(), 5);
        assert_eq!(positions.last(), Some(&25));
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );

        let t = table(&[("number-of-rows", "100000"), ("source.splits", "1")]).unwrap();
        let source = t.stream_source().unwrap();
        let (batches, _) = read(source.as_ref(), &split("rows-0-of-1"), 0, 8192, usize::MAX).await;
        assert_eq!(batches.len(), 13);
    }

    #[tokio::test]
    async fn unknown_splits_and_invalid_split_counts_are_errors() {
        let t = table(&[("number-of-rows", "10"), ("source.splits", "3")]).unwrap();
        assert_eq!(t.source_splits(), 3);
        let source = t.stream_source().unwrap();
        for id in ["rows-3-of-3", "rows-1-of-4", "rows-01-of-3", "/data/x.csv"] {
            let err = source.open(&split(id), 0, None, 10).await.err().unwrap();
            assert_eq!(
                err.to_string(),
                format!(
                    "table 'gen': '{id}' is not a split of this datagen source (its splits are \
                     rows-0-of-3 to rows-2-of-3; was 'source.splits' changed?)"
                )
            );
        }
        assert!(source
            .open(&split("rows-0-of-3"), 0, Some(&[5]), 10)
            .await
            .is_err());
        // Past the end of a split: nothing.
        let (batches, _) = read(source.as_ref(), &split("rows-0-of-3"), 99, 10, 10).await;
        assert!(batches.is_empty());

        for bad in ["0", "x", "65537"] {
            let err = table(&[("source.splits", bad)]).unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "table 'gen': invalid value '{bad}' for option 'source.splits': expected an \
                     integer from 1 to 65536"
                )
            );
        }
    }
}
