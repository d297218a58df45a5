#![doc = include_str!("../README.md")]

use batch_common::job::ParamKind;
use batch_common::{JobDescriptor, ParameterSpec};

/// The job's name on the command line and in the metadata tables.
pub const JOB_NAME: &str = "pointBalanceSyncJob";

/// What `batch-launcher list` shows for this job.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Sync point balances from the database to the Redis cache, then write the daily points report",
    steps: &["syncPointBalanceStep", "generateDailyReportStep"],
    parameters: &[
        ParameterSpec {
            name: "date",
            kind: ParamKind::Date,
            identifying: true,
            description: "report date YYYY-MM-DD (default: yesterday in batch.timezone)",
        },
        ParameterSpec {
            name: "verify",
            kind: ParamKind::Bool,
            identifying: false,
            description: "true: report cache drift without writing (default false)",
        },
    ],
};
