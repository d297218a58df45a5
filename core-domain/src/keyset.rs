//! Keyset paging: a query over rows with a unique, ascending `i64` key, read a page at a time
//! (`WHERE key > :after ORDER BY key LIMIT :n`, never OFFSET). batch-common's `KeysetReader` turns
//! any such query into a step's reader with its checkpoint; a domain only says which rows.

use async_trait::async_trait;
use diesel::QueryResult;

use crate::db::DbConnection;
use crate::models::User;

/// Rows by ascending unique `i64` key.
///
/// ```text
/// struct OpenInvoices;
/// #[async_trait]
/// impl KeysetQuery for OpenInvoices {
///     type Row = Invoice;
///     fn key(row: &Invoice) -> i64 { row.id }
///     async fn page_after(&self, conn: &mut DbConnection, after: i64, limit: i64) -> QueryResult<Vec<Invoice>> {
///         dispatch!(conn, c => invoice::table.filter(invoice::open.eq(true)).filter(invoice::id.gt(after))
///             .order(invoice::id.asc()).limit(limit).select(Invoice::as_select()).load(c).await)
///     }
/// }
/// ```
#[async_trait]
pub trait KeysetQuery: Send + Sync + 'static {
    /// One row.
    type Row: Send + Sync + 'static;

    /// The row's key: unique, and the order pages come in.
    fn key(row: &Self::Row) -> i64;

    /// Up to `limit` rows with a key above `after`, keys ascending.
    async fn page_after(
        &self,
        conn: &mut DbConnection,
        after: i64,
        limit: i64,
    ) -> QueryResult<Vec<Self::Row>>;

    /// Up to `limit` rows with a key above `after` and at most `upto`, keys ascending: a page of
    /// one partition of a partitioned step. The default filters [`page_after`](Self::page_after)'s
    /// rows, so a partition's last page reads up to `limit` rows of the next partition for
    /// nothing; override it with `key <= upto` in the statement.
    async fn page_between(
        &self,
        conn: &mut DbConnection,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> QueryResult<Vec<Self::Row>> {
        let mut rows = self.page_after(conn, after, limit).await?;
        rows.retain(|r| Self::key(r) <= upto);
        Ok(rows)
    }

    /// How many rows the query returns in all, if that is cheap to know (progress bars).
    async fn count(&self, conn: &mut DbConnection) -> QueryResult<Option<i64>> {
        let _ = conn;
        Ok(None)
    }

    /// The rows with these keys (ascending) that the query still returns — re-reading the items
    /// that failed in an earlier run. The default asks [`page_after`](Self::page_after) for one
    /// row at each key; override it with one statement when the table allows.
    async fn with_keys(
        &self,
        conn: &mut DbConnection,
        keys: &[i64],
    ) -> QueryResult<Vec<Self::Row>> {
        let mut rows = Vec::with_capacity(keys.len());
        for &key in keys {
            let mut page = self.page_after(conn, key.saturating_sub(1), 1).await?;
            if let Some(row) = page.pop().filter(|r| Self::key(r) == key) {
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

/// The active users by id: the rows of every job that works "for each active user".
#[derive(Debug, Clone, Copy, Default)]
pub struct ActiveUsers;

#[async_trait]
impl KeysetQuery for ActiveUsers {
    type Row = User;

    fn key(user: &User) -> i64 {
        user.id
    }

    async fn page_after(
        &self,
        conn: &mut DbConnection,
        after: i64,
        limit: i64,
    ) -> QueryResult<Vec<User>> {
        User::active_page_after(conn, after, limit).await
    }

    async fn page_between(
        &self,
        conn: &mut DbConnection,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> QueryResult<Vec<User>> {
        User::active_page_between(conn, after, upto, limit).await
    }

    async fn count(&self, conn: &mut DbConnection) -> QueryResult<Option<i64>> {
        User::count_active(conn).await.map(Some)
    }

    async fn with_keys(&self, conn: &mut DbConnection, keys: &[i64]) -> QueryResult<Vec<User>> {
        let mut users = User::find_many(conn, keys).await?;
        // A user deactivated since is not read any more.
        users.retain(User::is_active);
        Ok(users)
    }
}
