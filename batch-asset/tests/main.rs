//! assetRefreshJob: the job on SQLite, PostgreSQL and MySQL with a mocked provider, and the
//! reqwest provider against local HTTP servers.

mod http;
mod refresh;
mod server_restarts;
