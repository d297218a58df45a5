//! `AssetRefreshUseCase`: the refresh logic (the ADR's use case), independent of HTTP and the
//! database — it sees only the [`AssetProvider`] trait and produces rows to write and failures.

use std::sync::Arc;

use batch_common::repository::ItemFailureRecord;
use chrono::{NaiveDate, NaiveDateTime};
use core_domain::models::NewAssetHistory;
use futures_util::StreamExt as _;

use crate::provider::{AssetProvider, AssetSnapshot};

/// What refreshing a batch of users produced.
#[derive(Debug, Default)]
pub struct Refreshed {
    /// One snapshot row per user that succeeded.
    pub rows: Vec<NewAssetHistory>,
    /// One failure per user that did not.
    pub failures: Vec<ItemFailureRecord>,
}

/// Fetches users' assets with bounded concurrency and turns them into snapshot rows of one day.
#[derive(Clone)]
pub struct AssetRefreshUseCase {
    provider: Arc<dyn AssetProvider>,
    concurrency: usize,
}

impl std::fmt::Debug for AssetRefreshUseCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetRefreshUseCase")
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl AssetRefreshUseCase {
    /// At most `concurrency` calls in flight.
    pub fn new(provider: Arc<dyn AssetProvider>, concurrency: usize) -> Self {
        AssetRefreshUseCase {
            provider,
            concurrency: concurrency.max(1),
        }
    }

    /// Refreshes `user_ids` for `snapshot_day`; one user's failure never affects the others.
    /// Rows come back in the order of `user_ids`.
    pub async fn refresh(
        &self,
        user_ids: &[i64],
        snapshot_day: NaiveDate,
        now: NaiveDateTime,
    ) -> Refreshed {
        let provider = &self.provider;
        let mut results: Vec<(
            usize,
            i64,
            Result<AssetSnapshot, crate::provider::FetchError>,
        )> = futures_util::stream::iter(user_ids.iter().copied().enumerate())
            .map(|(i, id)| async move { (i, id, provider.fetch(id).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.sort_unstable_by_key(|(i, _, _)| *i);
        let mut out = Refreshed::default();
        for (_, user_id, result) in results {
            match result {
                Ok(s) => out.rows.push(NewAssetHistory {
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
                    out.failures.push(ItemFailureRecord {
                        item_key: user_id.to_string(),
                        error: e.to_string(),
                        attempts: e.attempts as i32,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;

    use super::*;
    use crate::provider::{FetchError, FetchErrorKind, MockAssetProvider};

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
    async fn one_failure_does_not_stop_the_others() {
        let mut provider = MockAssetProvider::new();
        for id in [1, 2, 4] {
            provider
                .expect_fetch()
                .with(eq(id))
                .times(1)
                .returning(|id| Ok(snap(id)));
        }
        provider.expect_fetch().with(eq(3)).times(1).returning(|_| {
            Err(FetchError {
                kind: FetchErrorKind::Unavailable,
                attempts: 3,
                message: "503".into(),
            })
        });
        let usecase = AssetRefreshUseCase::new(Arc::new(provider), 2);
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        let now = day.and_hms_opt(1, 0, 0).unwrap();
        let out = usecase.refresh(&[1, 2, 3, 4], day, now).await;
        assert_eq!(
            out.rows.iter().map(|r| r.user_id).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(out.rows[1].total_amount, 20);
        assert!(
            out.rows
                .iter()
                .all(|r| r.snapshot_day == day && r.created_at == now)
        );
        assert_eq!(out.failures.len(), 1);
        assert_eq!(
            (out.failures[0].item_key.as_str(), out.failures[0].attempts),
            ("3", 3)
        );
        assert!(
            out.failures[0].error.contains("Unavailable") && out.failures[0].error.contains("503")
        );
    }
}
