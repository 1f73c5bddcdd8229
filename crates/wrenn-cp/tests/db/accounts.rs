use wrenn_cp::db::{DbError, NewApiKey, PageRequest, Role};
use wrenn_cp::db_test;

use super::team;

db_test! {
    async fn connects_migrates_and_reconnects(db) {
        // Foreign keys are enforced on both backends (SQLite only when asked).
        let err = db.add_member("team-nope", "usr-nope", Role::Member).await.unwrap_err();
        assert!(matches!(err, DbError::Sqlx(_)), "{err:?}");
        if db.backend() == wrenn_cp::db::Backend::Sqlite {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(db.pool()).await.unwrap();
            assert_eq!(mode, "wal");
        }
        let u = db.create_user("a@example.com", None, "A", false).await.unwrap();
        // Restarting the control plane loses no row; migrations are idempotent.
        let again = db.reopen().await.unwrap();
        assert_eq!(again.user_by_id(&u.id).await.unwrap(), u);
        again.close().await;
    }
}

db_test! {
    async fn users(db) {
        assert_eq!(db.count_users().await.unwrap(), 0);
        let first = db.create_user_first_is_admin("Admin@Example.com", Some("h1"), "Ada").await.unwrap();
        assert!(first.is_admin);
        assert_eq!(first.email, "admin@example.com");
        let second = db.create_user_first_is_admin("b@example.com", Some("h2"), "Bob").await.unwrap();
        assert!(!second.is_admin);
        assert_eq!(db.count_users().await.unwrap(), 2);

        let by_email = db.user_by_email("ADMIN@example.com").await.unwrap();
        assert_eq!(by_email, first);
        assert_eq!(by_email.password_hash.as_deref(), Some("h1"));
        assert!(matches!(db.user_by_email("x@example.com").await, Err(DbError::NotFound)));
        assert!(matches!(
            db.create_user("admin@EXAMPLE.com", None, "dup", false).await,
            Err(DbError::AlreadyExists(_))
        ));

        db.set_user_admin(&second.id, true).await.unwrap();
        assert!(db.user_by_id(&second.id).await.unwrap().is_admin);
        db.set_user_admin(&second.id, false).await.unwrap();
        assert!(!db.user_by_id(&second.id).await.unwrap().is_admin);
        assert!(matches!(db.set_user_admin("usr-nope", true).await, Err(DbError::NotFound)));
    }
}

db_test! {
    async fn first_user_is_admin_once_under_concurrency(db) {
        let mut tasks = Vec::new();
        for i in 0..10 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.create_user_first_is_admin(&format!("u{i}@example.com"), None, "u").await
            }));
        }
        let mut admins = 0;
        for t in tasks {
            if t.await.unwrap().unwrap().is_admin {
                admins += 1;
            }
        }
        assert_eq!(admins, 1);
    }
}

db_test! {
    async fn teams_and_memberships(db) {
        let owner = db.create_user("o@example.com", None, "Owner", false).await.unwrap();
        let other = db.create_user("m@example.com", None, "Mem", false).await.unwrap();
        let t = db.create_team("Acme", false, Some(&owner.id)).await.unwrap();
        assert_eq!(db.team_by_id(&t.id).await.unwrap(), t);
        assert_eq!(t.slug.len(), 13);
        assert!(!t.is_byoc);
        let byoc = db.create_team("Own hosts", true, Some(&owner.id)).await.unwrap();
        assert!(db.team_by_id(&byoc.id).await.unwrap().is_byoc);

        let mine = db.teams_for_user(&owner.id).await.unwrap();
        assert_eq!(mine.len(), 2);
        assert_eq!(mine[0].team, t);
        assert!(mine.iter().all(|m| m.role == Role::Owner));
        assert!(db.teams_for_user(&other.id).await.unwrap().is_empty());

        db.add_member(&t.id, &other.id, Role::Member).await.unwrap();
        assert!(matches!(
            db.add_member(&t.id, &other.id, Role::Admin).await,
            Err(DbError::AlreadyExists(_))
        ));
        assert_eq!(db.role_of(&t.id, &other.id).await.unwrap(), Role::Member);
        assert!(matches!(db.role_of(&byoc.id, &other.id).await, Err(DbError::NotFound)));

        db.change_role(&t.id, &other.id, Role::Admin).await.unwrap();
        let members = db.list_members(&t.id).await.unwrap();
        let roles: Vec<_> = members.iter().map(|m| (m.email.as_str(), m.role)).collect();
        assert_eq!(roles, [("o@example.com", Role::Owner), ("m@example.com", Role::Admin)]);

        // The last owner cannot be demoted or removed; the refused change is rolled back.
        assert!(matches!(
            db.change_role(&t.id, &owner.id, Role::Member).await,
            Err(DbError::LastOwner)
        ));
        assert!(matches!(db.remove_member(&t.id, &owner.id).await, Err(DbError::LastOwner)));
        assert_eq!(db.role_of(&t.id, &owner.id).await.unwrap(), Role::Owner);
        db.change_role(&t.id, &other.id, Role::Owner).await.unwrap();
        db.remove_member(&t.id, &owner.id).await.unwrap();
        assert!(matches!(db.role_of(&t.id, &owner.id).await, Err(DbError::NotFound)));
        assert!(matches!(db.remove_member(&t.id, &owner.id).await, Err(DbError::NotFound)));
        assert!(matches!(
            db.change_role(&t.id, &owner.id, Role::Admin).await,
            Err(DbError::NotFound)
        ));
    }
}

db_test! {
    async fn concurrent_owner_demotions_keep_one_owner(db) {
        let a = db.create_user("a@example.com", None, "A", false).await.unwrap();
        let b = db.create_user("b@example.com", None, "B", false).await.unwrap();
        let t = db.create_team("T", false, Some(&a.id)).await.unwrap();
        db.add_member(&t.id, &b.id, Role::Owner).await.unwrap();
        let (ra, rb) = tokio::join!(
            db.change_role(&t.id, &a.id, Role::Member),
            db.change_role(&t.id, &b.id, Role::Member)
        );
        assert!(ra.is_ok() != rb.is_ok(), "exactly one demotion wins: {ra:?} {rb:?}");
        let owners = db.list_members(&t.id).await.unwrap().into_iter()
            .filter(|m| m.role == Role::Owner).count();
        assert_eq!(owners, 1);
    }
}

db_test! {
    async fn api_keys(db) {
        let t = team(&db, "k@example.com").await;
        let t2 = team(&db, "k2@example.com").await;
        let k = db.create_api_key(NewApiKey {
            team_id: &t.id, created_by: None, name: "ci", prefix: "wrn_abcdef", key_hash: "h1",
        }).await.unwrap();
        assert_eq!(db.api_key_by_hash("h1").await.unwrap(), k);
        assert!(matches!(db.api_key_by_hash("nope").await, Err(DbError::NotFound)));
        assert!(matches!(
            db.create_api_key(NewApiKey {
                team_id: &t2.id, created_by: None, name: "dup", prefix: "p", key_hash: "h1",
            }).await,
            Err(DbError::AlreadyExists(_))
        ));

        // Debounced: the first touch writes, the next ones within a minute do not.
        assert!(db.touch_api_key(&k.id).await.unwrap());
        let used = db.api_key_by_hash("h1").await.unwrap().last_used_at.unwrap();
        assert!(used >= k.created_at);
        assert!(!db.touch_api_key(&k.id).await.unwrap());
        assert_eq!(db.api_key_by_hash("h1").await.unwrap().last_used_at, Some(used));

        for i in 0..4 {
            db.create_api_key(NewApiKey {
                team_id: &t.id, created_by: None, name: "k", prefix: "p",
                key_hash: &format!("hh{i}"),
            }).await.unwrap();
        }
        let p1 = db.list_api_keys(&t.id, &PageRequest::first(3).unwrap()).await.unwrap();
        assert_eq!(p1.items.len(), 3);
        let p2 = db.list_api_keys(&t.id, &PageRequest::new(Some(3), p1.next_cursor.as_deref()).unwrap())
            .await.unwrap();
        assert_eq!(p2.items.len(), 2);
        assert!(p2.next_cursor.is_none());
        assert!(db.list_api_keys(&t2.id, &PageRequest::default()).await.unwrap().items.is_empty());

        // Another team cannot revoke it; revoked keys no longer authenticate or list.
        assert!(matches!(db.revoke_api_key(&t2.id, &k.id).await, Err(DbError::NotFound)));
        db.revoke_api_key(&t.id, &k.id).await.unwrap();
        assert!(matches!(db.api_key_by_hash("h1").await, Err(DbError::NotFound)));
        assert!(matches!(db.revoke_api_key(&t.id, &k.id).await, Err(DbError::NotFound)));
        let all = db.list_api_keys(&t.id, &PageRequest::default()).await.unwrap();
        assert_eq!(all.items.len(), 4);
        assert!(all.items.iter().all(|x| x.id != k.id));
    }
}

db_test! {
    async fn signup_is_one_transaction(db) {
        let counts = |db: wrenn_cp::db::Db| async move {
            let mut out = Vec::new();
            for t in ["users", "teams", "memberships"] {
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {t}")))
                    .fetch_one(db.pool()).await.unwrap();
                out.push(n);
            }
            out
        };
        let (u, t) = db.create_account("a@example.com", Some("h"), "Ada", "Ada's team").await.unwrap();
        assert!(u.is_admin);
        assert_eq!(db.role_of(&t.id, &u.id).await.unwrap(), Role::Owner);
        assert_eq!(counts(db.clone()).await, vec![1, 1, 1]);
        // A refused signup (email taken) leaves no team or membership behind.
        assert!(matches!(
            db.create_account("A@example.com", Some("h"), "Dup", "Dup's team").await,
            Err(DbError::AlreadyExists(_))
        ));
        assert_eq!(counts(db.clone()).await, vec![1, 1, 1]);
        let (b, _) = db.create_account("b@example.com", None, "Bob", "Bob's team").await.unwrap();
        assert!(!b.is_admin);
        assert_eq!(counts(db).await, vec![2, 2, 2]);
    }
}
