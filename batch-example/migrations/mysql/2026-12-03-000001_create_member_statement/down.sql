DROP TABLE member_statement;
