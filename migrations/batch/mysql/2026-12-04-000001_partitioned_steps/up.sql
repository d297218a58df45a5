-- Partitioned steps (Spring Batch's worker step executions): a partition is a row of
-- batch_step_execution named `<step>:partition<N>`, whose partition_of is its manager step
-- execution. range_from..range_to (inclusive) is its key range; owner is the worker process
-- holding it and last_updated its lease, renewed by the owner's heartbeat; claim_count counts
-- its claims (more than 1: re-claimed after a lost worker or a release). Workers claim
-- partitions with SELECT ... FOR UPDATE SKIP LOCKED, walking (partition_of, status, id) from the
-- first candidate, so a claim costs the same however many partitions a step has.
ALTER TABLE batch_step_execution ADD COLUMN partition_of BIGINT;
ALTER TABLE batch_step_execution ADD COLUMN range_from BIGINT;
ALTER TABLE batch_step_execution ADD COLUMN range_to BIGINT;
ALTER TABLE batch_step_execution ADD COLUMN owner VARCHAR(255);
ALTER TABLE batch_step_execution ADD COLUMN claim_count INTEGER NOT NULL DEFAULT 0;
CREATE INDEX idx_batch_step_execution_partition ON batch_step_execution (partition_of, status, id);
