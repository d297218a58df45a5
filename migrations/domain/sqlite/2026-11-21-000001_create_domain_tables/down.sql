DROP TABLE asset_history;
DROP TABLE daily_point_report;
DROP TABLE point;
DROP TABLE point_balance;
DROP TABLE users;
