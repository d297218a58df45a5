//! A new domain plugs in through its `JobModule` alone: the example module of batch-testkit
//! (a job over `users`, its own `[hello]` section, a default schedule) is registered next to the
//! real modules, exactly as `modules::MODULES` lists them, and driven through the launcher's
//! command flow (`list`, `config`, `run`, a bad setting).

use std::io::Write as _;

use batch_common::ExitCode;
use batch_common::config::BatchProperties;
use batch_common::module::JobModule;
use batch_common::repository::JobRepository;
use batch_launcher::cli::{Cli, normalize_args};
use batch_launcher::modules::{MODULES, Registry};
use batch_launcher::run::{error_line, execute, exit_code_for};
use batch_testkit::example_module::{self, HelloSettings};
use batch_testkit::{TestDb, db_test};
use clap::Parser as _;
use core_domain::models::{NewUser, User};

/// The launcher's modules plus the example, registered like a real one.
fn registry() -> Registry {
    let mut modules: Vec<&'static dyn JobModule> = MODULES.to_vec();
    modules.push(&example_module::MODULE);
    Registry::new(&modules)
}

fn config_file(db: &TestDb, extra: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(
        f,
        "[database]\nurl = \"{}\"\n{extra}",
        db.url().expose_secret()
    )
    .unwrap();
    f
}

async fn launch(registry: &Registry, args: &[&str]) -> anyhow::Result<ExitCode> {
    let mut argv = vec!["batch-launcher".to_owned()];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    execute(Cli::parse_from(normalize_args(argv)), registry).await
}

db_test!(async fn the_example_domain_runs_through_the_launcher(db) {
    let now = chrono::Utc::now().naive_utc();
    let users: Vec<NewUser> = (1..=7)
        .map(|id| NewUser {
            id,
            name: format!("user {id}"),
            status: if id % 3 == 0 { "INACTIVE" } else { "ACTIVE" }.to_owned(),
            created_at: now,
            updated_at: now,
        })
        .collect();
    let mut conn = db.db.get().await?;
    User::insert_many(&mut conn, users).await?;
    drop(conn);
    let registry = registry();
    let file = config_file(db, "[hello]\ngreeting = \"hi\"\npage_size = 2\n");
    let path = file.path().to_str().unwrap();

    assert_eq!(launch(&registry, &["list"]).await?, ExitCode::Completed);
    assert!(registry.render_list().contains("helloUsersJob"));
    let props = registry.load_properties(Some(file.path()))?;
    assert_eq!(props.section::<HelloSettings>()?.greeting, "hi");
    assert_eq!(props.schedule_for("helloUsersJob"), Some("0 0 5 * * *"));
    assert!(props.to_redacted_toml().contains("[hello]"));

    let code = launch(
        &registry,
        &["--config", path, "run", "--job.name=helloUsersJob", "label=test"],
    )
    .await?;
    assert_eq!(code, ExitCode::Completed);
    let repo = JobRepository::new(db.db.clone());
    let history = repo.history(Some("helloUsersJob"), 5).await?;
    assert_eq!(history.len(), 1, "one execution");
    let (execution, _) = &history[0];
    assert_eq!(execution.status, "COMPLETED");
    let steps = repo.step_executions(execution.id).await?;
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].counts.read_count, 5, "7 users, 2 inactive");
    let counters = &steps[0].counts.counters;
    assert_eq!(counters.get("active_users"), Some(&5), "{counters:?}");
    // The same instance again: a no-op.
    let code = launch(
        &registry,
        &["--config", path, "run", "--job.name=helloUsersJob", "label=test"],
    )
    .await?;
    assert_eq!(code, ExitCode::Completed, "NOOP exits 0");
    assert_eq!(repo.history(Some("helloUsersJob"), 5).await?.len(), 1, "no new execution");
    Ok(())
});

#[tokio::test]
async fn the_example_domain_s_settings_are_checked_like_the_runtime_s() {
    let registry = registry();
    // From the environment: the key and its variable are named.
    let e = BatchProperties::load_from(
        None,
        vec![("BATCH__HELLO__PAGE_SIZE".to_owned(), "0".to_owned())],
        registry.modules(),
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("hello.page_size"), "{e}");
    assert!(e.to_string().contains("BATCH__HELLO__PAGE_SIZE"), "{e}");
    let e = BatchProperties::load_from(
        None,
        vec![("BATCH__HELLO__GREETING".to_owned(), " ".to_owned())],
        registry.modules(),
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("hello.greeting"), "{e}");
    // From a file, through the command flow: exit 2, naming the file and the key.
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    write!(f, "[hello]\npage_size = 20000\n").unwrap();
    let err = launch(
        &registry,
        &["--config", f.path().to_str().unwrap(), "config"],
    )
    .await
    .unwrap_err();
    assert_eq!(exit_code_for(&err), ExitCode::Usage);
    let line = error_line(&err);
    assert!(line.contains("`hello.page_size`"), "{line}");
    assert!(line.contains("out of range 1..=10000"), "{line}");
    // Without the module, its section is unknown.
    let e = BatchProperties::load_from(
        None,
        vec![("BATCH__HELLO__PAGE_SIZE".to_owned(), "5".to_owned())],
        MODULES,
    )
    .unwrap_err();
    assert_eq!(e.key(), Some("hello"), "{e}");
}
