//! The permission matrix: every documented route × every kind of caller
//! (nobody, a viewer, an operator and an admin of tenant A, a global admin,
//! a viewer and an admin of tenant B) against tenant A's data → the status
//! each must get, and for lists that tenant B sees none of tenant A's data.
//!
//! The rows must match the OpenAPI document exactly (same operations, same
//! least role), so a new route fails this test until it has a row.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Nobody,
    ViewerA,
    OperatorA,
    AdminA,
    Global,
    ViewerB,
    AdminB,
}

const EVERYONE: [Who; 7] = [
    Who::Nobody,
    Who::ViewerA,
    Who::OperatorA,
    Who::AdminA,
    Who::Global,
    Who::ViewerB,
    Who::AdminB,
];

impl Who {
    fn rank(self) -> u8 {
        match self {
            Who::Nobody => 0,
            Who::ViewerA | Who::ViewerB => 1,
            Who::OperatorA => 2,
            Who::AdminA | Who::Global | Who::AdminB => 3,
        }
    }

    fn tenant_b(self) -> bool {
        matches!(self, Who::ViewerB | Who::AdminB)
    }
}

fn role_rank(role: &str) -> u8 {
    match role {
        "public" => 0,
        "viewer" => 1,
        "operator" => 2,
        _ => 3,
    }
}

/// What tenant A's resources look like to a tenant-B caller who has the role.
#[derive(Debug, Clone, Copy)]
enum Other {
    /// Another tenant's resource does not exist for them: 404.
    Hidden,
    /// Acting on another tenant is refused: 403.
    Refused,
    /// A list or statistic: answered, with none of tenant A's data in it.
    Filtered(Leak),
    /// Not tenant data (the caller's own session, the live feed's upgrade).
    Same,
}

/// What in tenant B's answer would show tenant A's data.
#[derive(Debug, Clone, Copy)]
enum Leak {
    /// Any of tenant A's names (`tenant-a…`, its report id) in the body.
    Marker,
    /// Any item at all (tenant B has none of this kind).
    Items,
    /// A non-zero count in this field.
    Zero(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Payload {
    Empty,
    Json(fn(&World, usize) -> serde_json::Value),
    Report,
}

struct Row {
    method: &'static str,
    path: &'static str,
    uri: fn(&World, Who) -> String,
    role: &'static str,
    payload: Payload,
    /// The status of a caller who may do this.
    ok: u16,
    other: Other,
    /// Only a global admin may (tenant admins get 403).
    global_only: bool,
    /// Callers whose answer differs, and why (see the row).
    except: &'static [(Who, u16)],
}

/// Tenant A's data the rows point at.
struct World {
    tenant_a: i64,
    user_a: i64,
    detection_a: i64,
    report_a: String,
    incident_a: i64,
    /// One alert rule of tenant A per caller, so each may delete one.
    rules_a: Vec<(Who, i64)>,
    /// One API key of tenant A per caller, so each may revoke one.
    keys_a: Vec<(Who, i64)>,
    tokens: Vec<(Who, String)>,
}

impl World {
    fn key(&self, who: Who) -> i64 {
        self.keys_a
            .iter()
            .find(|(w, _)| *w == who)
            .map_or(0, |r| r.1)
    }

    fn rule(&self, who: Who) -> i64 {
        self.rules_a
            .iter()
            .find(|(w, _)| *w == who)
            .map_or(0, |r| r.1)
    }

    fn token(&self, who: Who) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(w, _)| *w == who)
            .map(|(_, t)| t.as_str())
    }
}

const fn row(method: &'static str, path: &'static str, uri: fn(&World, Who) -> String) -> Row {
    Row {
        method,
        path,
        uri,
        role: "viewer",
        payload: Payload::Empty,
        ok: 200,
        other: Other::Filtered(Leak::Marker),
        global_only: false,
        except: &[],
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            role: "public",
            other: Other::Same,
            ..row("GET", "/api/v1/openapi.json", |_, _| {
                "/api/v1/openapi.json".into()
            })
        },
        Row {
            role: "public",
            other: Other::Same,
            payload: Payload::Json(
                |_, _| serde_json::json!({"username": "viewer-tenant-a", "password": "password-a-1"}),
            ),
            ..row("POST", "/api/v1/auth/login", |_, _| {
                "/api/v1/auth/login".into()
            })
        },
        // The bootstrap token is not a user session: nothing to refresh,
        // and no request could change that (403, not 400).
        Row {
            other: Other::Same,
            except: &[(Who::Global, 403)],
            ..row("POST", "/api/v1/auth/refresh", |_, _| {
                "/api/v1/auth/refresh".into()
            })
        },
        Row {
            other: Other::Same,
            ..row("GET", "/api/v1/auth/me", |_, _| "/api/v1/auth/me".into())
        },
        Row {
            role: "admin",
            ..row("GET", "/api/v1/users", |_, _| "/api/v1/users".into())
        },
        Row {
            role: "admin",
            ok: 201,
            other: Other::Refused,
            payload: Payload::Json(
                |w, n| serde_json::json!({"username": format!("made-{n}"), "password": "password-x-1", "role": "viewer", "tenant_id": w.tenant_a}),
            ),
            ..row("POST", "/api/v1/users", |_, _| "/api/v1/users".into())
        },
        Row {
            role: "admin",
            other: Other::Hidden,
            ..row("GET", "/api/v1/users/{id}", |w, _| {
                format!("/api/v1/users/{}", w.user_a)
            })
        },
        row("GET", "/api/v1/tenants", |_, _| "/api/v1/tenants".into()),
        Row {
            role: "admin",
            ok: 201,
            global_only: true,
            payload: Payload::Json(|_, n| serde_json::json!({"name": format!("t-{n}")})),
            ..row("POST", "/api/v1/tenants", |_, _| "/api/v1/tenants".into())
        },
        Row {
            role: "admin",
            ok: 201,
            other: Other::Refused,
            payload: Payload::Json(
                |w, n| serde_json::json!({"name": format!("key-{n}"), "role": "viewer", "tenant_id": w.tenant_a}),
            ),
            ..row("POST", "/api/v1/api-keys", |_, _| "/api/v1/api-keys".into())
        },
        Row {
            role: "admin",
            ..row("GET", "/api/v1/audit", |_, _| "/api/v1/audit".into())
        },
        Row {
            role: "admin",
            ..row("GET", "/api/v1/api-keys", |_, _| "/api/v1/api-keys".into())
        },
        Row {
            role: "admin",
            ok: 204,
            other: Other::Hidden,
            ..row("DELETE", "/api/v1/api-keys/{id}", |w, who| {
                format!("/api/v1/api-keys/{}", w.key(who))
            })
        },
        row("GET", "/api/v1/nodes", |_, _| "/api/v1/nodes".into()),
        Row {
            role: "admin",
            ok: 201,
            other: Other::Refused,
            payload: Payload::Json(
                |w, _| serde_json::json!({"node_id": "gate-tenant-a", "tenant_id": w.tenant_a}),
            ),
            ..row("POST", "/api/v1/nodes", |_, _| "/api/v1/nodes".into())
        },
        Row {
            role: "admin",
            other: Other::Hidden,
            ..row("POST", "/api/v1/nodes/{id}/credentials", |_, _| {
                "/api/v1/nodes/gate-tenant-a/credentials".into()
            })
        },
        // One provisioned node of tenant A per caller, so each may revoke one.
        Row {
            role: "admin",
            ok: 204,
            other: Other::Hidden,
            ..row("DELETE", "/api/v1/nodes/{id}/credentials", |_, who| {
                format!("/api/v1/nodes/revoke-{who:?}/credentials")
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/nodes/{id}", |_, _| {
                "/api/v1/nodes/gate-tenant-a".into()
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/nodes/{id}/ledger", |_, _| {
                "/api/v1/nodes/gate-tenant-a/ledger".into()
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/nodes/{id}/cameras", |_, _| {
                "/api/v1/nodes/gate-tenant-a/cameras".into()
            })
        },
        Row {
            role: "operator",
            ok: 201,
            other: Other::Hidden,
            payload: Payload::Json(|_, n| serde_json::json!({"camera_id": format!("made-{n}")})),
            ..row("POST", "/api/v1/nodes/{id}/cameras", |_, _| {
                "/api/v1/nodes/gate-tenant-a/cameras".into()
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/nodes/{id}/cameras/{camera_id}", |_, _| {
                "/api/v1/nodes/gate-tenant-a/cameras/cam-tenant-a".into()
            })
        },
        Row {
            role: "operator",
            other: Other::Hidden,
            payload: Payload::Json(|_, _| serde_json::json!({"heading": 90})),
            ..row("PUT", "/api/v1/nodes/{id}/cameras/{camera_id}", |_, _| {
                "/api/v1/nodes/gate-tenant-a/cameras/cam-tenant-a".into()
            })
        },
        // One camera of tenant A's node per caller, so each may delete one.
        Row {
            role: "operator",
            other: Other::Hidden,
            ..row(
                "DELETE",
                "/api/v1/nodes/{id}/cameras/{camera_id}",
                |_, who| format!("/api/v1/nodes/gate-tenant-a/cameras/del-{who:?}"),
            )
        },
        row("GET", "/api/v1/detections", |_, _| {
            "/api/v1/detections".into()
        }),
        row("GET", "/api/v1/stats/summary", |_, _| {
            "/api/v1/stats/summary".into()
        }),
        row("GET", "/api/v1/stats/timeseries", |_, _| {
            "/api/v1/stats/timeseries".into()
        }),
        Row {
            role: "operator",
            ..row("GET", "/api/v1/dead-letters", |_, _| {
                "/api/v1/dead-letters".into()
            })
        },
        // Past the role check the upgrade itself fails (no WebSocket handshake in a oneshot request).
        Row {
            ok: 400,
            other: Other::Same,
            ..row("GET", "/api/v1/ws", |_, _| "/api/v1/ws".into())
        },
        row("GET", "/api/v1/events", |_, _| "/api/v1/events".into()),
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/events/{id}/snapshot", |_, _| {
                "/api/v1/events/ev-tenant-a/snapshot".into()
            })
        },
        row("GET", "/api/v1/stats/lines", |_, _| {
            "/api/v1/stats/lines".into()
        }),
        Row {
            other: Other::Filtered(Leak::Items),
            ..row("GET", "/api/v1/incidents", |_, _| {
                "/api/v1/incidents".into()
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/incidents/{id}", |w, _| {
                format!("/api/v1/incidents/{}", w.incident_a)
            })
        },
        Row {
            role: "operator",
            other: Other::Hidden,
            payload: Payload::Json(|_, _| serde_json::json!({"comment": "matrix"})),
            ..row("PATCH", "/api/v1/incidents/{id}", |w, _| {
                format!("/api/v1/incidents/{}", w.incident_a)
            })
        },
        Row {
            role: "public",
            ok: 201,
            other: Other::Same,
            payload: Payload::Report,
            ..row("POST", "/api/v1/reports", |_, _| "/api/v1/reports".into())
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/reports/{id}/photo", |w, _| {
                format!("/api/v1/reports/{}/photo", w.report_a)
            })
        },
        Row {
            role: "public",
            other: Other::Same,
            ..row("GET", "/api/v1/status/{id}", |w, _| {
                format!("/api/v1/status/{}", w.report_a)
            })
        },
        Row {
            other: Other::Filtered(Leak::Items),
            ..row("GET", "/api/v1/analytics/areas", |_, _| {
                "/api/v1/analytics/areas".into()
            })
        },
        Row {
            other: Other::Filtered(Leak::Zero("total")),
            ..row("GET", "/api/v1/analytics/incidents", |_, _| {
                "/api/v1/analytics/incidents".into()
            })
        },
        Row {
            other: Other::Filtered(Leak::Zero("incidents")),
            ..row("GET", "/api/v1/analytics/hotspots", |_, _| {
                "/api/v1/analytics/hotspots".into()
            })
        },
        Row {
            role: "operator",
            other: Other::Hidden,
            payload: Payload::Json(|_, _| serde_json::json!({"verdict": "confirmed"})),
            ..row("POST", "/api/v1/detections/{id}/review", |w, _| {
                format!("/api/v1/detections/{}/review", w.detection_a)
            })
        },
        Row {
            role: "operator",
            other: Other::Hidden,
            payload: Payload::Json(|_, _| serde_json::json!({"verdict": "confirmed"})),
            ..row("POST", "/api/v1/reports/{id}/review", |w, _| {
                format!("/api/v1/reports/{}/review", w.report_a)
            })
        },
        Row {
            other: Other::Filtered(Leak::Items),
            ..row("GET", "/api/v1/reviews", |_, _| "/api/v1/reviews".into())
        },
        Row {
            role: "operator",
            ..row("GET", "/api/v1/reviews/export.zip", |_, _| {
                "/api/v1/reviews/export.zip".into()
            })
        },
        row("GET", "/api/v1/alert-rules", |_, _| {
            "/api/v1/alert-rules".into()
        }),
        // Tenant B's callers create rules in their own tenant.
        Row {
            role: "operator",
            ok: 201,
            other: Other::Same,
            payload: Payload::Json(
                |_, n| serde_json::json!({"name": format!("made-{n}"), "labels": ["person"]}),
            ),
            ..row("POST", "/api/v1/alert-rules", |_, _| {
                "/api/v1/alert-rules".into()
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/alert-rules/{id}", |w, who| {
                format!("/api/v1/alert-rules/{}", w.rule(who))
            })
        },
        Row {
            role: "operator",
            other: Other::Hidden,
            payload: Payload::Json(|_, _| serde_json::json!({"threshold": 2})),
            ..row("PATCH", "/api/v1/alert-rules/{id}", |w, who| {
                format!("/api/v1/alert-rules/{}", w.rule(who))
            })
        },
        Row {
            other: Other::Hidden,
            ..row("GET", "/api/v1/alert-rules/{id}/deliveries", |w, who| {
                format!("/api/v1/alert-rules/{}/deliveries", w.rule(who))
            })
        },
        Row {
            role: "operator",
            ok: 204,
            other: Other::Hidden,
            ..row("DELETE", "/api/v1/alert-rules/{id}", |w, who| {
                format!("/api/v1/alert-rules/{}", w.rule(who))
            })
        },
        Row {
            other: Other::Filtered(Leak::Items),
            ..row("GET", "/api/v1/alerts", |_, _| "/api/v1/alerts".into())
        },
        Row {
            other: Other::Filtered(Leak::Items),
            ..row("GET", "/api/v1/webhooks/deliveries", |_, _| {
                "/api/v1/webhooks/deliveries".into()
            })
        },
    ]
}

async fn call(
    state: &AppState,
    method: &str,
    uri: &str,
    token: Option<&str>,
    payload: Payload,
    world: &World,
    n: usize,
) -> (u16, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = match payload {
        Payload::Empty => Body::empty(),
        Payload::Json(f) => {
            req = req.header("content-type", "application/json");
            Body::from(f(world, n).to_string())
        }
        Payload::Report => {
            let photo = test_photo();
            let (ctype, body) = multipart(&[
                ("photo", Some("p.jpg"), &photo),
                ("lat", None, b"52.5"),
                ("lng", None, b"13.4"),
            ]);
            req = req.header("content-type", ctype);
            Body::from(body)
        }
    };
    let resp = router(state.clone())
        .oneshot(req.body(body).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

/// Tenants A and B, their users, and tenant A's node, detections, dead
/// letter, track event with snapshot, citizen report and incident.
async fn world(base: &AppState) -> (AppState, World) {
    let (_, a) = send(
        base,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "tenant-a"})),
    )
    .await;
    let (_, b) = send(
        base,
        "POST",
        "/api/v1/tenants",
        Some(ADMIN),
        Some(serde_json::json!({"name": "other-b"})),
    )
    .await;
    let (ta, tb) = (a["id"].as_i64().expect("a"), b["id"].as_i64().expect("b"));
    // Citizen reports land in tenant A.
    let mut incidents = crate::incidents::Incidents::new(base.incidents.store.clone(), None);
    incidents.report_tenant = Some(ta);
    let state = AppState {
        incidents: Arc::new(incidents),
        ..base.clone()
    };
    let s = &state;
    let mut tokens = vec![(Who::Global, ADMIN.to_owned())];
    let mut user_a = 0;
    for (who, name, role, tenant) in [
        (Who::ViewerA, "viewer-tenant-a", "viewer", ta),
        (Who::OperatorA, "operator-tenant-a", "operator", ta),
        (Who::AdminA, "admin-tenant-a", "admin", ta),
        (Who::ViewerB, "viewer-b", "viewer", tb),
        (Who::AdminB, "admin-b", "admin", tb),
    ] {
        let password = if who == Who::ViewerA {
            "password-a-1"
        } else {
            "password-x-1"
        };
        let (status, u) = create_user(s, ADMIN, serde_json::json!({"username": name, "password": password, "role": role, "tenant_id": tenant})).await;
        assert_eq!(status, StatusCode::CREATED, "{u}");
        if who == Who::ViewerA {
            user_a = u["id"].as_i64().expect("id");
        }
        let (status, session) = login(s, name, password).await;
        assert_eq!(status, StatusCode::OK, "{session}");
        tokens.push((who, session["token"].as_str().expect("token").to_owned()));
    }
    let admin_a = tokens
        .iter()
        .find(|t| t.0 == Who::AdminA)
        .expect("admin a")
        .1
        .clone();
    // An audited action inside tenant A, so its audit log has something to leak.
    let (status, _) = create_user(s, &admin_a, serde_json::json!({"username": "helper-tenant-a", "password": "password-x-1", "role": "viewer"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = send(
        s,
        "POST",
        "/api/v1/nodes",
        Some(ADMIN),
        Some(serde_json::json!({"node_id": "gate-tenant-a", "tenant_id": ta})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for who in EVERYONE {
        let (status, body) = send(
            s,
            "POST",
            "/api/v1/nodes",
            Some(ADMIN),
            Some(serde_json::json!({"node_id": format!("revoke-{who:?}"), "tenant_id": ta})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    let batch = DetectionBatch {
        v: 1,
        node_id: "gate-tenant-a".into(),
        epoch: "e".into(),
        seq: 1,
        sent_at: Utc::now(),
        detections: vec![Detection {
            ts: Utc::now(),
            camera_id: "cam-tenant-a".into(),
            class_id: Some(5),
            label: "tenant-a-bus".into(),
            score: 0.9,
            bbox: [10.0, 20.0, 110.0, 220.0],
            track_id: Some(7),
            zone: None,
        }],
        counts: vec![],
    };
    let stored = s.store.ingest_batch(&batch).await.expect("seed");
    for camera in std::iter::once("cam-tenant-a".to_owned())
        .chain(EVERYONE.iter().map(|who| format!("del-{who:?}")))
    {
        let (status, body) = send(
            s,
            "POST",
            "/api/v1/nodes/gate-tenant-a/cameras",
            Some(ADMIN),
            Some(serde_json::json!({"camera_id": camera, "name": "tenant-a camera"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    s.store
        .dead_letter(
            "edgeqi/v1/gate-tenant-a/detections",
            Some("gate-tenant-a"),
            "bad_json",
            "tenant-a payload",
            b"tenant-a",
        )
        .await
        .expect("dead letter");
    {
        use base64::Engine;
        use edgeqi_shared::protocol::{EventBatch, Snapshot, TrackEvent};
        let now = Utc::now();
        s.events
            .record_events(EventBatch {
                v: 1,
                node_id: "gate-tenant-a".into(),
                sent_at: now,
                events: vec![TrackEvent {
                    id: "ev-tenant-a".into(),
                    ts: now,
                    camera_id: "cam-tenant-a".into(),
                    track_id: 7,
                    track_key: "run-tenant-a-7".into(),
                    kind: "appeared".into(),
                    class_id: Some(5),
                    label: "tenant-a-bus".into(),
                    score: 0.9,
                    bbox: [1.0, 2.0, 3.0, 4.0],
                    zone: None,
                    line: None,
                    direction: None,
                    dwell_s: None,
                }],
                line_counts: vec![edgeqi_shared::protocol::LineCount {
                    camera_id: "cam-tenant-a".into(),
                    line: "line-tenant-a".into(),
                    label: "tenant-a-bus".into(),
                    direction: "in".into(),
                    count: 1,
                    since: now,
                }],
            })
            .await
            .expect("events");
        s.events
            .record_snapshot(&Snapshot {
                v: 1,
                node_id: "gate-tenant-a".into(),
                camera_id: "cam-tenant-a".into(),
                track_id: 7,
                track_key: "run-tenant-a-7".into(),
                event_id: "ev-tenant-a".into(),
                ts: now,
                class_id: Some(5),
                label: "tenant-a-bus".into(),
                score: 0.9,
                bbox: [1.0, 2.0, 3.0, 4.0],
                content_type: "image/jpeg".into(),
                jpeg_b64: base64::engine::general_purpose::STANDARD
                    .encode([0xFFu8, 0xD8, 0xFF, 0xD9]),
                frame_jpeg_b64: None,
            })
            .await
            .expect("snapshot");
    }
    let photo = test_photo();
    let (status, report) = post_report(
        s,
        &[
            ("photo", Some("p.jpg"), &photo),
            ("lat", None, b"52.5"),
            ("lng", None, b"13.4"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let operator_a = tokens
        .iter()
        .find(|t| t.0 == Who::OperatorA)
        .expect("operator a")
        .1
        .clone();
    let mut rules_a = Vec::new();
    for who in EVERYONE {
        let (status, rule) = send(
            s,
            "POST",
            "/api/v1/alert-rules",
            Some(&operator_a),
            Some(serde_json::json!({"name": "rule-tenant-a", "labels": ["person"]})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{rule}");
        rules_a.push((who, rule["id"].as_i64().expect("rule id")));
    }
    let mut keys_a = Vec::new();
    for who in EVERYONE {
        let (status, key) = send(
            s,
            "POST",
            "/api/v1/api-keys",
            Some(ADMIN),
            Some(serde_json::json!({"name": "key-tenant-a", "role": "viewer", "tenant_id": ta})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        keys_a.push((who, key["id"].as_i64().expect("key id")));
    }
    let w = World {
        tenant_a: ta,
        rules_a,
        keys_a,
        user_a,
        detection_a: stored.detection_ids[0],
        report_a: report["id"].as_str().expect("report id").to_owned(),
        incident_a: report["incident_id"].as_i64().expect("incident id"),
        tokens,
    };
    (state, w)
}

fn expected(row: &Row, who: Who) -> (u16, Option<Leak>) {
    if let Some((_, s)) = row.except.iter().find(|(w, _)| *w == who) {
        return (*s, None);
    }
    if row.role == "public" {
        return (row.ok, None);
    }
    if who == Who::Nobody {
        return (401, None);
    }
    if who.rank() < role_rank(row.role) || (row.global_only && who != Who::Global) {
        return (403, None);
    }
    if who.tenant_b() {
        return match row.other {
            Other::Hidden => (404, None),
            Other::Refused => (403, None),
            Other::Filtered(leak) => (row.ok, Some(leak)),
            Other::Same => (row.ok, None),
        };
    }
    (row.ok, None)
}

fn leaks(leak: Leak, body: &[u8], world: &World) -> bool {
    let text = String::from_utf8_lossy(body);
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match leak {
        Leak::Marker => text.contains("tenant-a") || text.contains(&world.report_a),
        Leak::Items => json["items"].as_array().is_none_or(|i| !i.is_empty()),
        Leak::Zero(field) => json[field].as_u64() != Some(0),
    }
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_matrix_says() {
    let f = fixture();
    let (state, w) = world(&f.state).await;
    let rows = rows();

    // One row per documented operation, with the role the document declares.
    let (_, doc) = send(&state, "GET", "/api/v1/openapi.json", None, None).await;
    let documented = documented_operations(&doc);
    let mut tabled: Vec<_> = rows
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned(), r.role.to_owned()))
        .collect();
    tabled.sort();
    for op in &documented {
        assert!(
            tabled.contains(op),
            "{op:?} is documented but has no permission-matrix row (or its role differs)"
        );
    }
    for op in &tabled {
        assert!(
            documented.contains(op),
            "{op:?} has a row but is not documented"
        );
    }

    let mut failures = Vec::new();
    let mut n = 0;
    for r in &rows {
        for who in EVERYONE {
            n += 1;
            let (want, leak) = expected(r, who);
            let (got, body) = call(
                &state,
                r.method,
                &(r.uri)(&w, who),
                w.token(who),
                r.payload,
                &w,
                n,
            )
            .await;
            if got != want {
                failures.push(format!(
                    "{} {} as {who:?}: {got}, want {want}: {}",
                    r.method,
                    r.path,
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                ));
            } else if leak.is_some_and(|l| leaks(l, &body, &w)) {
                failures.push(format!(
                    "{} {} as {who:?} shows tenant A's data: {}",
                    r.method,
                    r.path,
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {n} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // A tenant's admin cannot take another tenant's node over by provisioning its id.
    let admin_b = w.token(Who::AdminB).expect("admin b");
    let (status, body) = send(
        &state,
        "POST",
        "/api/v1/nodes",
        Some(admin_b),
        Some(serde_json::json!({"node_id": "gate-tenant-a"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, nodes) = get(&state, "/api/v1/nodes", Some(admin_b)).await;
    assert_eq!(nodes["items"], serde_json::json!([]), "{nodes}");
}
