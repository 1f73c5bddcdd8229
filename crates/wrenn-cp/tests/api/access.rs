use axum::http::{Method, StatusCode};
use serde_json::json;
use wrenn_cp::auth::jwt::{Role, UserIdentity};
use wrenn_cp::db_test;
use wrenn_cp::ids::{TeamId, UserId};

use super::{App, code, token};

db_test! {
    async fn access_matrix(db) {
        let app = App::new(db.clone());
        let a = app.signup("ada@example.com", "Ada").await; // platform admin, owns team A
        let b = app.signup("bob@example.com", "Bob").await; // owns team B
        let c = app.signup("cy@example.com", "Cy").await;
        let (ta, tb, tc) = (token(&a), token(&b), token(&c));
        let team_a = a["team"]["id"].as_str().unwrap().to_owned();
        let cy = c["user"]["id"].as_str().unwrap().to_owned();
        let ada = a["user"]["id"].as_str().unwrap().to_owned();
        let members = format!("/v1/teams/{team_a}/members");

        let (s, v) = app.post(&members, Some(&ta), json!({"email": "cy@example.com"})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(v["role"], "member");
        let (s, v) = app.post(&members, Some(&ta), json!({"email": "cy@example.com"})).await;
        assert_eq!((s, code(&v)), (StatusCode::CONFLICT, "conflict"));
        let (s, v) = app.post(&members, Some(&ta), json!({"email": "nobody@example.com"})).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));

        // A member sees the team but may not manage it.
        assert_eq!(app.get(&members, Some(&tc)).await.0, StatusCode::OK);
        let forbidden = [
            app.post(&members, Some(&tc), json!({"email": "bob@example.com"})).await,
            app.send(Method::PATCH, &format!("{members}/{ada}"), Some(&tc), Some(json!({"role": "member"}))).await,
            app.send(Method::DELETE, &format!("{members}/{ada}"), Some(&tc), None).await,
            app.get("/v1/admin/users", Some(&tc)).await,
        ];
        for (s, v) in forbidden {
            assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{v}");
        }

        // Another team's objects do not exist for Bob, by JWT or by key.
        let (s, v) = app.get(&members, Some(&tb)).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
        let (s, _) = app.post(&members, Some(&tb), json!({"email": "bob@example.com"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.send(Method::DELETE, &format!("{members}/{cy}"), Some(&tb), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (a_key_id, a_key) = app.key(&ta).await;
        let (_, b_key) = app.key(&tb).await;
        let (s, v) = app.get(&format!("/v1/api-keys/{a_key_id}"), Some(&b_key)).await;
        assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
        let (s, _) = app.send(Method::DELETE, &format!("/v1/api-keys/{a_key_id}"), Some(&tb), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, b_list) = app.get("/v1/api-keys", Some(&b_key)).await;
        assert_eq!(b_list["items"].as_array().unwrap().len(), 1, "only team B's key");
        assert_eq!(app.get("/v1/api-keys", Some(&a_key)).await.0, StatusCode::OK, "A's key untouched");

        // Platform admin: from the database, not the claim.
        let (s, users) = app.get("/v1/admin/users", Some(&ta)).await;
        assert_eq!(s, StatusCode::OK, "{users}");
        assert_eq!(users["items"].as_array().unwrap().len(), 3);
        let forged = app.state.jwt.issue_user(&UserIdentity {
            user_id: UserId::parse(&cy).unwrap(),
            team_id: TeamId::parse(&team_a).unwrap(),
            role: Role::Owner,
            email: "cy@example.com".into(),
            name: "Cy".into(),
            is_admin: true,
        }).unwrap().token;
        let (s, v) = app.get("/v1/admin/users", Some(&forged)).await;
        assert_eq!((s, code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "claimed is_admin");
        db.set_user_admin(&ada, false).await.unwrap();
        let (s, _) = app.get("/v1/admin/users", Some(&ta)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "old token of a demoted admin");
        let (s, _) = app.get("/v1/admin/users", Some(&a_key)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "API keys are not users");

        // Roles are re-read too: the forged owner claim did not let Cy manage members.
        let (s, _) = app.post(&members, Some(&forged), json!({"email": "bob@example.com"})).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        // Promoted to admin, Cy may manage members, but never the owner.
        let (s, _) = app.send(Method::PATCH, &format!("{members}/{cy}"), Some(&ta), Some(json!({"role": "admin"}))).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, v) = app.post(&members, Some(&tc), json!({"email": "bob@example.com", "role": "member"})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, _) = app.send(Method::DELETE, &format!("{members}/{ada}"), Some(&tc), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "owner cannot be removed");
        let (_, list) = app.get(&members, Some(&ta)).await;
        assert_eq!(list["members"].as_array().unwrap().len(), 3);

        // Removed from the team, Cy's token for it stops working; the team vanishes for Cy.
        let (s, sw) = app.post("/v1/auth/switch-team", Some(&tc), json!({"team_id": team_a})).await;
        assert_eq!(s, StatusCode::OK, "{sw}");
        let tc_a = token(&sw);
        assert_eq!(sw["role"], "admin");
        let (s, _) = app.send(Method::DELETE, &format!("{members}/{cy}"), Some(&ta), None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, v) = app.get("/v1/me", Some(&tc_a)).await;
        assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
        let (s, _) = app.get(&members, Some(&tc)).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = app.send(Method::DELETE, &format!("{members}/{cy}"), Some(&ta), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "no longer a member");
    }
}
