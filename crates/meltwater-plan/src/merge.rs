//! `MERGE INTO target USING source ON ... WHEN MATCHED ... WHEN NOT MATCHED ...` in batch
//! mode, planned as one query ([`merge_query`]) yielding only the rows the statement
//! changes, in both write modes.
//!
//! The query joins the source with the target read with each row's data file and
//! position ([`meltwater_iceberg::merge::MergeTarget`]): matched target rows with the
//! action of the first clause that applies (rows no clause applies to come along for the
//! cardinality check, which the writer makes), and source rows without a match that a
//! `WHEN NOT MATCHED` clause inserts. The writer
//! ([`meltwater_iceberg::merge::IcebergMergeExec`]) retires the old versions of updated
//! and deleted rows by position deletes (`write.merge.mode` = `merge-on-read`) or by
//! rewriting exactly the data files that hold them (unset or `copy-on-write`).

use datafusion::arrow::datatypes::Schema;
use meltwater_sql::sqlparser::ast::{
    AssignmentTarget, Merge, MergeAction, MergeClauseKind, MergeInsertKind, TableFactor,
};

/// The parts of a `MERGE` statement the query is built from.
struct Statement {
    /// How the target and the source are referred to in the statement.
    t_alias: String,
    s_alias: String,
    /// The source's name (a table name or a parenthesized subquery).
    s_base: String,
    on: String,
    /// `WHEN MATCHED` clauses: condition, and assignments (`None`: delete).
    matched: Vec<(String, Option<Assignments>)>,
    /// `WHEN NOT MATCHED` clauses: condition and inserted values.
    not_matched: Vec<(String, Assignments)>,
}

/// The statement's parts; errors name what it cannot do.
fn parse(merge: &Merge, target_name: &str, schema: &Schema) -> Result<Statement, String> {
    let t_alias = match &merge.table {
        TableFactor::Table { name, alias, .. } => qualifier(name, alias),
        other => return Err(format!("MERGE INTO {other}: the target must be a table")),
    };
    let (s_alias, s_base) = match &merge.source {
        TableFactor::Table { name, alias, .. } => (qualifier(name, alias), name.to_string()),
        TableFactor::Derived {
            subquery,
            alias: Some(alias),
            ..
        } => (alias.name.to_string(), format!("({subquery})")),
        TableFactor::Derived { alias: None, .. } => {
            return Err("MERGE INTO ... USING (subquery): give the subquery an alias".into())
        }
        other => {
            return Err(format!(
                "MERGE ... USING {other}: use a table or a subquery"
            ))
        }
    };
    let mut statement = Statement {
        t_alias,
        s_alias,
        s_base,
        on: merge.on.to_string(),
        matched: Vec::new(),
        not_matched: Vec::new(),
    };
    for clause in &merge.clauses {
        let predicate = clause
            .predicate
            .as_ref()
            .map(|p| format!("({p})"))
            .unwrap_or_else(|| "TRUE".into());
        match (&clause.clause_kind, &clause.action) {
            (MergeClauseKind::Matched, MergeAction::Update(update)) => {
                if update.update_predicate.is_some() || update.delete_predicate.is_some() {
                    return Err("MERGE: UPDATE ... WHERE / DELETE WHERE is not supported; put the condition in WHEN MATCHED AND ...".into());
                }
                let mut sets = Vec::new();
                for a in &update.assignments {
                    let name = match &a.target {
                        AssignmentTarget::ColumnName(n) => {
                            n.0.last()
                                .map(|p| normalize(&p.to_string()))
                                .unwrap_or_default()
                        }
                        other => return Err(format!("MERGE: cannot assign to {other}")),
                    };
                    if schema.index_of(&name).is_err() {
                        return Err(format!(
                            "MERGE INTO {target_name}: UPDATE SET {name}: the table has no column '{name}'"
                        ));
                    }
                    sets.push((name, a.value.to_string()));
                }
                statement.matched.push((predicate, Some(sets)));
            }
            (MergeClauseKind::Matched, MergeAction::Delete { .. }) => {
                statement.matched.push((predicate, None))
            }
            (
                MergeClauseKind::NotMatched | MergeClauseKind::NotMatchedByTarget,
                MergeAction::Insert(insert),
            ) => {
                let MergeInsertKind::Values(values) = &insert.kind else {
                    return Err("MERGE: INSERT ROW is not supported; list the values".into());
                };
                let [row] = values.rows.as_slice() else {
                    return Err("MERGE: INSERT takes one row of VALUES".into());
                };
                let columns: Vec<String> = if insert.columns.is_empty() {
                    schema.fields().iter().map(|f| f.name().clone()).collect()
                } else {
                    insert
                        .columns
                        .iter()
                        .map(|c| normalize(&c.0.last().map(|p| p.to_string()).unwrap_or_default()))
                        .collect()
                };
                if columns.len() != row.len() {
                    return Err(format!(
                        "MERGE INTO {target_name}: INSERT lists {} columns and {} values",
                        columns.len(),
                        row.len()
                    ));
                }
                let mut values = Vec::new();
                for (c, v) in columns.into_iter().zip(row) {
                    if schema.index_of(&c).is_err() {
                        return Err(format!(
                            "MERGE INTO {target_name}: INSERT ({c}): the table has no column '{c}'"
                        ));
                    }
                    values.push((c, v.to_string()));
                }
                statement.not_matched.push((predicate, values));
            }
            (MergeClauseKind::NotMatchedBySource, _) => {
                return Err("MERGE: WHEN NOT MATCHED BY SOURCE is not supported yet".into())
            }
            (kind, action) => return Err(format!("MERGE: WHEN {kind} THEN {action} is not valid")),
        }
    }
    if statement.matched.is_empty() && statement.not_matched.is_empty() {
        return Err("MERGE needs at least one WHEN clause".into());
    }
    Ok(statement)
}

/// The rows a `MERGE` changes (module doc); `target_scan` names the target read with
/// row addresses ([`meltwater_iceberg::merge::MergeTarget`]), `schema` is the target's.
/// Errors name what the statement cannot do.
pub fn merge_query(
    merge: &Merge,
    target_name: &str,
    schema: &Schema,
    target_scan: &str,
) -> Result<String, String> {
    use meltwater_iceberg::merge::{
        ACTION_COLUMN, DELETE, FILE_COLUMN, INSERT, POS_COLUMN, ROUTE_COLUMN, UPDATE,
    };
    let statement = parse(merge, target_name, schema)?;
    let (t_alias, s_alias) = (&statement.t_alias, &statement.s_alias);
    let (matched, not_matched) = (&statement.matched, &statement.not_matched);
    let is_match = format!("{t_alias}.{FILE_COLUMN} IS NOT NULL");
    let no_match = format!("{t_alias}.{FILE_COLUMN} IS NULL");
    let mut cols = vec![
        format!("{t_alias}.{FILE_COLUMN} AS {FILE_COLUMN}"),
        format!("{t_alias}.{POS_COLUMN} AS {POS_COLUMN}"),
    ];
    // The first clause that applies decides; NULL when none does.
    let mut action = String::from("CASE");
    for (cond, sets) in matched {
        let what = if sets.is_some() { UPDATE } else { DELETE };
        action.push_str(&format!(" WHEN {is_match} AND {cond} THEN '{what}'"));
    }
    for (cond, _) in not_matched {
        action.push_str(&format!(" WHEN {no_match} AND {cond} THEN '{INSERT}'"));
    }
    cols.push(format!("{action} END AS {ACTION_COLUMN}"));
    // A matched row goes to the task of its data file; inserts anywhere.
    cols.push(format!(
        "COALESCE({t_alias}.{FILE_COLUMN}, CAST(random() AS VARCHAR)) AS {ROUTE_COLUMN}"
    ));
    for f in schema.fields() {
        let column = format!("\"{}\"", f.name());
        let sql_type = crate::sql_type_name(f.data_type());
        let mut case = String::from("CASE");
        for (cond, sets) in matched {
            let value = sets
                .as_ref()
                .and_then(|sets| sets.iter().find(|(c, _)| c == f.name()))
                .map(|(_, v)| format!("CAST(({v}) AS {sql_type})"))
                .unwrap_or_else(|| format!("{t_alias}.{column}"));
            case.push_str(&format!(" WHEN {is_match} AND {cond} THEN {value}"));
        }
        for (cond, values) in not_matched {
            let value = values
                .iter()
                .find(|(c, _)| c == f.name())
                .map(|(_, v)| format!("CAST(({v}) AS {sql_type})"))
                .unwrap_or_else(|| format!("CAST(NULL AS {sql_type})"));
            case.push_str(&format!(" WHEN {no_match} AND {cond} THEN {value}"));
        }
        cols.push(format!("{case} ELSE {t_alias}.{column} END AS {column}"));
    }
    // Matched rows all come (the writer checks that none is matched twice); unmatched
    // ones only when an insert clause applies.
    let mut keep = Vec::new();
    if !matched.is_empty() {
        keep.push(is_match);
    }
    if !not_matched.is_empty() {
        let any = not_matched
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(" OR ");
        keep.push(format!("({no_match} AND ({any}))"));
    }
    let join = if not_matched.is_empty() {
        "JOIN"
    } else {
        "LEFT JOIN"
    };
    Ok(format!(
        "SELECT {} FROM {} AS {s_alias} {join} {target_scan} AS {t_alias} ON {} WHERE {}",
        cols.join(", "),
        statement.s_base,
        statement.on,
        keep.join(" OR ")
    ))
}

/// `(column, SQL value)` pairs of an `UPDATE SET` or an `INSERT`; a `WHEN MATCHED`
/// clause without them deletes.
type Assignments = Vec<(String, String)>;

/// How a table of the statement is referred to: its alias, else its name's last part.
fn qualifier(
    name: &meltwater_sql::sqlparser::ast::ObjectName,
    alias: &Option<meltwater_sql::sqlparser::ast::TableAlias>,
) -> String {
    match alias {
        Some(a) => a.name.to_string(),
        None => name.0.last().map(|p| p.to_string()).unwrap_or_default(),
    }
}

fn normalize(ident: &str) -> String {
    match ident.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => ident.to_lowercase(),
    }
}
