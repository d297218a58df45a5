-- One statement per member and month. The key is (user_id, period): a re-run of a month
-- updates the rows, never adds. user_id refers to the shared entity `users` (core-domain's set
-- applies before this module's).
CREATE TABLE member_statement (
    user_id    BIGINT NOT NULL,
    period     VARCHAR(7) NOT NULL,
    tier       VARCHAR(16) NOT NULL,
    fee        BIGINT NOT NULL,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    PRIMARY KEY (user_id, period),
    CONSTRAINT fk_member_statement_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX idx_member_statement_period ON member_statement (period);
