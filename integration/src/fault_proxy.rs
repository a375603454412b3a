//! An HTTP proxy between Meltwater and an Iceberg REST catalog that loses the answers to
//! chosen commits, so tests can see what the committer does when it cannot know whether
//! a commit landed (docs/design/iceberg-commits.md §3.3).
//!
//! It listens on 127.0.0.1 (a free port) and forwards every request unchanged to the
//! catalog, one request per connection (both sides are told `Connection: close`, so no
//! client reuses a connection the proxy closes). A commit is a
//! `POST …/namespaces/{ns}/tables/{table}`; [`FaultProxy::fail_commit`] arms a [`Fault`]
//! for a later commit to one table, and [`FaultProxy::take_commits`] lists the commits
//! the proxy saw and what it did with each. Only plain HTTP/1.1 with `Content-Length`
//! bodies is understood: what Meltwater's HTTP client sends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to an armed commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward the commit, let the catalog apply it, then answer the client 503: the
    /// commit landed but the client cannot know.
    LoseAnswer,
    /// Forward the commit, let the catalog apply it, then close the connection without
    /// an answer.
    DropAfterForward,
    /// Answer 503 without forwarding: nothing was applied.
    RefuseUnforwarded,
}

/// A commit the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCommit {
    /// `namespace.table`.
    pub table: String,
    /// The fault applied to it, if it was armed.
    pub fault: Option<Fault>,
    /// The catalog's status code when the commit was forwarded.
    pub upstream_status: Option<u16>,
}

struct Armed {
    table: String,
    /// Commits to `table` to let through before this one.
    skip: usize,
    fault: Fault,
}

#[derive(Default)]
struct State {
    armed: Vec<Armed>,
    seen: Vec<SeenCommit>,
}

/// A running proxy, stopped when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: use it as the catalog's `uri`.
    pub uri: String,
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// How long the proxy waits on either side before giving up on a request.
const IO_TIMEOUT: Duration = Duration::from_secs(90);

impl FaultProxy {
    /// A proxy in front of the catalog at `upstream_uri` (`http://127.0.0.1:<port>`).
    pub fn start(upstream_uri: &str) -> Self {
        let upstream = upstream_uri
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("the proxy forwards plain http://, not {upstream_uri}"))
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let state = state.clone();
                    let upstream = upstream.clone();
                    std::thread::spawn(move || serve(client, &upstream, &state));
                }
            })
        };
        Self {
            uri: format!("http://127.0.0.1:{port}"),
            port,
            state,
            stop,
            accept: Some(accept),
        }
    }

    /// Applies `fault` to the commit to `table` (`namespace.table`) that comes after
    /// `skip` others to it. Faults armed for one table apply in the order armed.
    pub fn fail_commit(&self, table: &str, skip: usize, fault: Fault) {
        self.state.lock().unwrap().armed.push(Armed {
            table: table.to_string(),
            skip,
            fault,
        });
    }

    /// The commits to `table` seen since the last call, oldest first (forgotten here).
    pub fn take_commits(&self, table: &str) -> Vec<SeenCommit> {
        let mut state = self.state.lock().unwrap();
        let (taken, kept) = std::mem::take(&mut state.seen)
            .into_iter()
            .partition(|c| c.table == table);
        state.seen = kept;
        taken
    }

    /// Faults armed but not applied yet (`table`, fault).
    pub fn pending_faults(&self) -> Vec<(String, Fault)> {
        self.state
            .lock()
            .unwrap()
            .armed
            .iter()
            .map(|a| (a.table.clone(), a.fault))
            .collect()
    }
}

/// `namespace.table` when `path` is a table's commit endpoint
/// (`/v1[/prefix…]/namespaces/{ns}/tables/{table}`).
fn commit_target(method: &str, path: &str) -> Option<String> {
    if method != "POST" {
        return None;
    }
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [.., "namespaces", ns, "tables", table] => Some(format!("{ns}.{table}")),
        _ => None,
    }
}

/// The fault armed for the next commit to `table`, if any (counting this commit).
fn next_fault(state: &Mutex<State>, table: &str) -> Option<Fault> {
    let mut state = state.lock().unwrap();
    let index = state.armed.iter().position(|a| a.table == table)?;
    let armed = &mut state.armed[index];
    if armed.skip > 0 {
        armed.skip -= 1;
        return None;
    }
    Some(state.armed.remove(index).fault)
}

/// One request read from a client: its head (without the connection headers) and body.
struct Request {
    method: String,
    path: String,
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_request(client: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(client);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request_line = line.trim_end().to_string();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut head = vec![request_line.clone()];
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "content-length" => {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("bad Content-Length in {header}")))?
            }
            "transfer-encoding" => {
                return Err(std::io::Error::other(format!(
                    "the proxy reads Content-Length bodies only: {request_line}: {header}"
                )))
            }
            "connection" | "keep-alive" => continue,
            _ => {}
        }
        head.push(header.to_string());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        head,
        body,
    })
}

/// Sends `request` to the catalog and reads its whole answer (it closes the connection).
fn forward(request: &Request, upstream: &str) -> std::io::Result<Vec<u8>> {
    let mut server = TcpStream::connect(upstream)?;
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut bytes = request.head.join("\r\n").into_bytes();
    bytes.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    bytes.extend_from_slice(&request.body);
    server.write_all(&bytes)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    Ok(answer)
}

/// The status code of an HTTP answer.
fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn unavailable(message: &str) -> Vec<u8> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "ServiceUnavailableException", "code": 503}
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn bad_gateway(message: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{message}",
        message.len()
    )
    .into_bytes()
}

/// Serves one client connection: one request, one answer (or none), then closes it.
fn serve(mut client: TcpStream, upstream: &str, state: &Mutex<State>) {
    let _ = client.set_read_timeout(Some(IO_TIMEOUT));
    let Ok(request) = read_request(&client) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let target = commit_target(&request.method, &request.path);
    let fault = target.as_deref().and_then(|t| next_fault(state, t));
    let answer = if fault == Some(Fault::RefuseUnforwarded) {
        None
    } else {
        Some(forward(&request, upstream))
    };
    if let Some(table) = target {
        let upstream_status = match &answer {
            Some(Ok(a)) => status_of(a),
            _ => None,
        };
        state.lock().unwrap().seen.push(SeenCommit {
            table,
            fault,
            upstream_status,
        });
    }
    let reply = match (fault, answer) {
        (Some(Fault::DropAfterForward), _) => None,
        (Some(Fault::LoseAnswer), _) => Some(unavailable("the proxy lost the catalog's answer")),
        (Some(Fault::RefuseUnforwarded), _) => Some(unavailable("the proxy did not forward it")),
        (None, Some(Ok(answer))) => Some(answer),
        (None, Some(Err(e))) => Some(bad_gateway(&format!(
            "the proxy cannot reach {upstream}: {e}"
        ))),
        (None, None) => None,
    };
    if let Some(reply) = reply {
        let _ = client.write_all(&reply);
        let _ = client.flush();
    }
    let _ = client.shutdown(Shutdown::Both);
}
