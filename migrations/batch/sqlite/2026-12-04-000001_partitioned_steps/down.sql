DROP INDEX idx_batch_step_execution_partition;
ALTER TABLE batch_step_execution DROP COLUMN claim_count;
ALTER TABLE batch_step_execution DROP COLUMN owner;
ALTER TABLE batch_step_execution DROP COLUMN range_to;
ALTER TABLE batch_step_execution DROP COLUMN range_from;
ALTER TABLE batch_step_execution DROP COLUMN partition_of;
