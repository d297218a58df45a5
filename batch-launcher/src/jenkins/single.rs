//! The single variant's stages: one Build stage, one Run stage calling
//! `jenkins/run-job.sh <JOB> --result-file result.json`, the exit code mapped to a build result,
//! `result.json` archived and summarized for Slack.

use std::fmt::Write as _;

use super::RESULT_FILE;
use super::prelude::{FORMAT_RESULT, Prelude, slack_posts};

/// Writes the stages, `post` and the helpers after the pipeline.
pub(super) fn write(w: &mut String, prelude: &Prelude) {
    let job = prelude.job;
    let restart = prelude.restart(RESULT_FILE);
    let _ = write!(
        w,
        r#"    stages {{
        stage('Build') {{
            steps {{
                sh 'cargo build --release --locked -p batch-launcher'
            }}
        }}
        stage('Run') {{
            steps {{
                // A {RESULT_FILE} from an earlier build must not be archived or reported as this one's.
                sh 'rm -f {RESULT_FILE}'
                script {{
                    int code = sh(returnStatus: true, label: 'batch-launcher run', script: 'jenkins/run-job.sh {job} --result-file {RESULT_FILE}')
                    switch (code) {{
                        case 0: echo '{job} completed, or had nothing to do (exit 0)'; break
                        case 3: unstable('{job} completed with item failures (exit 3): see {RESULT_FILE}'); break
                        case 4: currentBuild.result = 'NOT_BUILT'; echo '{job} refused (exit 4): this job instance is already running elsewhere (serve, another machine or a manual run), which reports its own outcome'; break
                        case 2: error('{job} not run: usage, configuration or parameter error (exit 2), see the log'); break
                        default: error("{job} failed (exit ${{code}}): see the log and {RESULT_FILE}; {restart}")
                    }}
                }}
            }}
        }}
    }}

    post {{
        always {{
            archiveArtifacts artifacts: '{RESULT_FILE}', allowEmptyArchive: true
            script {{ summary = resultSummary() }}
        }}
"#
    );
    slack_posts(w, job, &restart);
    let _ = write!(
        w,
        r#"    }}
}}

/** A few lines about {RESULT_FILE} for Slack, or why there are none. Never fails the build. */
String resultSummary() {{
    try {{
        if (!fileExists('{RESULT_FILE}')) {{
            return 'no {RESULT_FILE}: the launcher stopped before writing it (see the console log)'
        }}
        return formatResult(readJSON(file: '{RESULT_FILE}'))
    }} catch (Exception e) {{
        return "{RESULT_FILE} could not be read: ${{e.message}}"
    }}
}}

"#
    );
    w.push_str(FORMAT_RESULT);
}
