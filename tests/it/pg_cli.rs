//! `preflix-webhookd status --config FILE` on PostgreSQL without a token file: the CLI reads the admin token the nodes keep in the database.

use crate::support::pg::PgCluster;
use crate::support::{binary, TestDaemon};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reads_the_admin_token_from_the_database() {
    let pg = Arc::new(PgCluster::start());
    let url = pg.create_db();
    let daemon = TestDaemon::start_on_postgres(pg.clone(), url.clone(), |c| {
        c.storage.postgres.node_name = Some("node-a".into());
    })
    .await;
    assert!(daemon.config.server.token_file.is_none());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"{}\"\n\n[storage]\ndir = '{}'\nbackend = \"postgres\"\n\n\
             [storage.postgres]\nurl = '{url}'\n",
            daemon.addr,
            dir.path().join("db").display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary())
            .args(["status", "--config", file.to_str().unwrap()])
            .env_remove("PREFLIX_WEBHOOKD_CONFIG")
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run the binary")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("preflix-webhookd"), "{stdout}");
    assert!(
        !stderr.contains(&daemon.token),
        "the token is never printed"
    );
}
