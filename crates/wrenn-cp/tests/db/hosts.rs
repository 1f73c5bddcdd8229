use wrenn_cp::db::{DbError, HostStatus, NewHost, NewRegistrationToken, TokenRejection, now_ms};
use wrenn_cp::db_test;

use super::team;

fn rejected(r: Result<impl std::fmt::Debug, DbError>) -> TokenRejection {
    match r {
        Err(DbError::TokenRejected(why)) => why,
        other => panic!("expected a token rejection, got {other:?}"),
    }
}

db_test! {
    async fn hosts_and_registration_tokens(db) {
        let t = team(&db, "h@example.com").await;
        let host = db.create_host(NewHost {
            team_id: Some(&t.id), name: "byoc-1", address: "",
            specs: serde_json::json!({"cpu_cores": 2}), created_by: None,
        }).await.unwrap();
        assert_eq!(host.status, HostStatus::Pending);
        assert_eq!(db.host_by_id(&host.id).await.unwrap(), host);
        let platform = db.create_host(NewHost {
            team_id: None, name: "p-1", address: "10.0.0.1:7000",
            specs: serde_json::json!({}), created_by: None,
        }).await.unwrap();
        assert_eq!(db.list_hosts(Some(&t.id)).await.unwrap(), vec![host.clone()]);
        assert_eq!(db.list_hosts(None).await.unwrap(), vec![platform.clone()]);

        db.set_host_status(&host.id, HostStatus::Online, Some("127.0.0.1:7001")).await.unwrap();
        let h = db.host_by_id(&host.id).await.unwrap();
        assert_eq!((h.status, h.address.as_str()), (HostStatus::Online, "127.0.0.1:7001"));
        assert!(h.last_heartbeat_at.is_some());
        db.set_host_status(&host.id, HostStatus::Unreachable, None).await.unwrap();
        let h2 = db.host_by_id(&host.id).await.unwrap();
        assert_eq!(h2.status, HostStatus::Unreachable);
        assert_eq!(h2.address, "127.0.0.1:7001");
        assert_eq!(h2.last_heartbeat_at, h.last_heartbeat_at);

        let now = now_ms();
        let tok = db.create_registration_token(NewRegistrationToken {
            token_hash: "reg1", team_id: Some(&t.id), host_id: Some(&host.id),
            created_by: None, expires_at: now + 3_600_000,
        }).await.unwrap();
        db.create_registration_token(NewRegistrationToken {
            token_hash: "old", team_id: None, host_id: None, created_by: None,
            expires_at: now - 1,
        }).await.unwrap();

        let used = db.consume_registration_token("reg1").await.unwrap();
        assert_eq!((used.id.as_str(), used.host_id.as_deref()), (tok.id.as_str(), Some(host.id.as_str())));
        assert!(used.used_at.is_some());
        assert_eq!(rejected(db.consume_registration_token("reg1").await), TokenRejection::AlreadyUsed);
        assert_eq!(rejected(db.consume_registration_token("old").await), TokenRejection::Expired);
        assert_eq!(rejected(db.consume_registration_token("nope").await), TokenRejection::Unknown);
    }
}

db_test! {
    async fn registration_token_is_consumed_once_under_concurrency(db) {
        db.create_registration_token(NewRegistrationToken {
            token_hash: "race", team_id: None, host_id: None, created_by: None,
            expires_at: now_ms() + 60_000,
        }).await.unwrap();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move { db.consume_registration_token("race").await }));
        }
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(DbError::TokenRejected(TokenRejection::AlreadyUsed)) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(ok, 1);
    }
}

db_test! {
    async fn refresh_tokens_rotate_and_revoke(db) {
        let host = db.create_host(NewHost {
            team_id: None, name: "h", address: "", specs: serde_json::json!({}), created_by: None,
        }).await.unwrap();
        let other = db.create_host(NewHost {
            team_id: None, name: "o", address: "", specs: serde_json::json!({}), created_by: None,
        }).await.unwrap();
        let later = now_ms() + 60_000;
        let r1 = db.issue_refresh_token(&host.id, "r1", later).await.unwrap();
        assert_eq!(db.valid_refresh_token("r1").await.unwrap(), r1);

        // Another host's token: refused, nothing changes.
        assert_eq!(rejected(db.rotate_refresh_token(&other.id, "r1", "x", later).await), TokenRejection::Unknown);
        assert!(db.valid_refresh_token("x").await.is_err());

        let r2 = db.rotate_refresh_token(&host.id, "r1", "r2", later).await.unwrap();
        assert_eq!(r2.host_id, host.id);
        assert_ne!(r2.id, r1.id);
        assert!(db.valid_refresh_token("r2").await.is_ok());
        // r1 is in its grace: still valid, its revocation set in the future.
        let r1_now = db.valid_refresh_token("r1").await.unwrap();
        assert!(r1_now.revoked_at.unwrap() > now_ms() + wrenn_cp::db::REFRESH_GRACE_MS - 5_000);
        // r2's first use ends r1's grace.
        db.rotate_refresh_token(&host.id, "r2", "r3", later).await.unwrap();
        assert_eq!(rejected(db.valid_refresh_token("r1").await), TokenRejection::Unknown);
        assert!(db.valid_refresh_token("r3").await.is_ok());
        // Presenting r1 again: a replay, every refresh token of the host goes (r3 too).
        assert_eq!(rejected(db.rotate_refresh_token(&host.id, "r1", "r4", later).await), TokenRejection::Revoked);
        assert!(db.valid_refresh_token("r3").await.is_err());
        assert!(db.valid_refresh_token("r4").await.is_err());
        assert_eq!(rejected(db.rotate_refresh_token(&host.id, "zz", "r5", later).await), TokenRejection::Unknown);

        db.issue_refresh_token(&host.id, "expired", now_ms() - 1).await.unwrap();
        assert_eq!(rejected(db.rotate_refresh_token(&host.id, "expired", "r6", later).await), TokenRejection::Expired);

        // Concurrent rotations of one token (lost responses retried at once): each answers,
        // and exactly one of the new tokens stays valid.
        db.issue_refresh_token(&host.id, "c", later).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..10 {
            let (db, h) = (db.clone(), host.id.clone());
            tasks.push(tokio::spawn(async move {
                db.rotate_refresh_token(&h, "c", &format!("n{i}"), later).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut valid = Vec::new();
        for h in (0..10).map(|i| format!("n{i}")) {
            if db.valid_refresh_token(&h).await.is_ok() {
                valid.push(h.clone());
            }
        }
        assert_eq!(valid.len(), 1, "{valid:?}");
        db.revoke_refresh_token(&valid[0]).await.unwrap();
        assert!(db.valid_refresh_token(&valid[0]).await.is_err());
        db.issue_refresh_token(&host.id, "a", later).await.unwrap();
        db.issue_refresh_token(&host.id, "b", later).await.unwrap();
        // a, b, c (in its grace) and the expired-but-never-revoked one.
        assert_eq!(db.revoke_host_refresh_tokens(&host.id).await.unwrap(), 4);
        assert!(db.valid_refresh_token("a").await.is_err());
        assert!(db.valid_refresh_token("c").await.is_err());
        assert!(matches!(db.revoke_refresh_token("a").await, Err(DbError::NotFound)));
    }
}

db_test! {
    async fn one_reconcile_claim_per_lease(db) {
        let host = db.create_host(NewHost {
            team_id: None, name: "p-1", address: "10.0.0.1:7000",
            specs: serde_json::json!({}), created_by: None,
        }).await.unwrap();
        // Two replicas asking at once: one wins; the lease then keeps the other out.
        let (a, b) = tokio::join!(
            db.claim_host_reconcile(&host.id, 60_000),
            db.claim_host_reconcile(&host.id, 60_000)
        );
        assert_eq!([a.unwrap(), b.unwrap()].iter().filter(|w| **w).count(), 1);
        assert!(!db.claim_host_reconcile(&host.id, 60_000).await.unwrap());
        // Once a lease has run out, the next claim wins.
        let other = db.create_host(NewHost {
            team_id: None, name: "p-2", address: "10.0.0.2:7000",
            specs: serde_json::json!({}), created_by: None,
        }).await.unwrap();
        assert!(db.claim_host_reconcile(&other.id, 0).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(db.claim_host_reconcile(&other.id, 0).await.unwrap());
        assert!(!db.claim_host_reconcile(&host.id, 60_000).await.unwrap());
    }
}
