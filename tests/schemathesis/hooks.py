"""schemathesis hooks of tests/schemathesis.rs.

The run keeps every check on. The only failures dropped here are
"schema-valid request rejected" (ST202) answers whose reason JSON Schema
cannot state: the request fits the document, and the rule that refuses it
depends on data the server holds or on two fields together. Each entry names
the operation, the status and a piece of the error message the handler
sends for exactly that rule, so any other 4xx of the same operation still
fails the run. The rules themselves are tested by the aggregator's unit and
HTTP tests (aggregator/src/api/tests.rs).
"""

import json
import os

import schemathesis

# Set to a file name to list every dropped failure there (one line each).
_LOG = os.environ.get("EDGEQI_SCHEMATHESIS_DROPPED")

# (operation or None for any, status or None for any, a piece of the error
# message): why
# the document cannot express the rule.
RULES = "POST /api/v1/alert-rules"
RULE_PATCH = "PATCH /api/v1/alert-rules/{id}"
DATA_DEPENDENT = [
    # A cursor is valid only if this API returned it (keyset position or
    # opaque key of the previous page): no pattern can say that. The
    # stateful phase follows real `next_cursor` values.
    (None, 400, "cursor "),
    # JSON Schema counts 2247.0 as an integer; the API reads integers as JSON
    # integer literals, as the clients generated from the document send
    # them (serde refuses a float for an i64 and says so).
    (None, None, "invalid type: floating point `"),
    # Stateful links that schemathesis infers between resources can carry
    # one resource's string id into another's integer path parameter: such
    # a request does not fit the document, whatever the check calls it.
    (None, 400, "Invalid URL: Cannot parse `"),
    # The window and the bucket together bound the number of points, and
    # `since` must be before `until`: two parameters against each other.
    ("GET /api/v1/stats/timeseries", 400, "since must be before until"),
    ("GET /api/v1/stats/timeseries", 400, "buckets: use a larger bucket"),
    # Who the caller is decides: an operator or viewer account needs a
    # tenant, which a tenant's admin gets by default and a global admin
    # must give (the role and the caller's own tenant together).
    ("POST /api/v1/users", 422, "operators and viewers belong to a tenant"),
    ("POST /api/v1/nodes", 422, "give tenant_id"),
    # References to other resources: the tenants are data.
    ("POST /api/v1/users", 422, "no tenant"),
    ("POST /api/v1/api-keys", 422, "no tenant"),
    ("POST /api/v1/nodes", 422, "no tenant"),
    # The MQTT client id the aggregator itself uses is configuration.
    ("POST /api/v1/nodes", 422, "is the aggregator's own MQTT client id"),
    # A body's camera_id against the path's.
    ("PUT /api/v1/nodes/{id}/cameras/{camera_id}", 422, "in the path (a camera cannot be renamed"),
    # Geometry and uniqueness across array items: a polygon must enclose an
    # area, a line's ends differ, zone and line ids are unique on a camera.
    (None, 422, "encloses no area"),
    (None, 422, "from and to must be two different [x, y] points"),
    (None, 422, "is used twice"),
    # A name is limited in bytes (it travels in the node's config document);
    # JSON Schema counts characters only.
    (None, 422, "bytes without control characters"),
    # A review gives `label` (detections) or `objects` (reports) exactly
    # when its verdict is `relabeled`, and a box has x1 < x2 and y1 < y2:
    # between fields and between the items of one array.
    ("POST /api/v1/detections/{id}/review", 422, "exactly when the verdict is relabeled"),
    ("POST /api/v1/reports/{id}/review", 422, "exactly when the verdict is relabeled"),
    ("POST /api/v1/reports/{id}/review", 422, "in pixels with x1 < x2 and y1 < y2"),
    # A report's photo must decode as a JPEG or PNG whose header is sane:
    # JSON Schema says nothing about the bytes of a binary field.
    ("POST /api/v1/reports", 422, "photo "),
    # Between the fields of an alert rule (RuleDoc's doc lists them); a
    # patch is checked merged into the stored rule, which is data.
    (RULES, 422, "a watchlist needs at least one label"),
    (RULES, 422, "a watchlist fires on every match"),
    (RULES, 422, "a watchlist has no window"),
    (RULES, 422, "window_s=0 must be in"),
    (RULES, 422, "direction needs a line"),
    (RULES, 422, "a line is only crossed by line_crossed events"),
    (RULES, 422, "schedule.start and schedule.end must differ"),
    # Webhook URLs: a host, no credentials, and an internal address only if
    # the configuration allows it; beyond the scheme no pattern says that.
    (RULES, 422, "actions.webhook.url"),
    (RULE_PATCH, 422, "a watchlist needs at least one label"),
    (RULE_PATCH, 422, "a watchlist fires on every match"),
    (RULE_PATCH, 422, "a watchlist has no window"),
    (RULE_PATCH, 422, "window_s=0 must be in"),
    (RULE_PATCH, 422, "direction needs a line"),
    (RULE_PATCH, 422, "a line is only crossed by line_crossed events"),
    (RULE_PATCH, 422, "schedule.start and schedule.end must differ"),
    (RULE_PATCH, 422, "actions.webhook.url"),
    (RULE_PATCH, 422, "name is required"),
    (RULE_PATCH, 422, "is required"),
]


def _message(response):
    try:
        return json.loads(response.content)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""


@schemathesis.hook
def filter_failure(context, failure, case, response):
    if getattr(failure, "code", None) != "ST202" or response is None:
        return True
    label = f"{case.method.upper()} {case.path}"
    message = _message(response)
    for operation, status, piece in DATA_DEPENDENT:
        if operation in (None, label) and status in (None, response.status_code) and piece in message:
            if _LOG:
                with open(_LOG, "a", encoding="utf-8") as f:
                    f.write(f"{label} {response.status_code} {message[:160]!r}\n")
            return False
    return True
