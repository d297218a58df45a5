//! The job instance aggregate: a job name plus the hash of its identifying parameters.

use chrono::NaiveDateTime;
use core_domain::{DbConnection, DbError, dispatch};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::rows::JobInstance;
use super::schema::batch_job_instance as i;
use super::{JobRepository, is_unique_violation};

impl JobRepository {
    /// The instance of `job_name` with `job_key`, created if it does not exist (race-safe).
    pub async fn get_or_create_instance(
        &self,
        job_name: &str,
        job_key: &str,
        parameters_json: &str,
        now: NaiveDateTime,
    ) -> Result<JobInstance, DbError> {
        let mut conn = self.db.get().await?;
        if let Some(found) = find_instance(&mut conn, job_name, job_key).await? {
            return Ok(found);
        }
        let inserted = dispatch!(&mut *conn, c => diesel::insert_into(i::table)
            .values((
                i::job_name.eq(job_name),
                i::job_key.eq(job_key),
                i::parameters.eq(parameters_json),
                i::created_at.eq(now),
            ))
            .execute(c)
            .await);
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {} // another launcher created it just now
            Err(e) => return Err(e.into()),
        }
        find_instance(&mut conn, job_name, job_key)
            .await?
            .ok_or_else(|| DbError::Other(format!("job instance {job_name}/{job_key} vanished")))
    }

    /// One instance by id.
    pub async fn instance(&self, id: i64) -> Result<Option<JobInstance>, DbError> {
        let mut conn = self.db.get().await?;
        Ok(
            dispatch!(&mut *conn, c => i::table.find(id).select(JobInstance::as_select()).first(c).await.optional())?,
        )
    }
}

async fn find_instance(
    conn: &mut DbConnection,
    job_name: &str,
    job_key: &str,
) -> Result<Option<JobInstance>, DbError> {
    Ok(dispatch!(conn, c => i::table
        .filter(i::job_name.eq(job_name))
        .filter(i::job_key.eq(job_key))
        .select(JobInstance::as_select())
        .first(c)
        .await
        .optional())?)
}
