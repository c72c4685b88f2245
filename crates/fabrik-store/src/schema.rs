//! The catalog: each table's columns, their kinds (time, tag, field, lineage) and types.
//!
//! A table's schema only grows: new tags and fields extend it on the fly, and a field written
//! with a type other than its first one is rejected. The kind of a column travels in its Arrow
//! field metadata (`fabrik.kind`), so WAL records and Parquet files describe themselves.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use fabrik_core::FieldType;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The time column of every table.
pub const TIME: &str = "time";
/// Lineage: the connector instance.
pub const SOURCE: &str = "_source";
/// Lineage: the raw message id.
pub const RAW_ID: &str = "_raw_id";
/// Lineage: the mapping version.
pub const MAPPING_VERSION: &str = "_mapping_version";
/// The quality of the row's values.
pub const QUALITY: &str = "_quality";
/// Columns every table has besides tags and fields.
pub const SYSTEM_COLUMNS: [&str; 5] = [TIME, SOURCE, RAW_ID, MAPPING_VERSION, QUALITY];
/// The Arrow field-metadata key holding a column's kind.
pub const KIND_KEY: &str = "fabrik.kind";

/// What a column is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "type")]
pub enum ColumnKind {
    /// The timestamp.
    Time,
    /// A tag (part of the series key), stored as a string.
    Tag,
    /// A typed field.
    Field(FieldType),
    /// A lineage or quality column.
    System,
}

impl ColumnKind {
    fn name(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Tag => "tag",
            Self::Field(_) => "field",
            Self::System => "system",
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Field(FieldType::Integer) => "an integer field".into(),
            Self::Field(t) => format!("a {t} field"),
            Self::Tag => "a tag".into(),
            Self::Time => "the time column".into(),
            Self::System => "a lineage column".into(),
        }
    }
}

/// The Arrow type of a field type.
pub fn arrow_type(t: FieldType) -> DataType {
    match t {
        FieldType::Float => DataType::Float64,
        FieldType::Integer => DataType::Int64,
        FieldType::UInteger => DataType::UInt64,
        FieldType::Boolean => DataType::Boolean,
        FieldType::String => DataType::Utf8,
    }
}

/// The Arrow field of a column, with its kind in the metadata.
pub fn arrow_field(name: &str, kind: ColumnKind) -> Field {
    let (data_type, nullable) = match kind {
        ColumnKind::Time => (DataType::Timestamp(TimeUnit::Nanosecond, None), false),
        ColumnKind::Tag => (DataType::Utf8, true),
        ColumnKind::Field(t) => (arrow_type(t), true),
        ColumnKind::System => match name {
            RAW_ID => (DataType::UInt64, true),
            MAPPING_VERSION => (DataType::UInt32, true),
            _ => (DataType::Utf8, true),
        },
    };
    let kind_text = match kind {
        ColumnKind::Field(t) => format!("field:{}", t.name()),
        other => other.name().to_owned(),
    };
    Field::new(name, data_type, nullable)
        .with_metadata(HashMap::from([(KIND_KEY.to_owned(), kind_text)]))
}

/// Reads a column's kind back from Arrow field metadata.
pub fn kind_of(field: &Field) -> Option<ColumnKind> {
    let text = field.metadata().get(KIND_KEY)?;
    Some(match text.as_str() {
        "time" => ColumnKind::Time,
        "tag" => ColumnKind::Tag,
        "system" => ColumnKind::System,
        "field:float" => ColumnKind::Field(FieldType::Float),
        "field:integer" => ColumnKind::Field(FieldType::Integer),
        "field:uinteger" => ColumnKind::Field(FieldType::UInteger),
        "field:boolean" => ColumnKind::Field(FieldType::Boolean),
        "field:string" => ColumnKind::Field(FieldType::String),
        _ => return None,
    })
}

/// Positions of the tag columns of `schema`, in schema order.
pub fn tag_indices(schema: &Schema) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| kind_of(f) == Some(ColumnKind::Tag))
        .map(|(i, _)| i)
        .collect()
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its kind and type.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// A table's schema at one moment. Immutable; extending makes a new one.
#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The table name.
    pub name: Arc<str>,
    /// A stable numeric id, used in segment paths so any table name is safe on disk.
    pub id: u32,
    /// Columns: tags and fields in order of first appearance, then time and lineage.
    pub columns: Vec<Column>,
    by_name: HashMap<String, usize>,
    arrow: SchemaRef,
}

impl TableSchema {
    fn new(name: Arc<str>, id: u32, user_columns: Vec<Column>) -> Self {
        let mut columns = user_columns;
        columns.retain(|c| !SYSTEM_COLUMNS.contains(&c.name.as_str()));
        columns.push(Column {
            name: TIME.into(),
            kind: ColumnKind::Time,
        });
        for name in [SOURCE, RAW_ID, MAPPING_VERSION, QUALITY] {
            columns.push(Column {
                name: name.into(),
                kind: ColumnKind::System,
            });
        }
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let arrow = Arc::new(Schema::new(
            columns
                .iter()
                .map(|c| arrow_field(&c.name, c.kind))
                .collect::<Vec<_>>(),
        ));
        Self {
            name,
            id,
            columns,
            by_name,
            arrow,
        }
    }

    /// The Arrow schema of the whole table.
    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.by_name.get(name).map(|&i| &self.columns[i])
    }

    /// Tag column names, in schema order.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|c| c.kind == ColumnKind::Tag)
            .map(|c| c.name.as_str())
    }

    /// The user columns (tags and fields), for the manifest.
    pub fn user_columns(&self) -> Vec<Column> {
        self.columns
            .iter()
            .filter(|c| matches!(c.kind, ColumnKind::Tag | ColumnKind::Field(_)))
            .cloned()
            .collect()
    }
}

/// Checks that `name` may be used as a column of `kind` in `schema` (or in a new table when
/// `schema` is `None`).
pub fn check_column(existing: Option<&Column>, name: &str, kind: ColumnKind) -> Result<(), String> {
    if SYSTEM_COLUMNS.contains(&name) {
        return Err(format!("`{name}` is a reserved column name"));
    }
    match existing {
        None => Ok(()),
        Some(c) if c.kind == kind => Ok(()),
        Some(c) => Err(format!(
            "is {} but this write uses it as {}",
            c.kind.describe(),
            kind.describe()
        )),
    }
}

/// All tables' schemas.
///
/// A write registers its table before its WAL batch is fsynced (so concurrent writes agree on
/// column types), but a table becomes visible to queries only once rows of it are in the
/// buffer or on disk. Otherwise a reader could see the new table empty, conclude that nothing
/// was written up to now and move its cursor past rows that were about to land.
#[derive(Debug, Default)]
pub struct Catalog {
    tables: RwLock<HashMap<Arc<str>, Arc<TableSchema>>>,
    queryable: RwLock<HashSet<Arc<str>>>,
}

impl Catalog {
    /// A catalog holding `tables` (from the manifest).
    pub fn from_tables(tables: impl IntoIterator<Item = (String, u32, Vec<Column>)>) -> Self {
        let map = tables
            .into_iter()
            .map(|(name, id, columns)| {
                let name: Arc<str> = name.into();
                (name.clone(), Arc::new(TableSchema::new(name, id, columns)))
            })
            .collect::<HashMap<_, _>>();
        let queryable = map.keys().cloned().collect();
        Self {
            tables: RwLock::new(map),
            queryable: RwLock::new(queryable),
        }
    }

    /// Replaces every table with `tables`, all queryable: a read-only store's catalog is the
    /// owner's manifest's, as last read (decision 0079).
    pub fn replace(&self, tables: impl IntoIterator<Item = (String, u32, Vec<Column>)>) {
        let fresh = Self::from_tables(tables);
        // In `queryable`'s order (that set first), so the two cannot wait on each other.
        let mut queryable = self.queryable.write();
        let mut current = self.tables.write();
        *current = fresh.tables.into_inner();
        *queryable = fresh.queryable.into_inner();
    }

    /// Makes `table` visible to queries: call after its rows were applied.
    pub fn mark_queryable(&self, table: &Arc<str>) {
        if self.queryable.read().contains(table) {
            return;
        }
        self.queryable.write().insert(table.clone());
    }

    /// Whether `table` holds applied rows, so queries see it.
    pub fn is_queryable(&self, table: &str) -> bool {
        self.queryable.read().contains(table)
    }

    /// The schemas of the tables that hold applied rows (what queries and listings see).
    pub fn queryable(&self) -> Vec<Arc<TableSchema>> {
        let visible = self.queryable.read();
        self.tables
            .read()
            .iter()
            .filter(|(name, _)| visible.contains(*name))
            .map(|(_, schema)| schema.clone())
            .collect()
    }

    /// A table's current schema.
    pub fn get(&self, name: &str) -> Option<Arc<TableSchema>> {
        self.tables.read().get(name).cloned()
    }

    /// Every table's current schema.
    pub fn all(&self) -> Vec<Arc<TableSchema>> {
        self.tables.read().values().cloned().collect()
    }

    /// Ensures `table` has every column in `wanted` (name, kind), creating the table or
    /// extending it. Fails, changing nothing, when a column exists with another kind or type.
    /// `location` names the first line that used each column, for errors.
    pub fn ensure(
        &self,
        table: &str,
        wanted: &[(&str, ColumnKind, String)],
    ) -> Result<Arc<TableSchema>, StoreError> {
        if let Some(schema) = self.get(table)
            && wanted
                .iter()
                .all(|(name, kind, _)| schema.column(name).is_some_and(|c| c.kind == *kind))
        {
            return Ok(schema);
        }
        let mut tables = self.tables.write();
        let current = tables.get(table).cloned();
        let mut columns = current
            .as_ref()
            .map(|s| s.user_columns())
            .unwrap_or_default();
        let mut changed = current.is_none();
        for (name, kind, location) in wanted {
            let existing = current.as_ref().and_then(|s| s.column(name));
            check_column(existing, name, *kind).map_err(|reason| StoreError::SchemaConflict {
                location: location.clone(),
                table: table.to_owned(),
                column: (*name).to_owned(),
                reason,
            })?;
            if existing.is_none() && !columns.iter().any(|c| c.name == *name) {
                columns.push(Column {
                    name: (*name).to_owned(),
                    kind: *kind,
                });
                changed = true;
            }
        }
        if !changed && let Some(schema) = current {
            return Ok(schema);
        }
        let id = match &current {
            Some(s) => s.id,
            None => tables.values().map(|t| t.id).max().unwrap_or(0) + 1,
        };
        let name: Arc<str> = table.into();
        let schema = Arc::new(TableSchema::new(name.clone(), id, columns));
        tables.insert(name, schema.clone());
        Ok(schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_queryable_only_once_rows_of_it_were_applied() {
        let catalog = Catalog::default();
        let float = ColumnKind::Field(FieldType::Float);
        catalog
            .ensure("cpu", &[("usage", float, String::new())])
            .expect("create");
        assert!(catalog.get("cpu").is_some(), "registered for type checks");
        assert!(catalog.queryable().is_empty(), "not yet visible");
        catalog.mark_queryable(&Arc::from("cpu"));
        let names: Vec<String> = catalog
            .queryable()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        assert_eq!(names, ["cpu"]);
        // Tables loaded from the manifest have data on disk.
        let loaded = Catalog::from_tables([("mem".to_owned(), 1, Vec::new())]);
        assert_eq!(loaded.queryable().len(), 1);
    }

    #[test]
    fn tables_grow_and_reject_type_conflicts() {
        let catalog = Catalog::default();
        let float = ColumnKind::Field(FieldType::Float);
        let s = catalog
            .ensure(
                "cpu",
                &[
                    ("host", ColumnKind::Tag, String::new()),
                    ("usage", float, String::new()),
                ],
            )
            .expect("create");
        assert_eq!(s.id, 1);
        let names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "host",
                "usage",
                "time",
                "_source",
                "_raw_id",
                "_mapping_version",
                "_quality"
            ]
        );
        let s = catalog
            .ensure("cpu", &[("idle", float, String::new())])
            .expect("extend");
        assert!(s.column("idle").is_some());
        let err = catalog
            .ensure(
                "cpu",
                &[(
                    "usage",
                    ColumnKind::Field(FieldType::Integer),
                    "line 7: ".into(),
                )],
            )
            .expect_err("conflict");
        let msg = err.to_string();
        assert!(
            msg.contains("line 7") && msg.contains("float") && msg.contains("integer"),
            "{msg}"
        );
        let err = catalog
            .ensure("cpu", &[("host", float, String::new())])
            .expect_err("tag used as field");
        assert!(err.to_string().contains("tag"), "{err}");
        assert!(
            catalog
                .ensure("cpu", &[("_raw_id", float, String::new())])
                .is_err()
        );
        assert_eq!(
            catalog
                .ensure("mem", &[("v", float, String::new())])
                .expect("mem")
                .id,
            2
        );
    }

    #[test]
    fn kinds_round_trip_through_arrow_metadata() {
        for kind in [
            ColumnKind::Time,
            ColumnKind::Tag,
            ColumnKind::System,
            ColumnKind::Field(FieldType::UInteger),
            ColumnKind::Field(FieldType::String),
        ] {
            assert_eq!(kind_of(&arrow_field("x", kind)), Some(kind));
        }
    }
}
