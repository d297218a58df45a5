//! `batch-launcher`: the one binary that runs every batch job.

use batch_launcher::cli::{Cli, normalize_args};
use batch_launcher::modules::Registry;
use batch_launcher::{logging, run};
use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args().collect()));
    logging::init(cli.log_format, cli.verbose, cli.quiet);
    // One TLS crypto provider (ring) for every client: HTTP, PostgreSQL, MySQL, Redis.
    core_domain::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run::execute(cli, &Registry::default())) {
        Ok(code) => code,
        Err(err) => {
            let code = run::exit_code_for(&err);
            tracing::debug!(error = ?err, "command failed");
            // One line naming the problem, with each cause once.
            eprintln!("error: {}", run::error_line(&err));
            code
        }
    };
    code.into()
}
