//! The daily schedule (the ADR's `DailyAssetRefreshScheduler`): when `serve` runs the job.
//!
//! The expression lives in configuration (`[schedule] assetRefreshJob`, seconds field first,
//! evaluated in `[batch] timezone`); this is its default, kept equal to `config/defaults.toml`.

/// Every day at 04:00 in the business time zone.
pub const DEFAULT_CRON: &str = "0 0 4 * * *";

#[cfg(test)]
mod tests {
    #[test]
    fn default_matches_the_configuration_defaults() {
        let props =
            batch_common::config::BatchProperties::load_from(None, Vec::new(), &[&crate::MODULE])
                .unwrap();
        assert_eq!(
            props.schedule_for(super::super::JOB_NAME),
            Some(super::DEFAULT_CRON)
        );
    }
}
