//! Citizen reports and tenants: the form's `tenant_id`, the configured
//! default, refusals, and dedup that stays inside a tenant.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::super::tests::{create_user, fixture, get, login, post_report, send, test_photo, ADMIN};
use super::super::AppState;

async fn tenant(state: &AppState, name: &str) -> i64 {
    let (status, body) = send(
        state,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().expect("tenant id")
}

/// Signs in a new operator of `tenant`.
async fn operator(state: &AppState, name: &str, tenant: i64) -> String {
    let (status, body) = create_user(
        state,
        ADMIN,
        json!({"username": name, "password": "operator-pw-1", "role": "operator", "tenant_id": tenant}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, session) = login(state, name, "operator-pw-1").await;
    assert_eq!(status, StatusCode::OK, "{session}");
    session["token"].as_str().expect("token").to_owned()
}

/// Posts the bus photo at (lat, lng), with `tenant_id` when given.
async fn report(state: &AppState, lat: &str, tenant_id: Option<&str>) -> (StatusCode, Value) {
    let photo = test_photo();
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("photo", Some("bus.jpg"), &photo),
        ("lat", None, lat.as_bytes()),
        ("lng", None, b"13.4050"),
    ];
    if let Some(t) = tenant_id {
        fields.push(("tenant_id", None, t.as_bytes()));
    }
    post_report(state, &fields).await
}

/// The incident ids in the caller's `GET /api/v1/incidents`.
async fn listed(state: &AppState, token: &str) -> Vec<i64> {
    let (status, body) = get(state, "/api/v1/incidents", Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_i64())
        .collect()
}

#[tokio::test]
async fn a_report_naming_a_tenant_is_that_tenants_incident_only() {
    let f = fixture();
    let s = &f.state;
    let (a, b) = (tenant(s, "north").await, tenant(s, "south").await);
    let (op_a, op_b) = (
        operator(s, "op-north", a).await,
        operator(s, "op-south", b).await,
    );
    let (status, rep) = report(s, "52.5200", Some(&a.to_string())).await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let incident = rep["incident_id"].as_i64().expect("incident");
    let report_id = rep["id"].as_str().expect("report id");

    let path = format!("/api/v1/incidents/{incident}");
    let (status, seen) = get(s, &path, Some(&op_a)).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["tenant_id"], a);
    assert_eq!(seen["reports"][0]["tenant_id"], a, "{seen}");
    assert_eq!(listed(s, &op_a).await, [incident]);
    let photo = format!("/api/v1/reports/{report_id}/photo");
    assert_eq!(
        send(s, "GET", &photo, Some(&op_a), None).await.0,
        StatusCode::OK
    );

    // Tenant B sees none of it.
    assert_eq!(get(s, &path, Some(&op_b)).await.0, StatusCode::NOT_FOUND);
    assert!(listed(s, &op_b).await.is_empty());
    assert_eq!(
        send(s, "GET", &photo, Some(&op_b), None).await.0,
        StatusCode::NOT_FOUND
    );
    let (_, stats) = get(s, "/api/v1/analytics/incidents", Some(&op_b)).await;
    assert_eq!(stats["total"], 0, "{stats}");

    // Dedup stays inside the tenant: the same spot for B opens B's own
    // incident; another report for A joins A's.
    let (_, for_b) = report(s, "52.5200", Some(&b.to_string())).await;
    assert_ne!(for_b["incident_id"].as_i64(), Some(incident), "{for_b}");
    assert_eq!(for_b["joined_existing"], false);
    let (_, again_a) = report(s, "52.52018", Some(&format!(" {a} "))).await;
    assert_eq!(again_a["incident_id"].as_i64(), Some(incident), "{again_a}");
    assert_eq!(again_a["joined_existing"], true);
    // And a report of no tenant joins neither.
    let (_, global) = report(s, "52.5200", None).await;
    let global = global["incident_id"].as_i64().expect("incident");
    assert!(global != incident && Some(global) != for_b["incident_id"].as_i64());
    assert_eq!(listed(s, &op_b).await.len(), 1);

    // The audit entry of the report is the tenant's.
    let (_, audit) = get(s, "/api/v1/audit?limit=100", None).await;
    let created = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|e| e["action"] == "incident.create" && e["target"] == format!("incident:{incident}"))
        .cloned()
        .expect("audited");
    assert_eq!(created["tenant_id"], a, "{created}");
}

#[tokio::test]
async fn a_tenant_id_that_names_no_tenant_is_refused_without_detail() {
    let f = fixture();
    let s = &f.state;
    let a = tenant(s, "secret-city-name").await;
    for bad in [
        (a + 1).to_string(),
        "0".into(),
        "-3".into(),
        "north".into(),
        "1 OR 1=1".into(),
    ] {
        let (status, body) = report(s, "52.5", Some(&bad)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "unprocessable", "{bad}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert_eq!(message, "tenant_id does not name a tenant", "{bad}");
    }
    let (_, all) = get(s, "/api/v1/incidents", None).await;
    assert!(all["items"].as_array().expect("items").is_empty(), "{all}");
    // Empty is the same as leaving the field out.
    let (status, body) = report(s, "52.5", Some("")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, inc) = get(
        s,
        &format!("/api/v1/incidents/{}", body["incident_id"]),
        None,
    )
    .await;
    assert_eq!(inc["tenant_id"], Value::Null, "{inc}");
}

#[tokio::test]
async fn the_configured_default_tenant_takes_reports_that_name_none() {
    let f = fixture();
    let (a, b) = (
        tenant(&f.state, "north").await,
        tenant(&f.state, "south").await,
    );
    // As `reports.default_tenant_id = b` does at start-up.
    let mut incidents = crate::incidents::Incidents::new(f.state.incidents.store.clone(), None);
    incidents.report_tenant = Some(b);
    let s = &AppState {
        incidents: Arc::new(incidents),
        ..f.state.clone()
    };
    let (op_a, op_b) = (
        operator(s, "op-north", a).await,
        operator(s, "op-south", b).await,
    );
    let (status, rep) = report(s, "52.5200", None).await;
    assert_eq!(status, StatusCode::CREATED, "{rep}");
    let incident = rep["incident_id"].as_i64().expect("incident");
    assert_eq!(listed(s, &op_b).await, [incident]);
    assert!(listed(s, &op_a).await.is_empty());
    // A tenant named in the form wins over the default.
    let (_, named) = report(s, "52.5200", Some(&a.to_string())).await;
    let named = named["incident_id"].as_i64().expect("incident");
    assert_ne!(named, incident, "different tenants never share an incident");
    assert_eq!(listed(s, &op_a).await, [named]);
    assert_eq!(listed(s, &op_b).await, [incident]);
}
