//! The schema check every owner of tables gets: a database migrated with a list of
//! [`MigrationSet`]s has, on SQLite, PostgreSQL and MySQL alike, the same tables, columns, types,
//! nullability and unique keys; they are exactly the tables of the sets' `schema` sources
//! (diesel `table!`s) with their primary keys (composite ones included); and each set creates
//! exactly its own tables. batch-common checks the base sets with it, the launcher every set of
//! every registered module, and a domain crate may check its own.

use std::collections::{BTreeMap, BTreeSet};

use core_domain::{Backend, DbConnection, MigrationSet, dispatch, migrate};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel_async::RunQueryDsl;

use crate::TestDb;

/// column -> (type, nullable)
pub type TableColumns = BTreeMap<String, (String, bool)>;
/// table -> column -> (type, nullable)
pub type Columns = BTreeMap<String, TableColumns>;
/// table -> set of unique keys (column lists in key order)
pub type Uniques = BTreeMap<String, BTreeSet<Vec<String>>>;
/// table -> its primary key's columns, in key order
pub type PrimaryKeys = BTreeMap<String, Vec<String>>;

/// What a migrated database holds, as the schema check compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Tables, columns, types, nullability.
    pub columns: Columns,
    /// Unique keys other than the primary key.
    pub uniques: Uniques,
    /// Primary keys.
    pub primary_keys: PrimaryKeys,
}

#[derive(QueryableByName, Debug)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    max_length: Option<i64>,
    #[diesel(sql_type = Text)]
    is_nullable: String,
    #[diesel(sql_type = BigInt)]
    pk: i64,
}

#[derive(QueryableByName, Debug)]
struct IndexRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    index_name: String,
    #[diesel(sql_type = BigInt)]
    seqno: i64,
    #[diesel(sql_type = Text)]
    column_name: String,
}

const PG_COLUMNS: &str = "SELECT table_name::text AS table_name, column_name::text AS column_name, \
    data_type::text AS data_type, character_maximum_length::bigint AS max_length, \
    is_nullable::text AS is_nullable, 0::bigint AS pk \
    FROM information_schema.columns WHERE table_schema = 'public' \
    AND table_name <> '__diesel_schema_migrations'";
const PG_UNIQUES: &str = "SELECT t.relname::text AS table_name, ic.relname::text AS index_name, \
    k.ord::bigint AS seqno, a.attname::text AS column_name \
    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid \
    JOIN pg_namespace n ON n.oid = t.relnamespace \
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
    WHERE n.nspname = 'public' AND i.indisunique AND NOT i.indisprimary \
    AND t.relname <> '__diesel_schema_migrations'";
const PG_PRIMARY: &str = "SELECT t.relname::text AS table_name, ic.relname::text AS index_name, \
    k.ord::bigint AS seqno, a.attname::text AS column_name \
    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid \
    JOIN pg_namespace n ON n.oid = t.relnamespace \
    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
    WHERE n.nspname = 'public' AND i.indisprimary \
    AND t.relname <> '__diesel_schema_migrations'";
const MYSQL_COLUMNS: &str = "SELECT CAST(table_name AS CHAR) AS table_name, CAST(column_name AS CHAR) AS column_name, \
    CAST(data_type AS CHAR) AS data_type, CAST(character_maximum_length AS SIGNED) AS max_length, \
    CAST(is_nullable AS CHAR) AS is_nullable, CAST(0 AS SIGNED) AS pk \
    FROM information_schema.columns WHERE table_schema = DATABASE() \
    AND table_name <> '__diesel_schema_migrations'";
const MYSQL_UNIQUES: &str = "SELECT CAST(table_name AS CHAR) AS table_name, CAST(index_name AS CHAR) AS index_name, \
    CAST(seq_in_index AS SIGNED) AS seqno, CAST(column_name AS CHAR) AS column_name \
    FROM information_schema.statistics WHERE table_schema = DATABASE() \
    AND non_unique = 0 AND index_name <> 'PRIMARY' AND table_name <> '__diesel_schema_migrations'";
const MYSQL_PRIMARY: &str = "SELECT CAST(table_name AS CHAR) AS table_name, CAST(index_name AS CHAR) AS index_name, \
    CAST(seq_in_index AS SIGNED) AS seqno, CAST(column_name AS CHAR) AS column_name \
    FROM information_schema.statistics WHERE table_schema = DATABASE() \
    AND index_name = 'PRIMARY' AND table_name <> '__diesel_schema_migrations'";
const SQLITE_PRIMARY: &str = "SELECT m.name AS table_name, 'pk' AS index_name, p.pk AS seqno, \
    p.name AS column_name \
    FROM sqlite_master m JOIN pragma_table_info(m.name) p \
    WHERE m.type = 'table' AND p.pk > 0 AND m.name NOT LIKE 'sqlite_%' \
    AND m.name <> '__diesel_schema_migrations'";
const SQLITE_COLUMNS: &str = "SELECT m.name AS table_name, p.name AS column_name, p.type AS data_type, \
    NULL AS max_length, CASE WHEN p.\"notnull\" = 1 OR p.pk > 0 THEN 'NO' ELSE 'YES' END AS is_nullable, \
    p.pk AS pk \
    FROM sqlite_master m JOIN pragma_table_info(m.name) p \
    WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '__diesel_schema_migrations'";
const SQLITE_UNIQUES: &str = "SELECT m.name AS table_name, il.name AS index_name, ii.seqno AS seqno, \
    ii.name AS column_name \
    FROM sqlite_master m JOIN pragma_index_list(m.name) il JOIN pragma_index_info(il.name) ii \
    WHERE m.type = 'table' AND il.\"unique\" = 1 AND il.origin <> 'pk' \
    AND m.name <> '__diesel_schema_migrations'";

/// Maps a backend's column type to the diesel type name used in schema.rs (with a VARCHAR length).
fn normalize(backend: Backend, row: &ColumnRow) -> String {
    let t = row.data_type.to_ascii_lowercase();
    let (base, len_in_type) = match t.split_once('(') {
        Some((b, rest)) => (
            b.trim().to_owned(),
            rest.trim_end_matches(')').parse::<i64>().ok(),
        ),
        None => (t.clone(), None),
    };
    let len = row.max_length.or(len_in_type);
    match (backend, base.as_str()) {
        (Backend::Sqlite, "integer") if row.pk > 0 => "BigInt".into(),
        (_, "bigint") => "BigInt".into(),
        (_, "integer" | "int") => "Integer".into(),
        (_, "character varying" | "varchar") => format!("Varchar({})", len.unwrap_or(-1)),
        (_, "text") => "Text".into(),
        (_, "timestamp without time zone" | "timestamp" | "datetime") => "Timestamp".into(),
        (_, "date") => "Date".into(),
        (b, other) => panic!(
            "{b}: unexpected column type `{other}` for {}.{}",
            row.table_name, row.column_name
        ),
    }
}

/// Index rows (table, index, position, column) grouped into each index's column list.
fn indexes(rows: Vec<IndexRow>) -> BTreeMap<(String, String), Vec<String>> {
    let mut by_index: BTreeMap<(String, String), Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        by_index
            .entry((row.table_name, row.index_name))
            .or_default()
            .push((row.seqno, row.column_name));
    }
    by_index
        .into_iter()
        .map(|(k, mut cols)| {
            cols.sort();
            (k, cols.into_iter().map(|(_, c)| c).collect())
        })
        .collect()
}

/// The schema of a fresh database on `backend` migrated with `sets`.
pub async fn introspect(backend: Backend, sets: &[&'static MigrationSet]) -> Schema {
    let db = TestDb::unmigrated(backend).await;
    migrate::run_pending(db.url(), sets)
        .await
        .unwrap_or_else(|e| panic!("migrating {backend}: {e}"));
    let mut conn = db.conn().await;
    let (cols_sql, uniq_sql, pk_sql) = match backend {
        Backend::Postgres => (PG_COLUMNS, PG_UNIQUES, PG_PRIMARY),
        Backend::Mysql => (MYSQL_COLUMNS, MYSQL_UNIQUES, MYSQL_PRIMARY),
        Backend::Sqlite => (SQLITE_COLUMNS, SQLITE_UNIQUES, SQLITE_PRIMARY),
    };
    let conn: &mut DbConnection = &mut conn;
    let col_rows: Vec<ColumnRow> =
        dispatch!(&mut *conn, c => diesel::sql_query(cols_sql).load(c).await).expect("columns");
    let idx_rows: Vec<IndexRow> =
        dispatch!(&mut *conn, c => diesel::sql_query(uniq_sql).load(c).await).expect("unique keys");
    let pk_rows: Vec<IndexRow> =
        dispatch!(&mut *conn, c => diesel::sql_query(pk_sql).load(c).await).expect("primary keys");

    let mut columns = Columns::new();
    for row in &col_rows {
        columns.entry(row.table_name.clone()).or_default().insert(
            row.column_name.clone(),
            (normalize(backend, row), row.is_nullable == "YES"),
        );
    }
    let mut uniques = Uniques::new();
    for ((table, _), cols) in indexes(idx_rows) {
        uniques.entry(table).or_default().insert(cols);
    }
    let primary_keys = indexes(pk_rows)
        .into_iter()
        .map(|((table, _), cols)| (table, cols))
        .collect();
    Schema {
        columns,
        uniques,
        primary_keys,
    }
}

/// The primary keys the `table!`s of a schema source declare: `name (a, b) {` → `[a, b]`.
pub fn parse_primary_keys(src: &str) -> PrimaryKeys {
    src.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(") {"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(" (")?;
            let key = rest.strip_suffix(") {")?;
            Some((
                name.trim().to_owned(),
                key.split(',').map(|c| c.trim().to_owned()).collect(),
            ))
        })
        .collect()
}

/// Parses a schema file: table -> column -> (diesel type, nullable). `#[sql_name]` gives the SQL
/// name.
pub fn parse_schema_rs(src: &str) -> Columns {
    let mut tables = BTreeMap::new();
    let mut current: Option<(String, TableColumns)> = None;
    let mut sql_name: Option<String> = None;
    for line in src.lines().map(str::trim) {
        if line.starts_with("///") || line.starts_with("//") {
            continue;
        }
        // `name (id) {`, `name (user_id, period) {`: any primary key, composite ones too.
        if current.is_none()
            && line.ends_with(") {")
            && let Some((name, _)) = line.split_once(" (")
        {
            current = Some((name.trim().to_owned(), BTreeMap::new()));
            continue;
        }
        if let Some(rest) = line.strip_prefix("#[sql_name = \"") {
            sql_name = Some(rest.trim_end_matches("\"]").to_owned());
            continue;
        }
        if let Some((table, cols)) = current.as_mut()
            && let Some((col, ty)) = line.split_once(" -> ")
        {
            let ty = ty.trim_end_matches(',');
            let (ty, nullable) = match ty.strip_prefix("Nullable<") {
                Some(inner) => (inner.trim_end_matches('>').to_owned(), true),
                None => (ty.to_owned(), false),
            };
            let name = sql_name.take().unwrap_or_else(|| col.to_owned());
            assert!(
                cols.insert(name, (ty, nullable)).is_none(),
                "duplicate column in {table}"
            );
            continue;
        }
        if line == "}"
            && let Some((table, cols)) = current.take()
        {
            tables.insert(table, cols);
        }
    }
    tables
}

fn strip_len(t: &str) -> &str {
    t.split_once('(').map_or(t, |(b, _)| b)
}

/// Columns with VARCHAR lengths dropped (the schema files do not carry them).
pub fn without_lengths(columns: &Columns) -> Columns {
    columns
        .iter()
        .map(|(t, cols)| {
            let cols = cols
                .iter()
                .map(|(c, (ty, n))| (c.clone(), (strip_len(ty).to_owned(), *n)))
                .collect();
            (t.clone(), cols)
        })
        .collect()
}

/// The checks above for `sets` (applied in order); returns PostgreSQL's migrated columns and
/// unique keys for further assertions (e.g. the unique keys a spec names).
pub async fn check_migration_sets(sets: &[&'static MigrationSet]) -> (Columns, Uniques) {
    let (sqlite, pg, mysql) = tokio::join!(
        introspect(Backend::Sqlite, sets),
        introspect(Backend::Postgres, sets),
        introspect(Backend::Mysql, sets)
    );
    // Same tables, columns, types (VARCHAR lengths included) and nullability on all three.
    assert_eq!(
        sqlite.columns, pg.columns,
        "SQLite and PostgreSQL columns differ"
    );
    assert_eq!(
        pg.columns, mysql.columns,
        "PostgreSQL and MySQL columns differ"
    );
    // Same unique keys and primary keys on all three.
    assert_eq!(
        sqlite.uniques, pg.uniques,
        "SQLite and PostgreSQL unique keys differ"
    );
    assert_eq!(
        pg.uniques, mysql.uniques,
        "PostgreSQL and MySQL unique keys differ"
    );
    assert_eq!(
        sqlite.primary_keys, pg.primary_keys,
        "SQLite and PostgreSQL primary keys differ"
    );
    assert_eq!(
        pg.primary_keys, mysql.primary_keys,
        "PostgreSQL and MySQL primary keys differ"
    );

    // They match the sets' schema sources together, which share no table.
    let mut schema = Columns::new();
    let mut keys = PrimaryKeys::new();
    for set in sets {
        keys.extend(parse_primary_keys(set.schema));
        let tables = parse_schema_rs(set.schema);
        assert!(
            !tables.is_empty(),
            "no table parsed from the schema of migration set `{}`",
            set.name
        );
        assert_eq!(
            tables.keys().map(String::as_str).collect::<Vec<_>>(),
            {
                let mut t = set.tables();
                t.sort_unstable();
                t
            },
            "the tables of `{}` as MigrationSet::tables lists them",
            set.name
        );
        for (table, cols) in tables {
            assert!(
                schema.insert(table.clone(), cols).is_none(),
                "{table} is in the schema of `{}` and of an earlier set",
                set.name
            );
        }
    }
    assert_eq!(
        without_lengths(&pg.columns),
        schema,
        "the migrated schema does not match the sets' schema sources"
    );
    assert_eq!(
        pg.primary_keys, keys,
        "the migrated primary keys do not match the keys of the sets' `table!`s"
    );

    // Each set creates exactly its own tables, on all three backends.
    for (i, set) in sets.iter().enumerate() {
        let own: BTreeSet<String> = parse_schema_rs(set.schema).into_keys().collect();
        for backend in [Backend::Sqlite, Backend::Postgres, Backend::Mysql] {
            let before: BTreeSet<String> = introspect(backend, &sets[..i])
                .await
                .columns
                .into_keys()
                .collect();
            let after: BTreeSet<String> = introspect(backend, &sets[..=i])
                .await
                .columns
                .into_keys()
                .collect();
            let added: BTreeSet<String> = after.difference(&before).cloned().collect();
            assert_eq!(
                added, own,
                "{backend}: the migrations of `{}` do not create exactly the tables of its schema",
                set.name
            );
        }
    }
    (pg.columns, pg.uniques)
}
