-- Domain tables (MySQL 8 / MariaDB 10.6+ dialect). Timestamps are UTC; amounts are 64-bit integers.
CREATE TABLE users (
    id                       BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name                     VARCHAR(100) NOT NULL,
    status                   VARCHAR(16) NOT NULL,
    current_asset_history_id BIGINT,
    created_at               DATETIME(6) NOT NULL,
    updated_at               DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX idx_users_status_id ON users (status, id);

CREATE TABLE point_balance (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id    BIGINT NOT NULL,
    balance    BIGINT NOT NULL,
    version    BIGINT NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    CONSTRAINT uq_point_balance_user UNIQUE (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE point (
    id               BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id          BIGINT NOT NULL,
    amount           BIGINT NOT NULL,
    `type`             VARCHAR(8) NOT NULL,
    description      VARCHAR(255),
    balance_snapshot BIGINT NOT NULL,
    point_balance_id BIGINT NOT NULL,
    created_at       DATETIME(6) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX idx_point_created_at ON point (created_at);
CREATE INDEX idx_point_user_created_at ON point (user_id, created_at);

CREATE TABLE daily_point_report (
    id                   BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id              BIGINT NOT NULL,
    report_date          DATE NOT NULL,
    earn_amount          BIGINT NOT NULL,
    use_amount           BIGINT NOT NULL,
    cancel_amount        BIGINT NOT NULL,
    balance_snapshot     BIGINT NOT NULL,
    earn_count           BIGINT NOT NULL,
    use_count            BIGINT NOT NULL,
    cancel_count         BIGINT NOT NULL,
    first_transaction_at DATETIME(6) NOT NULL,
    last_transaction_at  DATETIME(6) NOT NULL,
    created_at           DATETIME(6) NOT NULL,
    updated_at           DATETIME(6) NOT NULL,
    CONSTRAINT uq_daily_point_report_user_date UNIQUE (user_id, report_date)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX idx_daily_point_report_date ON daily_point_report (report_date);

CREATE TABLE asset_history (
    id                BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id           BIGINT NOT NULL,
    snapshot_day      DATE NOT NULL,
    total_amount      BIGINT NOT NULL,
    cash_amount       BIGINT NOT NULL,
    investment_amount BIGINT NOT NULL,
    currency          VARCHAR(3) NOT NULL,
    net_flow          BIGINT,
    created_at        DATETIME(6) NOT NULL,
    updated_at        DATETIME(6) NOT NULL,
    CONSTRAINT uq_asset_history_user_day UNIQUE (user_id, snapshot_day)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
