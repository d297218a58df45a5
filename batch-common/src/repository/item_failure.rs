//! The item failure aggregate: items that failed in a step (partial failures) and their later
//! resolution.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::rows::ItemFailure;
use super::schema::batch_item_failure as f;
use super::{JobRepository, truncate};

/// A failed item to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemFailureRecord {
    /// The item's key, e.g. a user id.
    pub item_key: String,
    /// The error (shortened to 2,000 characters when stored).
    pub error: String,
    /// Attempts made.
    pub attempts: i32,
}

impl JobRepository {
    /// Records failed items of a step (one row per item and execution; a repeat updates it).
    pub async fn record_item_failures(
        conn: &mut DbConnection,
        job_execution_id: i64,
        job_instance_id: i64,
        step_name: &str,
        failures: &[ItemFailureRecord],
        now: NaiveDateTime,
    ) -> Result<(), DbError> {
        for failure in failures {
            let error = truncate(&failure.error, 2000);
            let key = truncate(&failure.item_key, 250);
            let updated = dispatch!(&mut *conn, c => diesel::update(
                    f::table
                        .filter(f::job_execution_id.eq(job_execution_id))
                        .filter(f::step_name.eq(step_name))
                        .filter(f::item_key.eq(&key)),
                )
                .set((f::error.eq(&error), f::attempts.eq(failure.attempts)))
                .execute(c)
                .await)?;
            if updated == 0 {
                dispatch!(&mut *conn, c => diesel::insert_into(f::table)
                    .values((
                        f::job_execution_id.eq(job_execution_id),
                        f::job_instance_id.eq(job_instance_id),
                        f::step_name.eq(step_name),
                        f::item_key.eq(&key),
                        f::error.eq(&error),
                        f::attempts.eq(failure.attempts),
                        f::created_at.eq(now),
                    ))
                    .execute(c)
                    .await)?;
            }
        }
        Ok(())
    }

    /// Item failures of an instance's step not yet resolved by a later success, oldest first.
    pub async fn unresolved_failures(
        &self,
        job_instance_id: i64,
        step_name: &str,
    ) -> Result<Vec<ItemFailure>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_instance_id.eq(job_instance_id))
            .filter(f::step_name.eq(step_name))
            .filter(f::resolved_at.is_null())
            .order(f::id.asc())
            .select(ItemFailure::as_select())
            .load(c)
            .await)?)
    }

    /// Marks an instance's failures of these items resolved (they succeeded in a later run).
    pub async fn resolve_failures(
        conn: &mut DbConnection,
        job_instance_id: i64,
        step_name: &str,
        item_keys: &[String],
        now: NaiveDateTime,
    ) -> Result<usize, DbError> {
        let mut total = 0;
        for keys in item_keys.chunks(1000) {
            total += dispatch!(&mut *conn, c => diesel::update(
                    f::table
                        .filter(f::job_instance_id.eq(job_instance_id))
                        .filter(f::step_name.eq(step_name))
                        .filter(f::resolved_at.is_null())
                        .filter(f::item_key.eq_any(keys)),
                )
                .set(f::resolved_at.eq(now))
                .execute(c)
                .await)?;
        }
        Ok(total)
    }

    /// Item failures recorded by one execution.
    pub async fn failures_of_execution(
        &self,
        job_execution_id: i64,
    ) -> Result<Vec<ItemFailure>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(dispatch!(&mut *conn, c => f::table
            .filter(f::job_execution_id.eq(job_execution_id))
            .order(f::id.asc())
            .select(ItemFailure::as_select())
            .load(c)
            .await)?)
    }
}
