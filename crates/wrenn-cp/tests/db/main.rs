//! Data-layer tests. Every test runs twice, `<name>::sqlite` and `<name>::postgres`, with the
//! same body (see `wrenn_cp::db_test!`); PostgreSQL needs `WRENN_TEST_PG_URL` (scripts/test).

mod accounts;
mod hosts;
mod sandboxes;
mod templates_audit;

use std::collections::BTreeMap;

use wrenn_cp::db::{Db, NewSandbox, OnTimeout, Sandbox, SandboxStatus, Team};

/// A user and a team they own.
pub async fn team(db: &Db, email: &str) -> Team {
    let u = db
        .create_user(email, Some("hash"), "Someone", false)
        .await
        .unwrap();
    db.create_team("Team", false, Some(&u.id)).await.unwrap()
}

pub async fn sandbox(db: &Db, team_id: &str, meta: &[(&str, &str)]) -> Sandbox {
    db.insert_pending_sandbox(NewSandbox {
        team_id,
        host_id: None,
        template: "base",
        vcpus: 1,
        memory_mb: 512,
        disk_size_mb: 5120,
        timeout_sec: 300,
        end_at: Some(wrenn_cp::db::now_ms() + 300_000),
        on_timeout: OnTimeout::Kill,
        metadata: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        envd_token: Some("envd-secret"),
        auto_resume: false,
        idempotency_key: None,
    })
    .await
    .unwrap()
}

pub async fn running_sandbox(db: &Db, team_id: &str) -> Sandbox {
    let sb = sandbox(db, team_id, &[]).await;
    db.transition_sandbox(&sb.id, SandboxStatus::Running, None)
        .await
        .unwrap()
}
