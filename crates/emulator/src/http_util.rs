//! GitHub-shaped JSON responses and errors, body parsing with limits, paging.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

/// GitHub's generic documentation link for REST errors.
pub(crate) const DOCS_URL: &str = "https://docs.github.com/rest";
pub(crate) const RATE_LIMIT_DOCS_URL: &str =
    "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";
pub(crate) const SECONDARY_RATE_LIMIT_DOCS_URL: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits";

/// Largest JSON body the REST API and the admin API accept.
pub(crate) const REST_BODY_LIMIT: usize = 1024 * 1024;

/// An error answered the way GitHub answers errors:
/// `{message, documentation_url, status}` plus `errors` for 422.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub documentation_url: &'static str,
    pub errors: Option<Value>,
    pub headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            documentation_url: DOCS_URL,
            errors: None,
            headers: Vec::new(),
        }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found")
    }

    pub fn bad_credentials() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Bad credentials")
    }

    pub fn requires_authentication() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Requires authentication")
    }

    pub fn problems_parsing_json() -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Problems parsing JSON")
    }

    /// 422 with `errors` as a list of strings (`validation-error-simple`).
    pub fn validation_simple(message: impl Into<String>, errors: Vec<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        e.errors = Some(Value::from(errors));
        e
    }

    /// 422 with `errors` as objects (`validation-error`).
    pub fn validation(message: impl Into<String>, errors: Vec<Value>) -> ApiError {
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        e.errors = Some(Value::from(errors));
        e
    }

    pub fn with_docs(mut self, url: &'static str) -> ApiError {
        self.documentation_url = url;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "message": self.message,
            "documentation_url": self.documentation_url,
            "status": self.status.as_u16().to_string(),
        });
        if let (Some(errors), Some(map)) = (&self.errors, body.as_object_mut()) {
            map.insert("errors".into(), errors.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json_response(self.status, &self.body());
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                response.headers_mut().insert(name.clone(), v);
            }
        }
        response
    }
}

/// A JSON response with GitHub's content type.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(crate) fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// Parses a JSON body; an empty body is `null`. Bad JSON is GitHub's 400.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes).map_err(|_| ApiError::problems_parsing_json())
}

/// GitHub's timestamp form: `2021-09-13T02:21:13Z`.
pub(crate) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Timestamp with milliseconds, as on registration tokens.
pub(crate) fn timestamp_millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// `per_page` and `page` as GitHub reads them: per_page defaults to 30 and is
/// capped at 100; page starts at 1. Values that are not numbers fall back to
/// the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paging {
    pub per_page: usize,
    pub page: usize,
}

impl Paging {
    pub fn from_query(query: &HashMap<String, String>) -> Paging {
        let per_page = query
            .get("per_page")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|n| if n == 0 { 30 } else { n.min(100) })
            .unwrap_or(30);
        let page = query
            .get("page")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .map(|n| n.max(1))
            .unwrap_or(1);
        Paging { per_page, page }
    }

    /// The items of this page and the number of the last page (at least 1).
    pub fn slice<T: Clone>(&self, items: &[T]) -> (Vec<T>, usize) {
        let last = items.len().div_ceil(self.per_page).max(1);
        let start = (self.page - 1).saturating_mul(self.per_page);
        let page = items
            .iter()
            .skip(start)
            .take(self.per_page)
            .cloned()
            .collect();
        (page, last)
    }

    /// GitHub's `Link` header (`prev`, `next`, `last`, `first`), or `None`
    /// when everything fits on one page. `url` has no query; `query` holds
    /// the request's parameters, whose `page` is replaced.
    pub fn link_header(
        &self,
        url: &str,
        query: &HashMap<String, String>,
        last: usize,
    ) -> Option<String> {
        if last <= 1 && self.page <= 1 {
            return None;
        }
        let mut keys: Vec<&String> = query.keys().filter(|k| k.as_str() != "page").collect();
        keys.sort();
        let link = |page: usize, rel: &str| {
            let mut q: Vec<String> = keys
                .iter()
                .map(|k| format!("{}={}", encode_component(k), encode_component(&query[*k])))
                .collect();
            q.push(format!("page={page}"));
            format!("<{url}?{}>; rel=\"{rel}\"", q.join("&"))
        };
        let mut parts = Vec::new();
        if self.page > 1 {
            parts.push(link((self.page - 1).min(last), "prev"));
        }
        if self.page < last {
            parts.push(link(self.page + 1, "next"));
            parts.push(link(last, "last"));
        }
        if self.page > 1 {
            parts.push(link(1, "first"));
        }
        Some(parts.join(", "))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn paging_defaults_and_caps() {
        assert_eq!(
            Paging::from_query(&q(&[])),
            Paging {
                per_page: 30,
                page: 1
            }
        );
        assert_eq!(Paging::from_query(&q(&[("per_page", "500")])).per_page, 100);
        assert_eq!(Paging::from_query(&q(&[("per_page", "x")])).per_page, 30);
        assert_eq!(Paging::from_query(&q(&[("page", "0")])).page, 1);
    }

    #[test]
    fn link_header_like_github() {
        let p = Paging {
            per_page: 2,
            page: 2,
        };
        let items: Vec<u32> = (0..5).collect();
        let (page, last) = p.slice(&items);
        assert_eq!(page, vec![2, 3]);
        assert_eq!(last, 3);
        let link = p
            .link_header(
                "http://h/x",
                &q(&[("per_page", "2"), ("name", "a b")]),
                last,
            )
            .unwrap();
        assert_eq!(
            link,
            "<http://h/x?name=a%20b&per_page=2&page=1>; rel=\"prev\", \
             <http://h/x?name=a%20b&per_page=2&page=3>; rel=\"next\", \
             <http://h/x?name=a%20b&per_page=2&page=3>; rel=\"last\", \
             <http://h/x?name=a%20b&per_page=2&page=1>; rel=\"first\""
        );
        let one = Paging {
            per_page: 30,
            page: 1,
        };
        assert_eq!(one.link_header("http://h/x", &q(&[]), 1), None);
    }

    #[test]
    fn errors_have_github_shape() {
        let e = ApiError::validation_simple("Invalid request.", vec!["labels".into()]);
        let body = e.body();
        assert_eq!(body["message"], "Invalid request.");
        assert_eq!(body["documentation_url"], DOCS_URL);
        assert_eq!(body["status"], "422");
        assert_eq!(body["errors"][0], "labels");
        assert!(ApiError::not_found().body().get("errors").is_none());
    }
}
