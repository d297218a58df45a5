//! monthlyStatementJob: for every active user, the month's statement (`member_statement`),
//! one chunked step: active users by id (batch-common's keyset reader) → a plain map to the
//! row → an upsert in the chunk's transaction, with the checkpoint.

use std::sync::Arc;

use async_trait::async_trait;
use batch_common::Clock;
use batch_common::ClockExt as _;
use batch_common::job::{Job, JobDescriptor, ParamDefault, ParamKind, ParameterSpec};
use batch_common::params::{JobParameters, YearMonth};
use batch_common::step::{
    ChunkStep, FilterMap, KeysetReader, Step, TransactionalWriter, WriteOutcome,
};
use core_domain::models::User;
use core_domain::{ActiveUsers, Database, DbConnection};

use crate::models::{MemberStatement, NewMemberStatement};
use crate::settings::ExampleSettings;

/// The job's name on the command line and in the metadata tables.
pub const JOB_NAME: &str = "monthlyStatementJob";

/// The step's name.
pub const STEP_NAME: &str = "writeStatementsStep";

/// What `batch-launcher list` shows, and what every run, kick and schedule resolves against.
pub const DESCRIPTOR: JobDescriptor = JobDescriptor {
    name: JOB_NAME,
    description: "Write every active member's statement for a month (the example domain)",
    steps: &[STEP_NAME],
    parameters: &[
        ParameterSpec::new("month", ParamKind::Month)
            .identifying()
            .default(ParamDefault::LastMonth)
            .describe("the statement month"),
        ParameterSpec::new("mode", ParamKind::OneOf(&["all", "new-only"]))
            .identifying()
            .default(ParamDefault::Value("all"))
            .describe("`new-only`: statements for NEW members only"),
    ],
};

/// `NEW` or `REGULAR`: the tier of a member at the end of `month`.
pub fn tier(user: &User, month: YearMonth, new_member_days: u32) -> &'static str {
    let month_end = month
        .succ()
        .first_day()
        .and_hms_opt(0, 0, 0)
        .expect("midnight");
    let age = month_end - user.created_at;
    if age < chrono::Duration::days(i64::from(new_member_days)) {
        "NEW"
    } else {
        "REGULAR"
    }
}

/// monthlyStatementJob.
pub struct MonthlyStatementJob {
    db: Database,
    clock: Arc<dyn Clock>,
    settings: ExampleSettings,
}

impl MonthlyStatementJob {
    /// The job over `db` with `[example]`'s settings.
    pub fn new(db: Database, clock: Arc<dyn Clock>, settings: ExampleSettings) -> Self {
        MonthlyStatementJob {
            db,
            clock,
            settings,
        }
    }
}

impl Job for MonthlyStatementJob {
    fn descriptor(&self) -> &'static JobDescriptor {
        &DESCRIPTOR
    }

    fn steps(&self, params: &JobParameters) -> anyhow::Result<Vec<Arc<dyn Step>>> {
        let month = params.month("month")?;
        let new_only = params.text("mode")? == "new-only";
        let (fee, days) = (self.settings.monthly_fee, self.settings.new_member_days);
        let period = month.to_string();
        let now = self.clock.now_naive_utc();
        let to_row = move |user: User| -> Option<NewMemberStatement> {
            let tier = tier(&user, month, days);
            (!new_only || tier == "NEW").then(|| NewMemberStatement {
                user_id: user.id,
                period: period.clone(),
                tier: tier.to_owned(),
                fee,
                created_at: now,
                updated_at: now,
            })
        };
        Ok(vec![Arc::new(ChunkStep::transactional(
            STEP_NAME,
            KeysetReader::new(self.db.clone(), ActiveUsers),
            FilterMap(to_row),
            StatementWriter,
        ))])
    }
}

/// Upserts the chunk's statements in the chunk's transaction.
struct StatementWriter;

#[async_trait]
impl TransactionalWriter<NewMemberStatement> for StatementWriter {
    async fn write(
        &self,
        items: &[NewMemberStatement],
        tx: &mut DbConnection,
    ) -> anyhow::Result<WriteOutcome> {
        MemberStatement::upsert_many(tx, items.to_vec()).await?;
        Ok(WriteOutcome {
            written: items.len(),
            counters: [("statements".to_owned(), items.len() as i64)].into(),
            ..WriteOutcome::default()
        })
    }
}
