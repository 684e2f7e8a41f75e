//! Camera registry API: validation, versions, desired vs applied, tenant
//! isolation and the audit log.

use axum::http::StatusCode;
use chrono::Utc;
use edgeqi_shared::{ConfigRejection, Heartbeat};
use serde_json::{json, Value};

use super::super::tests::{create_user, fixture, get, login, send, ADMIN};
use super::super::AppState;

fn north() -> Value {
    json!({
        "camera_id": "north",
        "name": "North gate",
        "location": {"lat": 52.3702, "lng": 4.8952},
        "heading": 270,
        "detect_fps": 5,
        "zones": [{"id": "crossing", "polygon": [[0.1, 0.55], [0.9, 0.55], [0.9, 0.95], [0.1, 0.95]]}],
        "lines": [{"id": "stop-line", "from": [0.0, 0.6], "to": [1.0, 0.6]}]
    })
}

fn heartbeat(node: &str, applied: Option<u64>, error: Option<ConfigRejection>) -> Heartbeat {
    Heartbeat {
        v: 1,
        node_id: node.into(),
        ts: Utc::now(),
        uptime_s: 1,
        cpu_pct: 1.0,
        mem_used_bytes: 1,
        mem_total_bytes: 2,
        backlog: 0,
        fps: 1.0,
        version: "0.1.0".into(),
        interval_s: 10,
        disk_free_bytes: None,
        disk_total_bytes: None,
        temperature_c: None,
        detector: None,
        outbox: None,
        cameras: vec![],
        config_version: applied,
        config_error: error,
        config_unknown_cameras: vec!["ghost".into()],
    }
}

/// A node that reported in, so the registry accepts cameras for it.
async fn seen(state: &AppState, node: &str) {
    state
        .store
        .record_heartbeat(&heartbeat(node, None, None))
        .await
        .expect("heartbeat");
}

async fn post(state: &AppState, node: &str, token: &str, body: Value) -> (StatusCode, Value) {
    send(
        state,
        "POST",
        &format!("/api/v1/nodes/{node}/cameras"),
        Some(token),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn bad_cameras_are_refused_with_every_problem_named() {
    let f = fixture();
    let s = &f.state;
    seen(s, "gate-01").await;
    let with = |key: &str, value: Value| {
        let mut b = north();
        b[key] = value;
        b
    };
    let cases = [
        (
            with("location", json!({"lat": 200, "lng": 4})),
            "location.lat",
        ),
        (
            with("location", json!({"lat": 1, "lng": -181})),
            "location.lng",
        ),
        (with("heading", json!(400)), "heading"),
        (with("heading", json!(-0.5)), "heading"),
        (with("detect_fps", json!(0)), "detect_fps"),
        (with("camera_id", json!("has space")), "id"),
        (with("camera_id", json!("x".repeat(65))), "id"),
        (
            with(
                "lines",
                json!([{"id": "l", "from": [0.5, 0.5], "to": [0.5, 0.5]}]),
            ),
            "lines[0]",
        ),
        (
            with(
                "lines",
                json!([{"id": "l", "from": [0.0, 1.5], "to": [0.5, 0.5]}]),
            ),
            "lines[0]",
        ),
        (
            with(
                "zones",
                json!([{"id": "z", "polygon": [[0.1, 0.1], [0.2, 0.2]]}]),
            ),
            "zones[0].polygon",
        ),
        (
            with(
                "zones",
                json!([{"id": "z", "polygon": [[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]]}]),
            ),
            "zones[0].polygon",
        ),
        (
            with(
                "zones",
                json!([
                    {"id": "z", "polygon": [[0, 0], [1, 0], [1, 1]]},
                    {"id": "z", "polygon": [[0, 0], [1, 0], [1, 1]]}
                ]),
            ),
            "zones[1].id",
        ),
        (with("headding", json!(90)), "unknown field"),
        (with("location", json!("52,4")), "location"),
        (json!({"name": "no id"}), "camera_id"),
        (json!({"camera_id": "a'; DROP TABLE cameras;--"}), "id"),
    ];
    for (body, field) in cases {
        let (status, err) = post(s, "gate-01", ADMIN, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} -> {err}");
        assert_eq!(err["error"]["code"], "unprocessable", "{err}");
        let msg = err["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{field:?} not named in {msg:?}");
    }
    // Several problems at once are all reported.
    let mut b = north();
    b["heading"] = json!(999);
    b["location"] = json!({"lat": -91, "lng": 0});
    let (_, err) = post(s, "gate-01", ADMIN, b).await;
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("heading") && msg.contains("location.lat"),
        "{msg}"
    );
    // Not JSON, or not declared as JSON.
    let (status, err) = send(
        s,
        "POST",
        "/api/v1/nodes/gate-01/cameras",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{err}");
    // Nothing was stored and no version was made.
    let (_, list) = get(s, "/api/v1/nodes/gate-01/cameras", None).await;
    assert_eq!(list["items"], json!([]));
    assert_eq!(list["config_version"], 0);
}

#[tokio::test]
async fn changes_bump_the_version_and_the_node_shows_desired_vs_applied() {
    let f = fixture();
    let s = &f.state;
    seen(s, "gate-01").await;
    let (status, cam) = post(s, "gate-01", ADMIN, north()).await;
    assert_eq!(status, StatusCode::CREATED, "{cam}");
    assert_eq!(cam["config_version"], 1);
    assert_eq!(cam["lines"][0]["to"], json!([1.0, 0.6]), "stored exactly");
    assert_eq!(cam["location"]["lat"], 52.3702);
    let (status, _) = post(s, "gate-01", ADMIN, north()).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The pushed document is the node's whole camera list.
    let doc = s
        .registry
        .document("gate-01")
        .await
        .expect("doc")
        .expect("some");
    assert_eq!(doc.version, 1);
    assert_eq!(doc.config.cameras[0].id, "north");
    assert_eq!(doc.config.cameras[0].zones[0].id, "crossing");

    let (_, node) = get(s, "/api/v1/nodes/gate-01", None).await;
    assert_eq!(
        node["config"],
        json!({"desired_version": 1, "desired_at": node["config"]["desired_at"],
               "applied_version": null, "in_sync": false, "last_error": null,
               "unknown_cameras": ["ghost"]})
    );
    assert_eq!(node["cameras"][0]["camera_id"], "north");

    // PUT replaces the whole entry: keys left out are cleared.
    let (status, cam) = send(
        s,
        "PUT",
        "/api/v1/nodes/gate-01/cameras/north",
        Some(ADMIN),
        Some(
            json!({"heading": 90, "lines": [{"id": "kerb", "from": [0.2, 0.0], "to": [0.2, 1.0]}]}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cam}");
    assert_eq!(cam["config_version"], 2);
    assert_eq!(cam["zones"], json!([]));
    assert_eq!(cam["name"], Value::Null);
    let (status, _) = send(
        s,
        "PUT",
        "/api/v1/nodes/gate-01/cameras/north",
        Some(ADMIN),
        Some(json!({"camera_id": "south"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "no renames");
    let (status, _) = send(
        s,
        "PUT",
        "/api/v1/nodes/gate-01/cameras/south",
        Some(ADMIN),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, one) = get(s, "/api/v1/nodes/gate-01/cameras/north", None).await;
    assert_eq!(
        (status, one["lines"][0]["id"].as_str()),
        (StatusCode::OK, Some("kerb"))
    );

    // The agent reports version 2: in sync.
    s.store
        .record_heartbeat(&heartbeat("gate-01", Some(2), None))
        .await
        .expect("hb");
    let (_, node) = get(s, "/api/v1/nodes/gate-01", None).await;
    assert_eq!(node["config"]["applied_version"], 2);
    assert_eq!(node["config"]["in_sync"], true);

    // Deleting bumps the version again; the agent refuses it (say) and
    // keeps version 2: the node shows why.
    let (status, del) = send(
        s,
        "DELETE",
        "/api/v1/nodes/gate-01/cameras/north",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{del}");
    assert_eq!(del["config_version"], 3);
    let rejection = ConfigRejection {
        version: Some(3),
        code: "invalid_field".into(),
        reason: "config.cameras: nope".into(),
    };
    s.store
        .record_heartbeat(&heartbeat("gate-01", Some(2), Some(rejection)))
        .await
        .expect("hb");
    let (_, node) = get(s, "/api/v1/nodes/gate-01", None).await;
    assert_eq!(node["config"]["desired_version"], 3);
    assert_eq!(node["config"]["in_sync"], false);
    assert_eq!(node["config"]["last_error"]["version"], 3);
    assert_eq!(node["config"]["last_error"]["code"], "invalid_field");
    assert_eq!(node["cameras"], json!([]));
    let (status, _) = get(s, "/api/v1/nodes/gate-01/cameras/north", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Unknown nodes are 404 everywhere, bad node ids too.
    for uri in [
        "/api/v1/nodes/ghost/cameras",
        "/api/v1/nodes/ghost",
        "/api/v1/nodes/bad%20id/cameras",
    ] {
        assert_eq!(get(s, uri, None).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
    let (status, _) = post(s, "ghost", ADMIN, north()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tenants_roles_and_the_audit_log() {
    let f = fixture();
    let s = &f.state;
    let mut tenants = Vec::new();
    for (name, node) in [("a", "node-a"), ("b", "node-b")] {
        let (_, t) = send(
            s,
            "POST",
            "/api/v1/tenants",
            Some(ADMIN),
            Some(json!({"name": name})),
        )
        .await;
        let t = t["id"].as_i64().expect("tenant id");
        // Provisioned but never seen: cameras can be set up before the box is installed.
        let (status, _) = send(
            s,
            "POST",
            "/api/v1/nodes",
            Some(ADMIN),
            Some(json!({"node_id": node, "tenant_id": t})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        tenants.push(t);
    }
    let token = |user: &'static str, role: &'static str, t: i64| async move {
        let pw = format!("{user}-password");
        let (status, body) = create_user(
            s,
            ADMIN,
            json!({"username": user, "password": pw, "role": role, "tenant_id": t}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, session) = login(s, user, &pw).await;
        session["token"].as_str().expect("token").to_owned()
    };
    let op_a = token("op-a", "operator", tenants[0]).await;
    let viewer_a = token("view-a", "viewer", tenants[0]).await;
    let op_b = token("op-b", "operator", tenants[1]).await;
    let admin_a = token("admin-a", "admin", tenants[0]).await;

    // An operator of tenant a sets up a camera on the not-yet-seen node.
    let (status, cam) = post(s, "node-a", &op_a, north()).await;
    assert_eq!(status, StatusCode::CREATED, "{cam}");
    let (status, list) = get(s, "/api/v1/nodes/node-a/cameras", Some(&op_a)).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["config_version"], 1);

    // A viewer reads but does not change.
    let (status, list) = get(s, "/api/v1/nodes/node-a/cameras", Some(&viewer_a)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let mut other = north();
    other["camera_id"] = json!("south");
    let (status, body) = post(s, "node-a", &viewer_a, other.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for method in ["PUT", "DELETE"] {
        let (status, _) = send(
            s,
            method,
            "/api/v1/nodes/node-a/cameras/north",
            Some(&viewer_a),
            (method == "PUT").then(north),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}");
    }

    // Tenant b sees nothing of tenant a's node: every route is a 404.
    let uri = "/api/v1/nodes/node-a/cameras/north";
    assert_eq!(
        get(s, "/api/v1/nodes/node-a/cameras", Some(&op_b)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(s, uri, Some(&op_b)).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(s, "/api/v1/nodes/node-a", Some(&op_b)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(s, "node-a", &op_b, other.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(s, "PUT", uri, Some(&op_b), Some(north())).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(s, "DELETE", uri, Some(&op_b), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, list) = get(s, "/api/v1/nodes/node-a/cameras", None).await;
    assert_eq!(
        list["config_version"], 1,
        "nothing tenant b did went through"
    );

    // Changes land in the audit log with who, what, before and after,
    // under the node's tenant, so its admin sees a global admin's change too.
    send(s, "PUT", uri, Some(ADMIN), Some(json!({"heading": 10}))).await;
    send(s, "DELETE", uri, Some(&op_a), None).await;
    let (_, audit) = get(s, "/api/v1/audit?limit=10", Some(&admin_a)).await;
    let camera_entries: Vec<&Value> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| {
            e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("camera."))
        })
        .collect();
    let actions: Vec<&str> = camera_entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["camera.delete", "camera.update", "camera.create"]);
    let [delete, update, create] = camera_entries[..] else {
        panic!("three entries")
    };
    assert_eq!(create["actor"], "op-a");
    assert_eq!(create["target"], "node:node-a/camera:north");
    assert_eq!(create["before"], Value::Null);
    assert_eq!(create["after"]["heading"], 270.0);
    assert_eq!(create["after"]["config_version"], 1);
    assert_eq!(update["actor"], "bootstrap-admin");
    assert_eq!(update["before"]["heading"], 270.0);
    assert_eq!(update["after"]["heading"], 10.0);
    assert_eq!(delete["before"]["heading"], 10.0);
    assert_eq!(delete["after"]["config_version"], 3);
}
