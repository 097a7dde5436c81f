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

    /// Sends the request and checks the answer against `openapi.json`.
    pub async fn send(self, addr: SocketAddr) -> anyhow::Result<Reply> {
        let path = self.target.split('?').next().unwrap_or("").to_owned();
        let method = self.method.to_owned();
        let reply = timeout(WAIT, self.send_raw(addr))
            .await
            .context("HTTP request timed out")??;
        spec()
            .check(&method, &path, &reply)
            .with_context(|| format!("{method} {path} answered {reply:?}"))?;
        Ok(reply)
    }

    async fn send_raw(self, addr: SocketAddr) -> anyhow::Result<Reply> {
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
