//! `AssetRefreshUseCase`: the refresh logic (the ADR's use case), independent of HTTP and the
//! database — it sees only the [`AssetProvider`] trait and turns one user's answer into a row to
//! write or a failure. Concurrency is the step's business (`batch_common::ConcurrentStep`).

use std::sync::Arc;

use chrono::{NaiveDate, NaiveDateTime};
use core_domain::models::NewAssetHistory;

use crate::provider::{AssetProvider, FetchError};

/// Fetches a user's assets and turns them into the snapshot row of one day.
#[derive(Clone)]
pub struct AssetRefreshUseCase {
    provider: Arc<dyn AssetProvider>,
}

impl std::fmt::Debug for AssetRefreshUseCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetRefreshUseCase")
            .finish_non_exhaustive()
    }
}

impl AssetRefreshUseCase {
    /// Fetching through `provider`.
    pub fn new(provider: Arc<dyn AssetProvider>) -> Self {
        AssetRefreshUseCase { provider }
    }

    /// Refreshes `user_id` for `snapshot_day`: the row to upsert, or why not (logged as a
    /// warning; the step records it as an item failure).
    pub async fn refresh(
        &self,
        user_id: i64,
        snapshot_day: NaiveDate,
        now: NaiveDateTime,
    ) -> Result<NewAssetHistory, FetchError> {
        match self.provider.fetch(user_id).await {
            Ok(s) => Ok(NewAssetHistory {
                user_id,
                snapshot_day,
                total_amount: s.total_amount,
                cash_amount: s.cash_amount,
                investment_amount: s.investment_amount,
                currency: s.currency,
                created_at: now,
                updated_at: now,
            }),
            Err(e) => {
                tracing::warn!(user_id, attempts = e.attempts, error = %e, "asset refresh failed for a user");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;

    use super::*;
    use crate::provider::{AssetSnapshot, FetchErrorKind, MockAssetProvider};

    fn snap(user_id: i64) -> AssetSnapshot {
        AssetSnapshot {
            user_id,
            total_amount: user_id * 10,
            cash_amount: user_id * 4,
            investment_amount: user_id * 6,
            currency: "KRW".into(),
            as_of: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_snapshot_becomes_a_row_and_a_failure_stays_one() {
        let mut provider = MockAssetProvider::new();
        provider
            .expect_fetch()
            .with(eq(2))
            .times(1)
            .returning(|id| Ok(snap(id)));
        provider.expect_fetch().with(eq(3)).times(1).returning(|_| {
            Err(FetchError {
                kind: FetchErrorKind::Unavailable,
                attempts: 3,
                message: "503".into(),
            })
        });
        let usecase = AssetRefreshUseCase::new(Arc::new(provider));
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let now = day.and_hms_opt(1, 0, 0).unwrap();
        let row = usecase.refresh(2, day, now).await.unwrap();
        assert_eq!(
            (
                row.user_id,
                row.total_amount,
                row.cash_amount,
                row.investment_amount
            ),
            (2, 20, 8, 12)
        );
        assert_eq!(
            (row.snapshot_day, row.created_at, row.updated_at),
            (day, now, now)
        );
        let e = usecase.refresh(3, day, now).await.unwrap_err();
        assert_eq!((e.kind, e.attempts), (FetchErrorKind::Unavailable, 3));
        assert!(e.to_string().contains("Unavailable") && e.to_string().contains("503"));
    }
}
