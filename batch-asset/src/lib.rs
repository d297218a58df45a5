#![doc = include_str!("../README.md")]

use batch_common::job::ParamKind;
use batch_common::{JobDescriptor, ParameterSpec};

/// The job's name on the command line and in the metadata tables.
pub const JOB_NAME: &str = "assetRefreshJob";

/// What `batch-launcher list` shows for this job.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Refresh every active user's assets from the external asset API, one snapshot per user per day",
    steps: &["refreshAssetStep"],
    parameters: &[ParameterSpec {
        name: "date",
        kind: ParamKind::Date,
        identifying: true,
        description: "snapshot day YYYY-MM-DD (default: today in batch.timezone)",
    }],
};
