use wrenn_cp::db::{ActorType, DbError, NewAuditEntry, NewHost, PageRequest, TemplateSpec};
use wrenn_cp::db_test;

use super::team;

fn spec(name: &str, vcpus: i64) -> TemplateSpec {
    TemplateSpec {
        name: name.to_owned(),
        default_user: "user".to_owned(),
        default_env: serde_json::json!({"LANG": "C.UTF-8"}),
        vcpus,
        memory_mb: 512,
        disk_size_mb: 5120,
        is_snapshot: false,
        size_bytes: 0,
    }
}

db_test! {
    async fn templates(db) {
        let a = team(&db, "a@example.com").await;
        let b = team(&db, "b@example.com").await;
        let base = db.upsert_template(None, &spec("base", 1)).await.unwrap();
        let again = db.upsert_template(None, &spec("base", 2)).await.unwrap();
        assert_eq!(again.id, base.id, "upsert keeps the row");
        assert_eq!(again.vcpus, 2);
        assert_eq!(again.default_env, serde_json::json!({"LANG": "C.UTF-8"}));

        let mut snap = spec("mysnap", 1);
        snap.is_snapshot = true;
        let a_snap = db.upsert_template(Some(&a.id), &snap).await.unwrap();
        assert!(a_snap.is_snapshot);
        // A team may shadow a platform name; its own comes first for that team only.
        let a_base = db.upsert_template(Some(&a.id), &spec("base", 4)).await.unwrap();
        assert_ne!(a_base.id, base.id);

        let names = |v: Vec<wrenn_cp::db::Template>| {
            v.into_iter().map(|t| (t.name, t.team_id.is_some())).collect::<Vec<_>>()
        };
        assert_eq!(
            names(db.templates_visible_to(&a.id).await.unwrap()).len(), 3
        );
        assert_eq!(names(db.templates_visible_to(&b.id).await.unwrap()), [("base".to_owned(), false)]);
        assert_eq!(db.template_for_team(&a.id, "base").await.unwrap().id, a_base.id);
        assert_eq!(db.template_for_team(&b.id, "base").await.unwrap().id, base.id);
        assert!(matches!(db.template_for_team(&b.id, "mysnap").await, Err(DbError::NotFound)));

        let h1 = db.create_host(NewHost { team_id: None, name: "h1", address: "", specs: serde_json::json!({}), created_by: None }).await.unwrap();
        let h2 = db.create_host(NewHost { team_id: None, name: "h2", address: "", specs: serde_json::json!({}), created_by: None }).await.unwrap();
        db.add_template_host(&base.id, &h1.id).await.unwrap();
        db.add_template_host(&base.id, &h1.id).await.unwrap();
        db.add_template_host(&base.id, &h2.id).await.unwrap();
        let mut want = vec![h1.id.clone(), h2.id.clone()];
        want.sort();
        assert_eq!(db.template_hosts(&base.id).await.unwrap(), want);
        db.remove_template_host(&base.id, &h1.id).await.unwrap();
        assert_eq!(db.template_hosts(&base.id).await.unwrap(), vec![h2.id.clone()]);
        assert!(db.template_hosts(&a_snap.id).await.unwrap().is_empty());
    }
}

db_test! {
    async fn audit_log_pages_newest_first(db) {
        let a = team(&db, "a@example.com").await;
        let b = team(&db, "b@example.com").await;
        let mut ids = Vec::new();
        for i in 0..7 {
            let e = db.append_audit(NewAuditEntry {
                team_id: Some(&a.id), actor_type: ActorType::User, actor_id: Some("usr-1"),
                action: "sandbox.create", target_type: "sandbox", target_id: Some("x"),
                details: serde_json::json!({"i": i}),
            }).await.unwrap();
            ids.push(e.id);
        }
        db.append_audit(NewAuditEntry {
            team_id: Some(&b.id), actor_type: ActorType::System, actor_id: None,
            action: "other", target_type: "", target_id: None, details: serde_json::json!({}),
        }).await.unwrap();

        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let req = PageRequest::new(Some(3), cursor.as_deref()).unwrap();
            let page = db.list_audit(&a.id, &req).await.unwrap();
            assert!(page.items.len() <= 3);
            seen.extend(page.items);
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen.len(), 7);
        // Newest first: (created_at, id) strictly descending, every entry exactly once.
        for w in seen.windows(2) {
            assert!((w[0].created_at, &w[0].id) > (w[1].created_at, &w[1].id));
        }
        let mut got: Vec<_> = seen.iter().map(|e| e.id.clone()).collect();
        got.sort();
        ids.sort();
        assert_eq!(got, ids);
        assert_eq!(seen.iter().filter(|e| e.details["i"] == 6).count(), 1);
        assert_eq!(db.list_audit(&b.id, &PageRequest::default()).await.unwrap().items.len(), 1);
    }
}
