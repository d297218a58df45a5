DROP TABLE batch_item_failure;
DROP TABLE batch_step_execution;
DROP TABLE batch_job_execution;
DROP TABLE batch_job_instance;
