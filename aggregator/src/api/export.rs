//! CSV and NDJSON export of every list route.
//!
//! A list handler describes its rows (a page fetcher and CSV columns) and
//! [`respond`] answers in the format the caller asked for with `?format=` or
//! `Accept`: `json` (default) is one page `{"items", "next_cursor"}`;
//! `csv` and `ndjson` stream every matching row, page after page from
//! `cursor` on, with the same filters and tenant scoping, so an export of
//! millions of rows never sits in memory. A failure mid-stream cuts the
//! body short (the status line is already sent), which clients see as an
//! incomplete transfer; it is logged.

use std::future::Future;
use std::pin::Pin;

use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::openapi::Page;
use super::ApiError;

/// How a list is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Ndjson,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// The format a caller asked for: `?format=json|csv|ndjson` first, then the
/// `Accept` header (`text/csv`, `application/x-ndjson`), else JSON.
#[derive(Debug, Clone, Copy)]
pub struct ListFormat(pub Format);

impl<S: Send + Sync> FromRequestParts<S> for ListFormat {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let asked = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("format="))
                .map(str::to_owned)
        });
        if let Some(f) = asked {
            return match f.as_str() {
                "json" => Ok(ListFormat(Format::Json)),
                "csv" => Ok(ListFormat(Format::Csv)),
                "ndjson" => Ok(ListFormat(Format::Ndjson)),
                o => Err(ApiError::BadRequest(format!(
                    "format={o:?} must be json, csv or ndjson"
                ))),
            };
        }
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        Ok(ListFormat(if accept.contains("text/csv") {
            Format::Csv
        } else if accept.contains("application/x-ndjson") {
            Format::Ndjson
        } else {
            Format::Json
        }))
    }
}

/// One page of rows and the cursor of the next, if any.
pub type Fetched<T> = Result<(Vec<T>, Option<String>), ApiError>;

/// A future of one page.
pub type PageFuture<T> = Pin<Box<dyn Future<Output = Fetched<T>> + Send>>;

/// A CSV column: its header and where its value is in the row's JSON
/// (`bbox.0` is the first element of `bbox`).
pub type Column = (&'static str, &'static str);

/// Answers a list in `format`. `fetch(cursor)` gets one page; JSON answers
/// the page at `cursor`, CSV and NDJSON stream all pages from there.
pub async fn respond<T, F>(
    format: Format,
    columns: &'static [Column],
    cursor: Option<String>,
    mut fetch: F,
) -> Result<Response, ApiError>
where
    T: Serialize + Send + 'static,
    F: FnMut(Option<String>) -> PageFuture<T> + Send + 'static,
{
    if format == Format::Json {
        let (items, next_cursor) = fetch(cursor).await?;
        return Ok(Json(Page { items, next_cursor }).into_response());
    }
    // The first page is fetched before answering, so a bad filter or an
    // unavailable database is still a proper error status.
    let first = fetch(cursor).await?;
    let mut head = match format {
        Format::Csv => csv_line(columns.iter().map(|c| c.0)),
        _ => String::new(),
    };
    head.push_str(&render(format, columns, &first.0));
    let state = (Some(head), first.1, fetch);
    let stream =
        futures_util::stream::unfold(state, move |(pending, next, mut fetch)| async move {
            if let Some(chunk) = pending {
                return Some((Ok(Bytes::from(chunk)), (None, next, fetch)));
            }
            let cursor = next?;
            match fetch(Some(cursor)).await {
                Ok((rows, next)) => {
                    let chunk = render(format, columns, &rows);
                    Some((Ok(Bytes::from(chunk)), (None, next, fetch)))
                }
                Err(e) => {
                    tracing::error!(error = ?e, "export stopped mid-stream");
                    Some((
                        Err(std::io::Error::other(
                            "export failed; see the aggregator log",
                        )),
                        (None, None, fetch),
                    ))
                }
            }
        });
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(resp)
}

/// `?limit=`: rows per JSON page, 1..=1000. Anything else (0, 1001, `abc`,
/// empty) is refused while the query string is read (400 naming `limit`), so
/// the range in the document is the range the handlers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(pub usize);

/// Rows a JSON page holds when the caller gives no `limit`.
pub const DEFAULT_PAGE: usize = 100;
/// Largest `limit`, and the chunk size of streamed formats.
pub const MAX_PAGE: usize = 1000;

impl<'de> serde::Deserialize<'de> for PageLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .map(PageLimit)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not in 1..={MAX_PAGE}")))
    }
}

impl utoipa::PartialSchema for PageLimit {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(MAX_PAGE as u32))
            .default(Some(serde_json::json!(DEFAULT_PAGE)))
            .description(Some(format!(
                "Rows per page, 1..={MAX_PAGE} (default {DEFAULT_PAGE}); CSV and NDJSON stream every row."
            )))
            .into()
    }
}

impl utoipa::ToSchema for PageLimit {}

/// `?format=` of every list (the [`ListFormat`] extractor reads it; this
/// puts it in the document). Without it, `Accept` decides, else JSON.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FormatParam {
    #[param(inline)]
    pub format: Option<FormatName>,
}

/// The names `?format=` takes.
#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FormatName {
    Json,
    Csv,
    Ndjson,
}

/// `?limit=&cursor=` of a list whose rows the handler holds in memory (see [`sorted_pages`]).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    #[param(inline)]
    pub limit: Option<PageLimit>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    pub cursor: Option<String>,
}

impl PageParams {
    /// See [`page_limit`].
    pub fn limit(&self, format: Format) -> usize {
        page_limit(self.limit, format)
    }
}

/// Rows per page: the caller's `limit` (default 100) for JSON, 1000 per
/// chunk for the streamed formats.
pub fn page_limit(limit: Option<PageLimit>, format: Format) -> usize {
    match format {
        Format::Json => limit.map_or(DEFAULT_PAGE, |l| l.0),
        _ => MAX_PAGE,
    }
}

/// The answer to a cursor this API did not hand out.
pub fn bad_cursor(c: &str) -> ApiError {
    ApiError::BadRequest(format!("cursor {c:?} is not one this API returned"))
}

/// The id a keyset list continues below: its cursor is the previous page's
/// last id.
pub fn id_cursor(cursor: Option<String>) -> Result<Option<i64>, ApiError> {
    cursor
        .map(|c| c.parse::<i64>().map_err(|_| bad_cursor(&c)))
        .transpose()
}

/// A page fetcher for [`respond`] over rows the handler already holds
/// (users, tenants, nodes, line totals, area scores: short lists, or
/// aggregates computed per request). The rows are put in the order of
/// `key`, which must be unique; a cursor is the key of the previous page's
/// last row (base64 of its JSON), so a row added or removed between two
/// requests neither repeats nor hides the rows after it.
pub fn sorted_pages<T, K>(
    mut rows: Vec<T>,
    key: fn(&T) -> K,
    limit: usize,
) -> impl FnMut(Option<String>) -> PageFuture<T> + Send + 'static
where
    T: Serialize + Clone + Send + Sync + 'static,
    K: Ord + Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    rows.sort_by_cached_key(key);
    let rows = std::sync::Arc::new(rows);
    move |cursor: Option<String>| -> PageFuture<T> {
        let rows = rows.clone();
        Box::pin(async move {
            let start = match cursor {
                None => 0,
                Some(c) => {
                    let after: K = B64
                        .decode(&c)
                        .ok()
                        .and_then(|json| serde_json::from_slice(&json).ok())
                        .ok_or_else(|| bad_cursor(&c))?;
                    rows.partition_point(|r| key(r) <= after)
                }
            };
            let end = (start + limit.max(1)).min(rows.len());
            let next = (end < rows.len())
                .then(|| serde_json::to_vec(&key(&rows[end - 1])).ok())
                .flatten()
                .map(|json| B64.encode(json));
            Ok((rows[start..end].to_vec(), next))
        })
    }
}

fn render<T: Serialize>(format: Format, columns: &[Column], rows: &[T]) -> String {
    let mut out = String::new();
    for row in rows {
        let v = serde_json::to_value(row).unwrap_or_default();
        match format {
            Format::Csv => out.push_str(&csv_line(columns.iter().map(|c| cell(&v, c.1)))),
            _ => {
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
    }
    out
}

/// The text of one CSV cell: strings as they are, numbers and booleans
/// printed, null empty, arrays and objects as compact JSON. A string that a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@`, tab, CR first:
/// free text such as comments and tenant names reaches these files) gets a
/// leading `'`, which spreadsheets show as text; numbers are never changed.
fn cell(row: &Value, path: &str) -> String {
    let mut v = row;
    for key in path.split('.') {
        v = match key.parse::<usize>() {
            Ok(i) if v.is_array() => &v[i],
            _ => &v[key],
        };
    }
    match v {
        Value::Null => String::new(),
        Value::String(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}"),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One RFC 4180 line: a field with a comma, quote, CR or LF is quoted and
/// its quotes doubled; lines end with CRLF.
pub fn csv_line<S: AsRef<str>>(fields: impl Iterator<Item = S>) -> String {
    let mut line = String::new();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            line.push(',');
        }
        let f = f.as_ref();
        if f.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    line.push_str("\r\n");
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting() {
        assert_eq!(
            csv_line(["plain", "a,b", "say \"hi\"", "two\nlines", ""].iter()),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\r\n"
        );
    }

    #[test]
    fn cells_follow_paths() {
        let row = serde_json::json!({"bbox": [1.5, 2, 3, 4], "n": null, "t": true, "o": {"a": 1}});
        assert_eq!(cell(&row, "bbox.0"), "1.5");
        assert_eq!(cell(&row, "bbox.3"), "4");
        assert_eq!(cell(&row, "n"), "");
        assert_eq!(cell(&row, "missing"), "");
        assert_eq!(cell(&row, "t"), "true");
        assert_eq!(cell(&row, "o"), "{\"a\":1}");
    }

    #[test]
    fn formulas_are_defused_but_numbers_are_not() {
        let row = serde_json::json!({"c": "=HYPERLINK(\"http://x\")", "d": "@SUM(A1)", "n": -1.5, "s": "a=b"});
        assert_eq!(cell(&row, "c"), "'=HYPERLINK(\"http://x\")");
        assert_eq!(cell(&row, "d"), "'@SUM(A1)");
        assert_eq!(cell(&row, "n"), "-1.5");
        assert_eq!(cell(&row, "s"), "a=b");
    }
}
