-- Batch metadata (Spring Batch shaped), PostgreSQL dialect.
CREATE TABLE batch_job_instance (
    id         BIGSERIAL PRIMARY KEY,
    job_name   VARCHAR(100) NOT NULL,
    job_key    VARCHAR(64) NOT NULL,
    parameters TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    CONSTRAINT uq_batch_job_instance_name_key UNIQUE (job_name, job_key)
);

-- live_instance_id = job_instance_id while the execution is live (STARTING, STARTED, STOPPING), NULL otherwise.
-- Its UNIQUE constraint is what allows only one live execution per instance across processes and machines.
CREATE TABLE batch_job_execution (
    id               BIGSERIAL PRIMARY KEY,
    job_instance_id  BIGINT NOT NULL,
    status           VARCHAR(16) NOT NULL,
    exit_code        VARCHAR(32) NOT NULL,
    exit_message     TEXT,
    parameters       TEXT NOT NULL,
    owner            VARCHAR(255),
    live_instance_id BIGINT,
    created_at       TIMESTAMP NOT NULL,
    start_time       TIMESTAMP,
    end_time         TIMESTAMP,
    last_updated     TIMESTAMP NOT NULL,
    CONSTRAINT uq_batch_job_execution_live UNIQUE (live_instance_id),
    CONSTRAINT fk_batch_job_execution_instance FOREIGN KEY (job_instance_id) REFERENCES batch_job_instance (id)
);
CREATE INDEX idx_batch_job_execution_instance ON batch_job_execution (job_instance_id);
CREATE INDEX idx_batch_job_execution_created ON batch_job_execution (created_at);

CREATE TABLE batch_step_execution (
    id                BIGSERIAL PRIMARY KEY,
    job_execution_id  BIGINT NOT NULL,
    step_name         VARCHAR(100) NOT NULL,
    status            VARCHAR(16) NOT NULL,
    read_count        BIGINT NOT NULL,
    write_count       BIGINT NOT NULL,
    filter_count      BIGINT NOT NULL,
    skip_count        BIGINT NOT NULL,
    commit_count      BIGINT NOT NULL,
    rollback_count    BIGINT NOT NULL,
    retry_count       BIGINT NOT NULL,
    counters          TEXT NOT NULL,
    execution_context TEXT NOT NULL,
    exit_code         VARCHAR(32) NOT NULL,
    exit_message      TEXT,
    start_time        TIMESTAMP NOT NULL,
    end_time          TIMESTAMP,
    last_updated      TIMESTAMP NOT NULL,
    CONSTRAINT uq_batch_step_execution_name UNIQUE (job_execution_id, step_name),
    CONSTRAINT fk_batch_step_execution_job FOREIGN KEY (job_execution_id) REFERENCES batch_job_execution (id)
);

CREATE TABLE batch_item_failure (
    id               BIGSERIAL PRIMARY KEY,
    job_execution_id BIGINT NOT NULL,
    job_instance_id  BIGINT NOT NULL,
    step_name        VARCHAR(100) NOT NULL,
    item_key         VARCHAR(255) NOT NULL,
    error            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    resolved_at      TIMESTAMP,
    CONSTRAINT uq_batch_item_failure_item UNIQUE (job_execution_id, step_name, item_key),
    CONSTRAINT fk_batch_item_failure_job FOREIGN KEY (job_execution_id) REFERENCES batch_job_execution (id)
);
CREATE INDEX idx_batch_item_failure_instance ON batch_item_failure (job_instance_id, step_name);
