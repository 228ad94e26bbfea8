//! A small OpenAPI 3.0 response validator over GitHub's (trimmed) description
//! in `fixtures/github/openapi-runners.yaml`. It supports what that fragment
//! uses: `$ref`, `type`, `nullable`, `enum`, `required`, `properties`,
//! `additionalProperties`, `items`, `minItems`/`maxItems`, `allOf`/`oneOf`/
//! `anyOf`, and the `date-time` format. Other formats are not checked.

use serde_json::Value;

pub struct OpenApi {
    doc: Value,
}

/// How a response was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// Against the status the operation declares.
    Declared,
    /// An error status the operation does not declare, checked against
    /// GitHub's generic `basic-error` (any endpoint can answer 401, 403 for
    /// rate limits, 5xx...).
    GenericError,
}

impl OpenApi {
    pub fn load() -> OpenApi {
        let text = proxy_runner_test_support::fixture_text("github/openapi-runners.yaml");
        let doc: Value = serde_yaml::from_str(&text).expect("the OpenAPI fixture is valid YAML");
        OpenApi { doc }
    }

    /// The operation for `method` on a concrete `path` (no query), and its
    /// path template. Literal segments beat `{parameters}`.
    pub fn operation(&self, method: &str, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let paths = self.doc.get("paths")?.as_object()?;
        let mut best: Option<(usize, &str, &Value)> = None;
        for (template, item) in paths {
            let parts: Vec<&str> = template.split('/').collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut literal = 0;
            let matches = parts.iter().zip(&segments).all(|(t, s)| {
                if t.starts_with('{') && t.ends_with('}') {
                    !s.is_empty()
                } else if t == s {
                    literal += 1;
                    true
                } else {
                    false
                }
            });
            let Some(op) = item.get(method.to_ascii_lowercase()) else {
                continue;
            };
            if matches && best.is_none_or(|(l, _, _)| literal > l) {
                best = Some((literal, template.as_str(), op));
            }
        }
        best.map(|(_, t, op)| (t, op))
    }

    /// Checks one response of the emulator against the description.
    pub fn check_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &[u8],
    ) -> Result<Coverage, String> {
        let (template, op) = self
            .operation(method, path)
            .ok_or_else(|| format!("{method} {path} is not in the OpenAPI fragment"))?;
        let declared = op
            .get("responses")
            .and_then(|r| r.get(status.to_string()).or_else(|| r.get("default")));
        let (response, coverage) = match declared {
            Some(r) => (self.resolve(r)?, Coverage::Declared),
            // not_found is GitHub's generic error response (basic-error).
            None if status >= 400 => (
                self.get("#/components/responses/not_found")?,
                Coverage::GenericError,
            ),
            None => {
                return Err(format!(
                    "{method} {template} does not declare status {status}"
                ));
            }
        };
        let schema = response
            .get("content")
            .and_then(|c| c.get("application/json"))
            .and_then(|c| c.get("schema"));
        match schema {
            None => {
                if body.is_empty() {
                    Ok(coverage)
                } else {
                    Err(format!(
                        "{method} {template} {status} declares no body but got {} bytes",
                        body.len()
                    ))
                }
            }
            Some(schema) => {
                let value: Value = serde_json::from_slice(body)
                    .map_err(|e| format!("{method} {template} {status}: body is not JSON: {e}"))?;
                if coverage == Coverage::GenericError
                    && !value.get("message").is_some_and(Value::is_string)
                {
                    return Err(format!(
                        "{method} {template} {status}: error without message"
                    ));
                }
                let mut errors = Vec::new();
                self.validate(schema, &value, "$", &mut errors);
                if errors.is_empty() {
                    Ok(coverage)
                } else {
                    Err(format!(
                        "{method} {template} {status}: {}",
                        errors.join("; ")
                    ))
                }
            }
        }
    }

    /// Checks `value` against a schema named by a `$ref`, e.g.
    /// `#/components/schemas/runner`.
    pub fn check_schema(&self, reference: &str, value: &Value) -> Result<(), String> {
        let mut errors = Vec::new();
        self.validate(
            &serde_json::json!({"$ref": reference}),
            value,
            "$",
            &mut errors,
        );
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// A value of the description by `$ref`.
    pub fn get(&self, reference: &str) -> Result<&Value, String> {
        let pointer = reference
            .strip_prefix('#')
            .ok_or_else(|| format!("only local references are supported: {reference}"))?;
        self.doc
            .pointer(pointer)
            .ok_or_else(|| format!("unresolved reference {reference}"))
    }

    fn resolve<'a>(&'a self, mut v: &'a Value) -> Result<&'a Value, String> {
        for _ in 0..32 {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => v = self.get(r)?,
                None => return Ok(v),
            }
        }
        Err("reference cycle".into())
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("{at}: {e}"));
                return;
            }
        };
        let nullable = schema.get("nullable").and_then(Value::as_bool) == Some(true);
        if value.is_null() {
            if nullable {
                return;
            }
            let constrained = ["type", "allOf", "oneOf", "anyOf", "enum", "properties"]
                .iter()
                .any(|k| schema.get(*k).is_some());
            if constrained {
                errors.push(format!("{at}: null is not allowed (not nullable)"));
            }
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, value, at, errors);
            }
        }
        for (key, exactly_one) in [("oneOf", true), ("anyOf", false)] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let matching = options
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        self.validate(s, value, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = if exactly_one {
                    matching == 1
                } else {
                    matching >= 1
                };
                if !ok {
                    errors.push(format!("{at}: {matching} of the {key} options match"));
                }
            }
        }
        if let Some(kind) = schema.get("type").and_then(Value::as_str) {
            let ok = match kind {
                "object" => value.is_object(),
                "array" => value.is_array(),
                "string" => value.is_string(),
                "boolean" => value.is_boolean(),
                "number" => value.is_number(),
                "integer" => {
                    value.is_i64()
                        || value.is_u64()
                        || value.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                other => {
                    errors.push(format!("{at}: unknown type {other} in the schema"));
                    return;
                }
            };
            if !ok {
                errors.push(format!("{at}: expected {kind}, got {value}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
            && !allowed.contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
        if let (Some("date-time"), Some(s)) =
            (schema.get("format").and_then(Value::as_str), value.as_str())
            && chrono::DateTime::parse_from_rfc3339(s).is_err()
        {
            errors.push(format!("{at}: {s:?} is not a date-time"));
        }
        if let Some(obj) = value.as_object() {
            if let Some(required) = schema.get("required").and_then(Value::as_array) {
                for key in required.iter().filter_map(Value::as_str) {
                    if !obj.contains_key(key) {
                        errors.push(format!("{at}: missing required property {key:?}"));
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (key, v) in obj {
                match props.and_then(|p| p.get(key)) {
                    Some(s) => self.validate(s, v, &format!("{at}.{key}"), errors),
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            errors.push(format!("{at}: unexpected property {key:?}"))
                        }
                        Some(s @ Value::Object(_)) => {
                            self.validate(s, v, &format!("{at}.{key}"), errors)
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(items) = value.as_array() {
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errors.push(format!("{at}: fewer than {min} items"));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && (items.len() as u64) > max
            {
                errors.push(format!("{at}: more than {max} items"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    self.validate(item_schema, item, &format!("{at}[{i}]"), errors);
                }
            }
        }
    }
}
