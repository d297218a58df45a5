//! The parallel variant (`jenkinsfile <JOB> --workers N [--partitions P]`): a Run stage of N
//! `parallel` worker stages, each on an agent of its own, building the launcher there and running
//! the same `jenkins/run-job.sh <JOB> --join --partitions P --workers 2 --result-file
//! result-<i>.json`. The first launch creates the execution and its partitions; the others join it
//! and claim partitions from the database (`SELECT … FOR UPDATE SKIP LOCKED`); a worker with
//! nothing left exits 0 with status JOINED. Each worker maps its own exit code like the single
//! variant, archives and stashes its result file; `post { always }` on the top-level agent
//! unstashes them and summarizes them for Slack.
//!
//! Only `RERUN` differs between the workers: worker 1 passes it on, the others run with
//! `RERUN=false`, because a worker that starts after the rerun completed (its agent was busy,
//! its build slow) would otherwise run the whole instance again.
//!
//! Which steps of a job are partitioned is in the job's code (its `steps()`), not in its
//! descriptor, and the generator builds no job: it generates this variant for any job. A job
//! without a partitioned step is refused by `run --join` at run time (exit 2 in every worker),
//! and the pipeline's header says so.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use super::prelude::{FORMAT_RESULT, Prelude, slack_posts};

/// How many worker stages a parallel pipeline may have (`jenkinsfile --workers`).
pub const WORKER_STAGES: RangeInclusive<u32> = 2..=64;

/// Partitions each worker process works at once (its `run --workers`).
pub const PROCESS_WORKERS: u32 = 2;

/// The default partitions per worker stage (`--partitions` = this × `--workers`).
pub const PARTITIONS_PER_STAGE: u32 = 4;

/// The shape of a parallel pipeline, checked: N worker stages, each running `run <JOB> --join
/// --partitions P --workers 2` on an agent of its own, and P partitions per partitioned step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallel {
    workers: u32,
    partitions: u32,
}

impl Parallel {
    /// `workers` stages (2 to 64) sharing `partitions` partitions per partitioned step (at least
    /// one per stage; default [`PARTITIONS_PER_STAGE`] per stage). The error names the flag.
    pub fn new(workers: u32, partitions: Option<u32>) -> Result<Self, String> {
        if !WORKER_STAGES.contains(&workers) {
            return Err(format!(
                "--workers {workers}: a parallel pipeline has {} to {} worker stages",
                WORKER_STAGES.start(),
                WORKER_STAGES.end()
            ));
        }
        let partitions = partitions.unwrap_or(workers * PARTITIONS_PER_STAGE);
        if partitions < workers {
            return Err(format!(
                "--partitions {partitions} is less than --workers {workers}: a worker stage would \
                 have no partition to work; give at least {workers} (default: {} × --workers = {})",
                PARTITIONS_PER_STAGE,
                workers * PARTITIONS_PER_STAGE
            ));
        }
        Ok(Parallel {
            workers,
            partitions,
        })
    }

    /// The worker stages.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// The partitions of each partitioned step.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The `jenkinsfile` flags that make this pipeline (after the job name).
    pub fn flags(&self) -> String {
        format!(
            " --workers {} --partitions {}",
            self.workers, self.partitions
        )
    }

    /// The result file of worker `i` (1-based).
    pub fn result_file(i: u32) -> String {
        format!("result-{i}.json")
    }

    /// Header lines (comments without `// `) that say what this variant does.
    pub(super) fn about(&self, job: &str) -> Vec<String> {
        let (n, p) = (self.workers, self.partitions);
        vec![
            format!(
                "PARALLEL VARIANT, for big runs: {n} worker stages, each on an agent (executor) of its own, build"
            ),
            format!(
                "the launcher there and run the same `run {job} --join --partitions {p} --workers {PROCESS_WORKERS}`."
            ),
            format!(
                "The first to start creates the execution and splits each partitioned step into {p} partitions;"
            ),
            "the others join that execution and claim its partitions from the database (SELECT ... FOR"
                .to_owned(),
            format!(
                "UPDATE SKIP LOCKED), {PROCESS_WORKERS} at a time each. A worker with nothing left to claim exits 0 with"
            ),
            "status JOINED; the worker that is not JOINED carries the run's result. Only partitioned steps"
                .to_owned(),
            "are shared out (the others run in the worker that started the execution). Which steps are"
                .to_owned(),
            "partitioned is in the job's code, not its descriptor, so it is not checked here: `run --join`"
                .to_owned(),
            "refuses a job without a partitioned step (exit 2 in every worker). The database must be"
                .to_owned(),
            "PostgreSQL or MySQL/MariaDB: on SQLite `run --join` exits 2. RERUN reaches worker 1 only."
                .to_owned(),
            format!(
                "Make a Jenkins job of this pipeline or of the job's single one (`jenkinsfile {job}`), not both."
            ),
        ]
    }

    /// The comment above the top-level `agent any`.
    pub(super) const AGENT: &'static str = "Only for `post` (the workers' result files, the Slack summary): each worker stage has its own.";

    /// Writes the stages, `post` and the helpers after the pipeline.
    pub(super) fn write(&self, w: &mut String, prelude: &Prelude) {
        let job = prelude.job;
        let restart = prelude.restart("the result files");
        let n = self.workers.to_string();
        let _ = write!(
            w,
            "    stages {{
        stage('Run') {{
            // {n} workers at once, each on an agent of its own. One that fails does not stop the
            // others (failFast is off): their partitions are theirs to finish.
            parallel {{
"
        );
        for i in 1..=self.workers {
            self.worker_stage(w, job, i, &restart);
        }
        let _ = write!(
            w,
            "            }}
        }}
    }}

"
        );
        w.push_str(&POST_ALWAYS.replace("@N@", &n));
        slack_posts(w, job, &restart);
        w.push_str(HELPERS);
        w.push_str(FORMAT_RESULT);
    }

    /// Worker `i`'s stage.
    fn worker_stage(&self, w: &mut String, job: &str, i: u32, restart: &str) {
        let file = Self::result_file(i);
        let p = self.partitions;
        let _ = write!(
            w,
            "                stage('worker {i}') {{
                    agent any
                    steps {{
                        sh 'cargo build --release --locked -p batch-launcher'
                        // A {file} from an earlier build must not be archived or reported as this one's.
                        sh 'rm -f {file}'
"
        );
        // Worker 1 runs with the build's RERUN, the others without: see the module's comment.
        let pad = if i == 1 {
            ""
        } else {
            let _ = write!(
                w,
                "                        // --rerun (RERUN) is worker 1's alone: a worker starting after that run completed would run it again.
                        withEnv(['RERUN=false']) {{
"
            );
            "    "
        };
        let call = format!(
            "jenkins/run-job.sh {job} --join --partitions {p} --workers {PROCESS_WORKERS} --result-file {file}"
        );
        let lines = [
            "script {".to_owned(),
            format!(
                "    int code = sh(returnStatus: true, label: 'batch-launcher run (worker {i})', script: '{call}')"
            ),
            "    switch (code) {".to_owned(),
            format!(
                "        case 0: echo 'worker {i}: {job} exit 0: worked partitions of the execution (JOINED), ran it, or found it completed (NOOP)'; break"
            ),
            format!(
                "        case 3: unstable('worker {i}: {job} completed with item failures (exit 3): see {file}'); break"
            ),
            format!(
                "        case 4: currentBuild.result = 'NOT_BUILT'; echo 'worker {i}: {job} refused (exit 4, unexpected with --join): this job instance is already running elsewhere, which reports its own outcome'; break"
            ),
            format!(
                "        case 2: error('worker {i}: {job} not run: usage, configuration or parameter error (exit 2), see the log (run --join needs PostgreSQL or MySQL/MariaDB and a job with a partitioned step)'); break"
            ),
            format!(
                "        default: error(\"worker {i}: {job} failed (exit ${{code}}): see the log and {file}; {restart}\")"
            ),
            "    }".to_owned(),
            "}".to_owned(),
        ];
        for line in lines {
            let _ = writeln!(w, "                        {pad}{line}");
        }
        if i != 1 {
            let _ = writeln!(w, "                        }}");
        }
        let _ = write!(
            w,
            "                    }}
                    post {{
                        always {{
                            archiveArtifacts artifacts: '{file}', allowEmptyArchive: true
                            stash name: 'result-{i}', includes: '{file}', allowEmpty: true
                        }}
                    }}
                }}
"
        );
    }
}

/// `post { always }`: the workers' result files, unstashed, summarized (`@N@`: the workers).
const POST_ALWAYS: &str = r#"    post {
        always {
            // The workers' result files, from their agents (a worker that never reached its own
            // post stashed none); an earlier build's must not be reported as this one's.
            sh 'rm -f result-*.json'
            script {
                for (int i = 1; i <= @N@; i++) {
                    try {
                        unstash "result-${i}"
                    } catch (Exception e) {
                        echo "worker ${i} stashed no result file: ${e.message}"
                    }
                }
                summary = resultSummary(@N@)
            }
        }
"#;

/// The end of the pipeline and the summary helpers.
const HELPERS: &str = r#"    }
}

/**
 * The workers' result files for Slack, or why one is missing. A worker whose status is not JOINED
 * carries the run's result (it started the execution or took it over, or found it completed:
 * NOOP); each JOINED worker, which worked partitions of it, gets one line. Never fails the build.
 */
String resultSummary(int workers) {
    def runs = []
    def joined = []
    for (int i = 1; i <= workers; i++) {
        String file = "result-${i}.json"
        try {
            if (!fileExists(file)) {
                runs << "worker ${i}: no ${file}: the launcher stopped before writing it (see the worker's log)"
            } else {
                def r = readJSON(file: file)
                if (r.status == 'JOINED') {
                    joined << "worker ${i}: ${formatJoined(r)}"
                } else {
                    runs << "worker ${i}: ${formatResult(r)}"
                }
            }
        } catch (Exception e) {
            runs << "worker ${i}: ${file} could not be read: ${e.message}"
        }
    }
    if (runs.isEmpty()) {
        runs << 'every worker joined an execution started elsewhere, which reports its own outcome'
    }
    if (joined) {
        runs << "joined (${joined.size()} of ${workers}):"
        runs.addAll(joined)
    }
    return runs.join('\n')
}

/** One line about a JOINED worker: its exit code, time and what it worked. */
@NonCPS
String formatJoined(Map r) {
    String m = r.message ? r.message.toString() : ''
    if (m.length() > 300) {
        m = m.substring(0, 300) + '...'
    }
    return "JOINED (${r.exit_code}) in ${r.duration_ms} ms" + (m ? ": ${m}" : '')
}

"#;
