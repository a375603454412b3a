//! A minimal Confluent-compatible schema registry for the `avro-confluent` end-to-end
//! tests, served on 127.0.0.1 from a thread of the test.
//!
//! No schema registry installs from the package registries this project reaches (the
//! Confluent one is a JVM service outside them; Karapace is not published on PyPI), so the
//! tests run this one. It keeps Confluent's semantics for what Meltwater and the tests
//! use:
//!
//! - `POST /subjects/{subject}/versions` with `{"schema": "<text>"}`: a schema is
//!   identified by its parsed JSON; one already registered (under any subject) keeps its
//!   global id, one new to the subject becomes its next version, registering a subject's
//!   existing schema again changes nothing; answers `{"id": N}`. A body that is not a JSON
//!   object with a string `schema` that parses as JSON is 422 (`error_code` 42201).
//! - `GET /schemas/ids/{id}`: `{"schema": "<text>"}`, or 404 with `error_code` 40403.
//! - `GET /subjects`, `GET /subjects/{subject}/versions`,
//!   `GET /subjects/{subject}/versions/{version|latest}` (404 / 40401 for an unknown
//!   subject, 40402 for an unknown version).
//!
//! Not implemented: compatibility checks, deletes, schema references, modes and configs.
//! Every request is logged (`METHOD path`) for the tests to count.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

#[derive(Default)]
struct State {
    /// Schema text by id (ids from 1).
    schemas: Vec<String>,
    /// Versions of each subject: schema ids, version `i + 1` at `i`.
    subjects: BTreeMap<String, Vec<u32>>,
    log: Vec<String>,
}

impl State {
    fn id_of(&self, parsed: &Value) -> Option<u32> {
        self.schemas
            .iter()
            .position(|s| serde_json::from_str::<Value>(s).ok().as_ref() == Some(parsed))
            .map(|i| i as u32 + 1)
    }
}

/// A running registry; stopped on drop.
pub struct SchemaRegistry {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl Drop for SchemaRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Response = (u16, Value);

fn not_found(code: u32, message: String) -> Response {
    (404, json!({"error_code": code, "message": message}))
}

fn handle(state: &Mutex<State>, method: &str, path: &str, body: &[u8]) -> Response {
    let mut st = state.lock().expect("registry state");
    st.log.push(format!("{method} {path}"));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["schemas", "ids", id]) => {
            match id
                .parse::<usize>()
                .ok()
                .and_then(|i| st.schemas.get(i.wrapping_sub(1)))
            {
                Some(s) => (200, json!({ "schema": s })),
                None => not_found(40403, format!("Schema {id} not found")),
            }
        }
        ("GET", ["subjects"]) => (200, json!(st.subjects.keys().collect::<Vec<_>>())),
        ("GET", ["subjects", subject, "versions"]) => match st.subjects.get(*subject) {
            Some(v) => (200, json!((1..=v.len()).collect::<Vec<_>>())),
            None => not_found(40401, format!("Subject '{subject}' not found.")),
        },
        ("GET", ["subjects", subject, "versions", version]) => {
            let Some(versions) = st.subjects.get(*subject) else {
                return not_found(40401, format!("Subject '{subject}' not found."));
            };
            let index = match *version {
                "latest" => versions.len().checked_sub(1),
                v => v.parse::<usize>().ok().and_then(|v| v.checked_sub(1)),
            };
            match index.and_then(|i| versions.get(i).map(|id| (i, *id))) {
                Some((i, id)) => (
                    200,
                    json!({
                        "subject": subject, "version": i + 1, "id": id,
                        "schema": st.schemas[id as usize - 1],
                    }),
                ),
                None => not_found(40402, format!("Version {version} not found.")),
            }
        }
        ("POST", ["subjects", subject, "versions"]) => {
            let schema = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|b| b.get("schema").and_then(|s| s.as_str()).map(String::from));
            let parsed = schema
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok());
            let (Some(schema), Some(parsed)) = (schema, parsed) else {
                return (
                    422,
                    json!({"error_code": 42201, "message": "Invalid schema"}),
                );
            };
            let id = match st.id_of(&parsed) {
                Some(id) => id,
                None => {
                    st.schemas.push(schema);
                    st.schemas.len() as u32
                }
            };
            let versions = st.subjects.entry(subject.to_string()).or_default();
            if !versions.contains(&id) {
                versions.push(id);
            }
            (200, json!({ "id": id }))
        }
        _ => not_found(404, format!("no endpoint {method} {path}")),
    }
}

fn serve(state: &Mutex<State>, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or("").to_string();
    let path = words.next().unwrap_or("").to_string();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let path = percent_decode(&path);
    let (status, answer) = handle(state, &method, &path, &body);
    let text = answer.to_string();
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Unprocessable Entity",
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl SchemaRegistry {
    /// Starts a registry on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the registry");
        let port = listener.local_addr().expect("its address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(s) = stream {
                        let state = state.clone();
                        std::thread::spawn(move || {
                            let _ = serve(&state, s);
                        });
                    }
                }
            })
        };
        Self {
            url: format!("http://127.0.0.1:{port}"),
            state,
            stop,
            thread: Some(thread),
            port,
        }
    }

    /// The requests served so far, `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("registry state").log.clone()
    }

    /// The schema ids registered under `subject`, by version.
    pub fn versions(&self, subject: &str) -> Vec<u32> {
        self.state
            .lock()
            .expect("registry state")
            .subjects
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    /// The text of schema `id`.
    pub fn schema(&self, id: u32) -> Option<String> {
        self.state
            .lock()
            .expect("registry state")
            .schemas
            .get(id as usize - 1)
            .cloned()
    }
}
