use std::collections::HashSet;

use wrenn_cp::db::{
    DbError, EnvdTokenCipher, NewHost, PageRequest, SandboxFilter, SandboxPatch, SandboxStatus, ids,
};
use wrenn_cp::db_test;

use super::{running_sandbox, sandbox, team};
use SandboxStatus::*;

/// A path through allowed transitions from `pending` to each state.
fn path_to(s: SandboxStatus) -> &'static [SandboxStatus] {
    match s {
        Pending => &[],
        Running => &[Running],
        Paused => &[Running, Paused],
        Stopped => &[Running, Stopped],
        Error => &[Error],
        Missing => &[Running, Missing],
    }
}

db_test! {
    async fn insert_get_scoped_and_envd_token_encrypted(db) {
        let a = team(&db, "a@example.com").await;
        let b = team(&db, "b@example.com").await;
        let sb = sandbox(&db, &a.id, &[("env", "prod"), ("owner", "ci")]).await;
        assert!(ids::is_sandbox_id(&sb.id));
        assert_eq!(sb.status, Pending);
        let got = db.get_sandbox(&a.id, &sb.id).await.unwrap();
        assert_eq!(got, sb);
        assert_eq!(got.metadata.get("env").map(String::as_str), Some("prod"));
        // Another team's sandbox is indistinguishable from a missing one.
        assert!(matches!(db.get_sandbox(&b.id, &sb.id).await, Err(DbError::NotFound)));
        assert!(matches!(db.get_sandbox(&a.id, "aaaaaaaaaaaaaaaaaaaa").await, Err(DbError::NotFound)));

        assert_eq!(db.sandbox_envd_token(&sb.id).await.unwrap().as_deref(), Some("envd-secret"));
        let stored: String = sqlx::query_scalar("SELECT envd_token_enc FROM sandboxes WHERE id = $1")
            .bind(&sb.id).fetch_one(db.pool()).await.unwrap();
        assert!(!stored.contains("envd-secret"));

        // Wrong key: a typed error, not garbage.
        let other = db.reopen_with_key(&EnvdTokenCipher::generate_key()).await.unwrap();
        assert!(matches!(other.sandbox_envd_token(&sb.id).await, Err(DbError::Decrypt)));
        other.close().await;

        db.update_sandbox(&sb.id, SandboxPatch { envd_token: Some("rotated"), ..Default::default() })
            .await.unwrap();
        assert_eq!(db.sandbox_envd_token(&sb.id).await.unwrap().as_deref(), Some("rotated"));
        // Copying another row's ciphertext onto this row does not decrypt (row-bound).
        let sb2 = sandbox(&db, &a.id, &[]).await;
        sqlx::query("UPDATE sandboxes SET envd_token_enc = $1 WHERE id = $2")
            .bind(&stored).bind(&sb2.id).execute(db.pool()).await.unwrap();
        assert!(matches!(db.sandbox_envd_token(&sb2.id).await, Err(DbError::Decrypt)));
    }
}

db_test! {
    async fn every_transition_follows_the_table(db) {
        let t = team(&db, "t@example.com").await;
        let mut checked = 0;
        for from in SandboxStatus::ALL {
            for to in SandboxStatus::ALL {
                let sb = sandbox(&db, &t.id, &[]).await;
                for step in path_to(from) {
                    db.transition_sandbox(&sb.id, *step, None).await.unwrap();
                }
                let res = db.transition_sandbox(&sb.id, to, Some("boom")).await;
                if SandboxStatus::can_transition(from, to) {
                    let after = res.unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                    assert_eq!(after.status, to);
                } else {
                    match res {
                        Err(DbError::Conflict { current, requested }) => {
                            assert_eq!((current, requested), (from, to));
                        }
                        other => panic!("{from} -> {to} must conflict, got {other:?}"),
                    }
                    assert_eq!(db.get_sandbox(&t.id, &sb.id).await.unwrap().status, from);
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 36);
        assert!(matches!(
            db.transition_sandbox("aaaaaaaaaaaaaaaaaaaa", Running, None).await,
            Err(DbError::NotFound)
        ));
    }
}

db_test! {
    async fn transition_records_started_at_and_error(db) {
        let t = team(&db, "t@example.com").await;
        let sb = running_sandbox(&db, &t.id).await;
        let started = sb.started_at.expect("running sets started_at");
        let paused = db.transition_sandbox(&sb.id, Paused, Some("ignored")).await.unwrap();
        assert_eq!(paused.error, None, "error text is kept only for the error state");
        let resumed = db.transition_sandbox(&sb.id, Running, None).await.unwrap();
        assert_eq!(resumed.started_at, Some(started), "first start time is kept");
        let failed = db.transition_sandbox(&sb.id, Error, Some("envd never answered")).await.unwrap();
        assert_eq!(failed.error.as_deref(), Some("envd never answered"));
    }
}

db_test! {
    async fn running_rows_are_reused_until_this_process_changes_them(db) {
        let t = team(&db, "t@example.com").await;
        let other = team(&db, "o@example.com").await;
        let sb = running_sandbox(&db, &t.id).await;
        let hot = db.get_running_sandbox_row(&t.id, &sb.id).await.unwrap();
        assert_eq!(hot.status, Running);
        assert!(matches!(
            db.get_running_sandbox_row(&other.id, &sb.id).await,
            Err(DbError::NotFound)
        ), "another team never gets the cached row");
        // A status change made here is seen at once, not after the cache's second.
        db.transition_sandbox(&sb.id, Paused, None).await.unwrap();
        assert_eq!(db.get_running_sandbox_row(&t.id, &sb.id).await.unwrap().status, Paused);
        db.transition_sandbox(&sb.id, Running, None).await.unwrap();
        assert_eq!(db.get_running_sandbox_row(&t.id, &sb.id).await.unwrap().status, Running);
        db.transition_sandbox(&sb.id, Stopped, None).await.unwrap();
        assert_eq!(db.get_running_sandbox_row(&t.id, &sb.id).await.unwrap().status, Stopped);
        // Host-wide transitions too.
        let host = db.create_host(NewHost { team_id: None, name: "h", address: "", specs: serde_json::json!({}), created_by: None }).await.unwrap();
        let sb2 = running_sandbox(&db, &t.id).await;
        assert_eq!(db.get_running_sandbox_row(&t.id, &sb2.id).await.unwrap().host_id, None);
        db.update_sandbox(&sb2.id, SandboxPatch { host_id: Some(&host.id), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(
            db.get_running_sandbox_row(&t.id, &sb2.id).await.unwrap().host_id.as_deref(),
            Some(host.id.as_str())
        );
        db.transition_host_sandboxes(&host.id, Missing).await.unwrap();
        assert_eq!(db.get_running_sandbox_row(&t.id, &sb2.id).await.unwrap().status, Missing);
    }
}

db_test! {
    async fn concurrent_conflicting_transitions_have_one_winner(db) {
        let t = team(&db, "t@example.com").await;
        // Per sandbox: 20 tasks race to stopped against to paused.
        for _ in 0..5 {
            let sb = running_sandbox(&db, &t.id).await;
            let mut tasks = Vec::new();
            for i in 0..20 {
                let db = db.clone();
                let id = sb.id.clone();
                let to = if i % 2 == 0 { Stopped } else { Paused };
                tasks.push(tokio::spawn(async move { (to, db.transition_sandbox(&id, to, None).await) }));
            }
            let mut winners = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    (to, Ok(_)) => winners.push(to),
                    (_, Err(DbError::Conflict { current, .. })) => assert!(matches!(current, Stopped | Paused)),
                    (_, Err(e)) => panic!("unexpected {e}"),
                }
            }
            // Each change happens at most once; a pause may win first and then be stopped
            // (paused -> stopped is a delete), but a stopped sandbox is never paused.
            let stops = winners.iter().filter(|w| **w == Stopped).count();
            let pauses = winners.iter().filter(|w| **w == Paused).count();
            assert!(stops <= 1 && pauses <= 1 && !winners.is_empty(), "winners {winners:?}");
            let now = db.get_sandbox(&t.id, &sb.id).await.unwrap().status;
            assert_eq!(now, if stops == 1 { Stopped } else { Paused }, "winners {winners:?}");
        }
        // One sandbox, many steps: every step 20 tasks ask for the same change; one wins.
        let sb = running_sandbox(&db, &t.id).await;
        for step in 0..10 {
            let to = if step % 2 == 0 { Paused } else { Running };
            let mut tasks = Vec::new();
            for _ in 0..20 {
                let db = db.clone();
                let id = sb.id.clone();
                tasks.push(tokio::spawn(async move { db.transition_sandbox(&id, to, None).await }));
            }
            let mut ok = 0;
            for task in tasks {
                match task.await.unwrap() {
                    Ok(s) => { ok += 1; assert_eq!(s.status, to); }
                    Err(DbError::Conflict { current, requested }) => assert_eq!((current, requested), (to, to)),
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert_eq!(ok, 1, "step {step}");
        }
    }
}

db_test! {
    async fn list_filters_and_paginates(db) {
        let a = team(&db, "a@example.com").await;
        let b = team(&db, "b@example.com").await;
        let mut all = Vec::new();
        for i in 0..25 {
            let env = if i % 2 == 0 { "prod" } else { "dev" };
            let tier = if i % 3 == 0 { "gold" } else { "silver" };
            let sb = sandbox(&db, &a.id, &[("env", env), ("tier", tier)]).await;
            if i % 5 == 0 {
                db.transition_sandbox(&sb.id, Running, None).await.unwrap();
            }
            all.push((i, sb.id));
        }
        sandbox(&db, &b.id, &[("env", "prod")]).await;

        let list = |filter: SandboxFilter, limit: u32| {
            let db = db.clone();
            let team = a.id.clone();
            async move {
                let mut out = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let req = PageRequest::new(Some(limit), cursor.as_deref()).unwrap();
                    let page = db.list_sandboxes(&team, &filter, &req).await.unwrap();
                    assert!(page.items.len() <= limit as usize);
                    out.extend(page.items);
                    cursor = page.next_cursor;
                    if cursor.is_none() {
                        break out;
                    }
                }
            }
        };
        let everything = list(SandboxFilter::default(), 10).await;
        assert_eq!(everything.len(), 25);
        let unique: HashSet<_> = everything.iter().map(|s| s.id.clone()).collect();
        assert_eq!(unique.len(), 25);
        for w in everything.windows(2) {
            assert!((w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id), "newest first");
        }
        assert!(everything.iter().all(|s| s.team_id == a.id && s.metadata.len() == 2));

        let running = list(SandboxFilter { statuses: vec![Running], ..Default::default() }, 2).await;
        assert_eq!(running.len(), 5);
        let prod = list(SandboxFilter { metadata: vec![("env".into(), "prod".into())], ..Default::default() }, 4).await;
        assert_eq!(prod.len(), 13);
        assert!(prod.iter().all(|s| s.metadata["env"] == "prod"));
        let prod_gold = list(SandboxFilter {
            metadata: vec![("env".into(), "prod".into()), ("tier".into(), "gold".into())],
            ..Default::default()
        }, 100).await;
        let want: HashSet<_> = all.iter().filter(|(i, _)| i % 2 == 0 && i % 3 == 0).map(|(_, id)| id.clone()).collect();
        assert_eq!(prod_gold.iter().map(|s| s.id.clone()).collect::<HashSet<_>>(), want);
        let pending_prod = list(SandboxFilter {
            statuses: vec![Pending, Paused],
            metadata: vec![("env".into(), "prod".into())],
        }, 1000).await;
        assert_eq!(pending_prod.len(), 13 - 3);

        // Exactly the limit: no next page.
        let page = db.list_sandboxes(&a.id, &SandboxFilter::default(), &PageRequest::first(25).unwrap()).await.unwrap();
        assert_eq!((page.items.len(), page.next_cursor), (25, None));
    }
}

db_test! {
    async fn list_rows_are_the_rows(db) {
        // Every column with a value that tells it apart, through a list page and through a
        // GET: the same sandbox.
        let t = team(&db, "t@example.com").await;
        let host = db.create_host(NewHost { team_id: None, name: "h", address: "", specs: serde_json::json!({}), created_by: None }).await.unwrap();
        let mut new = wrenn_cp::db::testing::new_sandbox(&t.id, Some(&host.id));
        new.vcpus = 3;
        new.memory_mb = 1234;
        new.disk_size_mb = 5678;
        new.timeout_sec = 77;
        new.end_at = Some(i64::MAX - 1);
        new.on_timeout = wrenn_cp::db::OnTimeout::Pause;
        new.auto_resume = true;
        new.metadata = [
            ("quote\"key", "a \"quoted\" \\ value"),
            ("ünï/cödé:1", "🚀 \u{7f} tab\tnewline\n"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let full = db.insert_pending_sandbox(new).await.unwrap();
        db.transition_sandbox(&full.id, Running, None).await.unwrap();
        db.update_sandbox(&full.id, SandboxPatch { host_ip: Some("10.11.0.9"), envd_version: Some("0.1.2"), ..Default::default() }).await.unwrap();
        let failed = sandbox(&db, &t.id, &[]).await;
        db.transition_sandbox(&failed.id, Error, Some("boot \"failed\"")).await.unwrap();
        let bare = sandbox(&db, &t.id, &[]).await;

        let all = SandboxFilter { statuses: SandboxStatus::ALL.to_vec(), metadata: vec![] };
        let page = db.list_sandboxes(&t.id, &all, &PageRequest::first(10).unwrap()).await.unwrap();
        assert_eq!(page.next_cursor, None);
        let ids: Vec<&str> = page.items.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids.len(), 3);
        for listed in &page.items {
            assert_eq!(listed, &db.get_sandbox(&t.id, &listed.id).await.unwrap());
        }
        let listed_full = page.items.iter().find(|s| s.id == full.id).unwrap();
        assert!(listed_full.auto_resume && listed_full.metadata.len() == 3 && listed_full.host_ip.is_some());
        let listed_failed = page.items.iter().find(|s| s.id == failed.id).unwrap();
        assert_eq!((listed_failed.status, listed_failed.error.as_deref()), (Error, Some("boot \"failed\"")));
        assert!(page.items.iter().any(|s| s.id == bare.id && s.metadata.is_empty()));

        // A row without the metadata copy (written by a replica from before migration 0010):
        // the list reads sandbox_metadata for it.
        sqlx::query("UPDATE sandboxes SET metadata_json = NULL WHERE id = $1").bind(&full.id).execute(db.pool()).await.unwrap();
        let again = db.list_sandboxes(&t.id, &all, &PageRequest::first(10).unwrap()).await.unwrap();
        assert_eq!(again.items, page.items);

        // Nothing to list: an empty page (PostgreSQL's aggregate of no rows is NULL).
        for filter in [SandboxFilter::default(), SandboxFilter { statuses: vec![Paused], metadata: vec![] }] {
            let page = db.list_sandboxes(&t.id, &filter, &PageRequest::first(10).unwrap()).await.unwrap();
            assert_eq!(page.items.len(), if filter.statuses.is_empty() { 3 } else { 0 });
        }
        let page = db.list_sandboxes("team-nobody", &all, &PageRequest::first(10).unwrap()).await.unwrap();
        assert!(page.items.is_empty() && page.next_cursor.is_none());
    }
}

db_test! {
    async fn patch_touch_and_host_reconciliation(db) {
        let t = team(&db, "t@example.com").await;
        let host = db.create_host(NewHost { team_id: None, name: "h", address: "", specs: serde_json::json!({}), created_by: None }).await.unwrap();
        let sb = running_sandbox(&db, &t.id).await;
        db.update_sandbox(&sb.id, SandboxPatch {
            host_id: Some(&host.id), host_ip: Some("10.11.0.2"), envd_version: Some("0.1.0"),
            end_at: Some(123), timeout_sec: Some(60), envd_token: None, traffic_token: None,
        }).await.unwrap();
        let got = db.get_sandbox(&t.id, &sb.id).await.unwrap();
        assert_eq!(
            (got.host_id.as_deref(), got.host_ip.as_deref(), got.envd_version.as_deref(), got.end_at, got.timeout_sec),
            (Some(host.id.as_str()), Some("10.11.0.2"), Some("0.1.0"), Some(123), 60)
        );
        assert_eq!(db.sandbox_envd_token(&sb.id).await.unwrap().as_deref(), Some("envd-secret"), "None keeps the token");
        // Ports are public until a traffic token is set; it is stored apart from envd's.
        assert_eq!(db.sandbox_traffic_token(&sb.id).await.unwrap(), None);
        db.update_sandbox(&sb.id, SandboxPatch { traffic_token: Some("tt"), ..Default::default() }).await.unwrap();
        assert_eq!(db.sandbox_traffic_token(&sb.id).await.unwrap().as_deref(), Some("tt"));
        assert_eq!(db.sandbox_envd_token(&sb.id).await.unwrap().as_deref(), Some("envd-secret"));
        assert!(matches!(db.update_sandbox("aaaaaaaaaaaaaaaaaaaa", SandboxPatch::default()).await, Err(DbError::NotFound)));

        // Debounced activity: one write, then none within the interval.
        sqlx::query("UPDATE sandboxes SET last_active_at = 0 WHERE id = $1").bind(&sb.id).execute(db.pool()).await.unwrap();
        assert!(db.touch_sandbox(&sb.id).await.unwrap());
        let active = db.get_sandbox(&t.id, &sb.id).await.unwrap().last_active_at;
        assert!(active > 0);
        assert!(!db.touch_sandbox(&sb.id).await.unwrap());
        // Another replica (its own memory) sends the UPDATE, but the SQL guard keeps the row.
        let replica = db.reopen().await.unwrap();
        assert!(replica.touch_sandbox(&sb.id).await.unwrap());
        assert_eq!(db.get_sandbox(&t.id, &sb.id).await.unwrap().last_active_at, active);
        replica.close().await;

        // Host unreachable: its running/paused sandboxes go missing, and come back.
        let paused = running_sandbox(&db, &t.id).await;
        db.transition_sandbox(&paused.id, Paused, None).await.unwrap();
        let pending = sandbox(&db, &t.id, &[]).await;
        for id in [&paused.id, &pending.id] {
            db.update_sandbox(id, SandboxPatch { host_id: Some(&host.id), ..Default::default() }).await.unwrap();
        }
        let mut missing = db.transition_host_sandboxes(&host.id, Missing).await.unwrap();
        missing.sort();
        let mut want = vec![sb.id.clone(), paused.id.clone()];
        want.sort();
        assert_eq!(missing, want);
        assert_eq!(db.sandboxes_on_host(&host.id, &[Missing]).await.unwrap().len(), 2);
        assert_eq!(db.sandboxes_on_host(&host.id, &[]).await.unwrap().len(), 3);
        assert_eq!(db.get_sandbox(&t.id, &pending.id).await.unwrap().status, Pending);
        db.transition_sandbox(&paused.id, Paused, None).await.unwrap();
        db.transition_sandbox(&sb.id, Running, None).await.unwrap();
        assert!(db.transition_host_sandboxes(&host.id, Pending).await.unwrap().is_empty());
    }
}
