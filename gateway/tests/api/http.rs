//! A raw HTTP/1.1 client, and a checker of answers against the OpenAPI document.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::util::WAIT;

/// The API key the test servers use.
pub const KEY: &str = "test-api-key-0123456789";

/// One HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = self.text();
        body.truncate(500);
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &body)
            .finish()
    }
}

impl Reply {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error.code` of an error answer.
    pub fn error_code(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A request; `send` performs it and checks the answer against the document.
pub struct Req<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce this Content-Length instead of the body's (and send only the body).
    pub declared_len: Option<usize>,
    /// Send the body with chunked transfer encoding.
    pub chunked: bool,
}

impl<'a> Req<'a> {
    pub fn new(method: &'a str, target: &'a str) -> Self {
        Self {
            method,
            target,
            headers: Vec::new(),
            body: Vec::new(),
            declared_len: None,
            chunked: false,
        }
    }

    /// With `Authorization: Bearer KEY`.
    pub fn authed(method: &'a str, target: &'a str) -> Self {
        Self::new(method, target).header("authorization", &format!("Bearer {KEY}"))
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, body: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Sends the body but announces `len` bytes in Content-Length.
    pub async fn send_declared(mut self, addr: SocketAddr, len: usize) -> anyhow::Result<Reply> {
        self.declared_len = Some(len);
        self.send(addr).await
    }

    /// Sends the request and checks the answer against `openapi.json`: the answer
    /// is documented, and a request the document calls valid is not refused as
    /// bad (400), nor an invalid one accepted (2xx), as schemathesis checks.
    pub async fn send(self, addr: SocketAddr) -> anyhow::Result<Reply> {
        let (path, query) = self.target.split_once('?').unwrap_or((self.target, ""));
        let (path, query, method) = (path.to_owned(), query.to_owned(), self.method.to_owned());
        let authorized = self.headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("authorization") && *value == format!("Bearer {KEY}")
        });
        let body = self.body.clone();
        let reply = timeout(WAIT, self.send_raw(addr))
            .await
            .context("HTTP request timed out")??;
        spec()
            .check(&method, &path, &reply)
            .with_context(|| format!("{method} {path} answered {reply:?}"))?;
        spec()
            .check_request(&method, &path, &query, &body, authorized, reply.status)
            .with_context(|| format!("{method} {path}?{query} answered {reply:?}"))?;
        Ok(reply)
    }

    /// Sends the request with no check against `openapi.json`: for the pages
    /// outside the API's document (`/dashboard`).
    pub async fn send_raw(self, addr: SocketAddr) -> anyhow::Result<Reply> {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n",
            self.method, self.target
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.chunked {
            head.push_str("transfer-encoding: chunked\r\n\r\n");
        } else {
            let len = self.declared_len.unwrap_or(self.body.len());
            head.push_str(&format!("content-length: {len}\r\n\r\n"));
        }
        stream.write_all(head.as_bytes()).await?;
        // The server may answer (413) and close before reading the whole body.
        let write = async {
            if self.chunked {
                for chunk in self.body.chunks(64 * 1024) {
                    stream
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await?;
                    stream.write_all(chunk).await?;
                    stream.write_all(b"\r\n").await?;
                }
                stream.write_all(b"0\r\n\r\n").await
            } else {
                stream.write_all(&self.body).await
            }
        };
        let _ = write.await;
        let mut raw = Vec::new();
        // A reset after the answer arrived (unread body) still leaves the answer.
        let _ = stream.read_to_end(&mut raw).await;
        parse(&raw)
    }
}

fn parse(raw: &[u8]) -> anyhow::Result<Reply> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow!(
                "no complete HTTP head in {:?}",
                String::from_utf8_lossy(raw)
            )
        })?;
    let head = std::str::from_utf8(&raw[..end])?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    })
}

/// The OpenAPI document, read from the file the server embeds.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = include_str!("../../openapi.json");
        Spec(serde_json::from_str(text).expect("openapi.json is JSON"))
    })
}

pub struct Spec(pub Value);

impl Spec {
    /// Checks that `method path` is documented with `reply.status`, and that a JSON
    /// body matches the declared schema (types, required fields, enums).
    pub fn check(&self, method: &str, path: &str, reply: &Reply) -> anyhow::Result<()> {
        let status = reply.status.to_string();
        let path = path.split('?').next().unwrap_or(path);
        let item = self.0["paths"].get(path).or_else(|| {
            // A templated path (`/api/rooms/{id}`) matches one segment per
            // `{name}`.
            self.0["paths"]
                .as_object()?
                .iter()
                .find_map(|(template, item)| {
                    let (t, p): (Vec<&str>, Vec<&str>) =
                        (template.split('/').collect(), path.split('/').collect());
                    let same = t.len() == p.len()
                        && t.iter()
                            .zip(&p)
                            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()));
                    same.then_some(item)
                })
        });
        let response = match item {
            None if path.starts_with("/api") => {
                ensure!(status == "404", "undocumented API path answered {status}");
                self.component_response("NotFound")
            }
            None => bail!("{path} is not documented in openapi.json"),
            Some(item) => match item.get(method.to_ascii_lowercase()) {
                None => {
                    ensure!(
                        status == "405",
                        "{method} is not documented on {path}, yet answered {status}"
                    );
                    ensure!(reply.headers.contains_key("allow"), "405 without Allow");
                    self.component_response("MethodNotAllowed")
                }
                Some(op) => {
                    let declared = op["responses"].get(&status).ok_or_else(|| {
                        anyhow!("status {status} of {method} {path} is not documented")
                    })?;
                    self.resolve(declared)
                }
            },
        };
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            return Ok(());
        };
        let got_type = reply
            .headers
            .get("content-type")
            .cloned()
            .unwrap_or_default();
        let (media, body) = content
            .iter()
            .find(|(media, _)| got_type.starts_with(media.as_str()))
            .ok_or_else(|| anyhow!("content-type {got_type:?} is not declared"))?;
        if media == "application/json" {
            let value: Value =
                serde_json::from_slice(&reply.body).context("a declared JSON body is not JSON")?;
            self.validate(&body["schema"], &value, "$")?;
        }
        Ok(())
    }

    /// Checks the answer's status against whether the document calls the request
    /// valid: 400 for a valid request, or a 2xx for an invalid one, is a
    /// disagreement. Requests without the key (where the operation needs it) and
    /// undocumented operations are not judged.
    pub fn check_request(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        authorized: bool,
        status: u16,
    ) -> anyhow::Result<()> {
        let Some(valid) = self.request_validity(method, path, query, body, authorized) else {
            return Ok(());
        };
        match valid {
            Ok(()) => ensure!(status != 400, "a request valid by openapi.json was refused"),
            Err(why) => ensure!(
                !(200..300).contains(&status),
                "a request openapi.json calls invalid was accepted: {why}"
            ),
        }
        Ok(())
    }

    /// Whether a request is valid by the document (`Err` says why not), or
    /// `None` when the document does not describe it or it is not authorized.
    pub fn request_validity(
        &self,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        authorized: bool,
    ) -> Option<Result<(), String>> {
        let op = self.operation(method, path)?;
        let secured = op
            .get("security")
            .unwrap_or(&self.0["security"])
            .as_array()
            .is_some_and(|s| !s.is_empty());
        if secured && !authorized {
            return None;
        }
        let query = chorus_gateway::protocol::Query::parse(query).ok()?;
        let check = || -> anyhow::Result<()> {
            for param in op["parameters"].as_array().into_iter().flatten() {
                let param = self.resolve(param);
                if param["in"] != "query" {
                    continue;
                }
                let name = param["name"].as_str().unwrap_or_default();
                let Some(text) = query.get(name) else {
                    ensure!(
                        param["required"] != true,
                        "missing query parameter `{name}`"
                    );
                    continue;
                };
                let schema = self.resolve(&param["schema"]);
                let value = match schema["type"].as_str() {
                    Some("integer") => match text.parse::<i128>() {
                        Ok(n) => Value::from(n as f64),
                        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
                            Value::from(f64::MAX)
                        }
                        Err(_) => bail!("`{name}` is not an integer: {text:?}"),
                    },
                    _ => Value::from(text),
                };
                // An integer sent as text: judged as the number it spells.
                let schema = if value.is_f64() {
                    let mut s = schema.clone();
                    s["type"] = "number".into();
                    s
                } else {
                    schema.clone()
                };
                self.validate(&schema, &value, &format!("query.{name}"))?;
            }
            if let Some(request_body) = op.get("requestBody") {
                let request_body = self.resolve(request_body);
                if body.is_empty() {
                    ensure!(request_body["required"] != true, "no body");
                } else {
                    // The document's extension: depth and string bounds on every body.
                    let limits = &self.0["x-json-limits"];
                    let limits = chorus_gateway::protocol::JsonLimits {
                        max_depth: limits["max-depth"].as_u64().unwrap_or(0) as usize,
                        max_string_bytes: limits["max-string-bytes"].as_u64().unwrap_or(0) as usize,
                    };
                    chorus_gateway::protocol::check_json(body, limits)
                        .map_err(|e| anyhow::anyhow!("body: {e}"))?;
                    let value: Value = serde_json::from_slice(body).context("body is not JSON")?;
                    let schema = &request_body["content"]["application/json"]["schema"];
                    self.validate(schema, &value, "body")?;
                }
            }
            Ok(())
        };
        Some(check().map_err(|e| format!("{e:#}")))
    }

    /// The operation `method path` (a template segment matches one segment).
    fn operation(&self, method: &str, path: &str) -> Option<&Value> {
        let paths = self.0["paths"].as_object()?;
        let item = paths.get(path).or_else(|| {
            paths.iter().find_map(|(template, item)| {
                let (t, p): (Vec<&str>, Vec<&str>) =
                    (template.split('/').collect(), path.split('/').collect());
                let same = t.len() == p.len()
                    && t.iter()
                        .zip(&p)
                        .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()));
                same.then_some(item)
            })
        })?;
        item.get(method.to_ascii_lowercase())
    }

    fn component_response(&self, name: &str) -> &Value {
        &self.0["components"]["responses"][name]
    }

    fn resolve<'a>(&'a self, node: &'a Value) -> &'a Value {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.trim_start_matches('#');
                self.resolve(self.0.pointer(pointer).expect("a $ref that resolves"))
            }
            None => node,
        }
    }

    fn validate(&self, schema: &Value, value: &Value, at: &str) -> anyhow::Result<()> {
        let schema = self.resolve(schema);
        if value.is_null() && schema["nullable"] == true {
            return Ok(());
        }
        let ok = match schema["type"].as_str() {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_u64() || value.is_i64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            _ => true,
        };
        ensure!(ok, "{at}: expected {}, got {value}", schema["type"]);
        if let Some(text) = value.as_str() {
            let chars = text.chars().count() as u64;
            if let Some(min) = schema["minLength"].as_u64() {
                ensure!(chars >= min, "{at}: shorter than {min} characters");
            }
            if let Some(max) = schema["maxLength"].as_u64() {
                ensure!(chars <= max, "{at}: longer than {max} characters");
            }
            // The document's extension: a bound on the UTF-8 bytes (the server's
            // limits are in bytes; `maxLength` counts characters).
            if let Some(max) = schema["x-max-bytes"].as_u64() {
                ensure!(text.len() as u64 <= max, "{at}: longer than {max} bytes");
            }
            if let Some(pattern) = schema["pattern"].as_str() {
                ensure!(
                    pattern_matches(pattern, text),
                    "{at}: {text:?} does not match {pattern}"
                );
            }
        }
        if let Some(n) = value.as_f64() {
            if let Some(min) = schema["minimum"].as_f64() {
                ensure!(n >= min, "{at}: {value} is under the minimum {min}");
            }
            if let Some(max) = schema["maximum"].as_f64() {
                ensure!(n <= max, "{at}: {value} is over the maximum {max}");
            }
        }
        if let Some(not) = schema.get("not") {
            ensure!(
                self.validate(not, value, at).is_err(),
                "{at}: {value} matches what `not` excludes"
            );
        }
        if let Some(any) = schema["anyOf"].as_array() {
            ensure!(
                any.iter().any(|s| self.validate(s, value, at).is_ok()),
                "{at}: {value} matches nothing of `anyOf`"
            );
        }
        if let Some(allowed) = schema["enum"].as_array() {
            ensure!(
                allowed.contains(value),
                "{at}: {value} is not one of {allowed:?}"
            );
        }
        if let Some(obj) = value.as_object() {
            for field in schema["required"].as_array().into_iter().flatten() {
                let field = field.as_str().unwrap_or_default();
                ensure!(obj.contains_key(field), "{at}: missing required `{field}`");
            }
            let props = schema["properties"].as_object();
            for (name, v) in obj {
                match props.and_then(|p| p.get(name)) {
                    Some(s) => self.validate(s, v, &format!("{at}.{name}"))?,
                    None => match schema.get("additionalProperties") {
                        Some(Value::Bool(false)) => bail!("{at}: undeclared `{name}`"),
                        Some(s @ Value::Object(_)) => {
                            self.validate(s, v, &format!("{at}.{name}"))?
                        }
                        _ => {}
                    },
                }
            }
        }
        if let Some(items) = value.as_array() {
            for (i, v) in items.iter().enumerate() {
                self.validate(&schema["items"], v, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// Whether `text` matches a JSON Schema `pattern`. Only the forms the document
/// uses are understood, `^[class]+$` and `^[^class]+$` (a class of characters,
/// `a-z` ranges and `\xHH` escapes) and `^prefix` (plain characters); any other
/// pattern panics, so a new one makes this checker grow with it.
fn pattern_matches(pattern: &str, text: &str) -> bool {
    if let Some(prefix) = pattern.strip_prefix('^') {
        if prefix
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ':' | '_' | '-'))
        {
            return text.starts_with(prefix);
        }
    }
    let class = pattern
        .strip_prefix("^[")
        .and_then(|p| p.strip_suffix("]+$"))
        .unwrap_or_else(|| panic!("pattern {pattern:?} is not of the form ^[class]+$"));
    let (negated, class) = match class.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, class),
    };
    // Characters of the class, `\xHH` decoded.
    let mut chars = Vec::new();
    let mut rest = class;
    while let Some(c) = rest.chars().next() {
        if let Some(hex) = rest.strip_prefix("\\x") {
            let code = u32::from_str_radix(&hex[..2], 16).expect("\\xHH");
            chars.push(char::from_u32(code).expect("a char"));
            rest = &hex[2..];
        } else {
            assert_ne!(
                c, '\\',
                "escapes other than \\xHH in {pattern:?} are not understood"
            );
            chars.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            ranges.push((chars[i], chars[i + 2]));
            i += 3;
        } else {
            ranges.push((chars[i], chars[i]));
            i += 1;
        }
    }
    !text.is_empty()
        && text
            .chars()
            .all(|c| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != negated)
}
