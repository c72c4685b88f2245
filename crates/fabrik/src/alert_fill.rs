//! `fill = "previous"` for alert rules: a row that lacks a field the rule's `value` names
//! takes that key's last reported value, so an expression over several signals of a
//! report-by-exception table (OPC UA, Sparkplug: rows carry only what changed) is evaluated
//! on every row instead of only on the rare row that carries all of them.
//!
//! Owns the per-key last values and the filling of a page of rows; the evaluator reads the
//! page and evaluates its `value` over the filled rows.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
use fabrik_runtime::config::AlertRuleConfig;
use fabrik_store::Store;

use crate::sql_text;

/// How far back the last values from before the rule started are looked for: a setpoint or
/// a mode may stay put for days.
const SEED_LOOKBACK_NS: i64 = 7 * 24 * 3_600_000_000_000;

/// The name the filled page is queried under.
const FILLED_TABLE: &str = "filled_rows";

/// The field columns of `fields` that `value` names: a quoted name as written, an unquoted
/// one in any case (SQL folds it).
pub(crate) fn referenced_fields(value: &str, fields: &[String]) -> Vec<String> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, value).tokenize() else {
        return Vec::new();
    };
    let mut named = Vec::new();
    for token in tokens {
        let Token::Word(word) = token else {
            continue;
        };
        let found = fields.iter().find(|field| match word.quote_style {
            Some(_) => **field == word.value,
            None => field.eq_ignore_ascii_case(&word.value),
        });
        if let Some(field) = found
            && !named.contains(field)
        {
            named.push(field.clone());
        }
    }
    named
}

/// The last reported values of one rule's filled fields, per key.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filler {
    /// Per key, per field, the last non-null value.
    last: HashMap<String, HashMap<String, ScalarValue>>,
    /// Whether the values from before the rule started were read.
    seeded: bool,
}

impl Filler {
    /// Reads, once, each key's last value of every field in `fields` reported before
    /// arrival `before` (within a week), so the first rows after a start are filled too.
    pub(crate) async fn seed(
        &mut self,
        store: &Store,
        rule: &AlertRuleConfig,
        fields: &[String],
        before: Option<i64>,
    ) -> Result<(), String> {
        if self.seeded {
            return Ok(());
        }
        let Some(before) = before else {
            // Reading from the earliest row: every value comes with the rows.
            self.seeded = true;
            return Ok(());
        };
        for field in fields {
            let mut sql = format!(
                "SELECT CAST(\"{key}\" AS VARCHAR) AS key, last_value(\"{field}\" ORDER BY time) \
                 AS last FROM \"{table}\" WHERE \"{field}\" IS NOT NULL AND _raw_id <= {before} \
                 AND time >= to_timestamp_nanos({since})",
                key = rule.key,
                table = rule.table,
                since = before.saturating_sub(SEED_LOOKBACK_NS),
            );
            if let Some(filter) = &rule.filter {
                sql.push_str(&format!(" AND {}", sql_text::embedded(filter)));
            }
            sql.push_str(&format!(" GROUP BY \"{}\"", rule.key));
            let output = store.query(&sql).await.map_err(|e| e.to_string())?;
            for batch in &output.batches {
                let keys = as_strings(batch.column(0))?;
                for row in 0..batch.num_rows() {
                    if keys.is_null(row) || batch.column(1).is_null(row) {
                        continue;
                    }
                    let value = ScalarValue::try_from_array(batch.column(1), row)
                        .map_err(|e| e.to_string())?;
                    self.last
                        .entry(keys.value(row).to_owned())
                        .or_default()
                        .insert(field.clone(), value);
                }
            }
        }
        self.seeded = true;
        Ok(())
    }

    /// `batches` (rows in arrival order) with every null of `fields` replaced by its key's
    /// last value before it, and the last values updated.
    pub(crate) fn fill(
        &mut self,
        batches: &[RecordBatch],
        key: &str,
        fields: &[String],
    ) -> Result<Vec<RecordBatch>, String> {
        let mut filled = Vec::with_capacity(batches.len());
        for batch in batches {
            if batch.num_rows() == 0 {
                continue;
            }
            let schema = batch.schema();
            let Ok(key_index) = schema.index_of(key) else {
                return Err(format!("the page has no key column `{key}`"));
            };
            let keys = as_strings(batch.column(key_index))?;
            let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
            for field in fields {
                let Ok(index) = schema.index_of(field) else {
                    continue;
                };
                let column = batch.column(index);
                let null = ScalarValue::try_from(column.data_type()).map_err(|e| e.to_string())?;
                let mut values = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    let key = (!keys.is_null(row)).then(|| keys.value(row));
                    if column.is_valid(row) {
                        let value =
                            ScalarValue::try_from_array(column, row).map_err(|e| e.to_string())?;
                        if let Some(key) = key {
                            self.last
                                .entry(key.to_owned())
                                .or_default()
                                .insert(field.clone(), value.clone());
                        }
                        values.push(value);
                    } else {
                        let last = key
                            .and_then(|key| self.last.get(key))
                            .and_then(|fields| fields.get(field))
                            // A value of another type (the column's type widened) is not
                            // carried: null, as without filling.
                            .filter(|value| value.data_type() == *column.data_type());
                        values.push(last.cloned().unwrap_or_else(|| null.clone()));
                    }
                }
                columns[index] = ScalarValue::iter_to_array(values).map_err(|e| e.to_string())?;
            }
            filled.push(RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?);
        }
        Ok(filled)
    }
}

/// Runs `select` (a select list) over the filled rows, in arrival order.
pub(crate) async fn evaluate(
    schema: datafusion::arrow::datatypes::SchemaRef,
    filled: Vec<RecordBatch>,
    select: &str,
) -> Result<Vec<RecordBatch>, String> {
    let context = SessionContext::new();
    let table = MemTable::try_new(schema, vec![filled]).map_err(|e| e.to_string())?;
    context
        .register_table(FILLED_TABLE, Arc::new(table))
        .map_err(|e| e.to_string())?;
    context
        .sql(&format!(
            "SELECT {select} FROM {FILLED_TABLE} ORDER BY _arrival, time"
        ))
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())
}

fn as_strings(column: &ArrayRef) -> Result<StringArray, String> {
    let cast = cast(column, &DataType::Utf8).map_err(|e| format!("key did not cast: {e}"))?;
    cast.as_any()
        .downcast_ref::<StringArray>()
        .cloned()
        .ok_or_else(|| "key did not cast".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array};
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn the_fields_a_value_names_are_found_in_any_case_or_quoted() {
        let fields = vec![
            "reject_count".to_owned(),
            "good_count".to_owned(),
            "Volume Flow RateRMS".to_owned(),
            "level".to_owned(),
        ];
        assert_eq!(
            referenced_fields(
                "CAST(reject_count AS DOUBLE) / (Good_Count + \"Volume Flow RateRMS\")",
                &fields
            ),
            ["reject_count", "good_count", "Volume Flow RateRMS"]
        );
        assert!(referenced_fields("'level' || 1", &fields).is_empty());
    }

    #[test]
    fn a_missing_value_takes_its_keys_last_one() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("a", DataType::Float64, true),
            Field::new("b", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["x", "y", "x", "y", "x"])),
                Arc::new(Float64Array::from(vec![
                    Some(1.0),
                    Some(10.0),
                    None,
                    None,
                    Some(3.0),
                ])),
                Arc::new(Int64Array::from(vec![None, Some(7), Some(2), None, None])),
            ],
        )
        .unwrap();
        let mut filler = Filler::default();
        let filled = filler
            .fill(&[batch], "device", &["a".to_owned(), "b".to_owned()])
            .unwrap();
        let a = filled[0]
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        let b = filled[0]
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [Some(1.0), Some(10.0), Some(1.0), Some(10.0), Some(3.0)]
        );
        // x had no b before its second row: nothing to carry.
        assert_eq!(
            b.iter().collect::<Vec<_>>(),
            [None, Some(7), Some(2), Some(7), Some(2)]
        );
    }
}
