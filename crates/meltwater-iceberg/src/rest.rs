//! The commit endpoint of an Iceberg REST catalog (docs/design/iceberg-commits.md §3.2).
//!
//! `iceberg-catalog-rest`'s `RestCatalog` lists, loads and creates tables, but it commits
//! only a `TableCommit`, which nothing outside the `iceberg` crate can build with its own
//! updates. So Meltwater sends `POST /v1/{prefix}/namespaces/{ns}/tables/{table}` itself
//! with the updates its snapshot producer built (`TableMetadataBuildResult::changes`) and
//! the requirements that make it a compare-and-swap (the table's uuid and the snapshot
//! `main` pointed at when the commit was built). The server decides atomically: 200 is
//! committed, 409 is a conflict (nothing applied), 5xx or a lost connection leave the
//! outcome unknown (the caller reloads and looks for its marker).
//!
//! The prefix and any server-side overrides come from `GET /v1/config` (with the
//! catalog's `warehouse`). Requests carry a static bearer `token`, or one obtained with the
//! OAuth2 client-credentials grant from `credential` (`client_id:client_secret`) at the
//! catalog's token endpoint, fetched again once when the server answers 401.

use std::collections::HashMap;
use std::time::Duration;

use iceberg::spec::TableMetadata;
use iceberg::{TableIdent, TableRequirement, TableUpdate};
use iceberg_catalog_rest::{CommitTableRequest, CommitTableResponse};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde::Deserialize;
use tokio::sync::{Mutex, OnceCell};

/// What the server said to one commit request.
#[derive(Debug)]
pub(crate) enum RestOutcome {
    Committed {
        metadata_location: String,
        metadata: Box<TableMetadata>,
    },
    Conflict(String),
    Unknown(String),
    Failed(String),
}

/// `GET /v1/config`'s answer.
#[derive(Debug, Default, Deserialize)]
struct ConfigResponse {
    #[serde(default)]
    defaults: HashMap<String, String>,
    #[serde(default)]
    overrides: HashMap<String, String>,
    #[serde(default, rename = "idempotency-key-lifetime")]
    idempotency_key_lifetime: Option<String>,
}

/// The catalog's settings once `/v1/config` has been merged in.
#[derive(Debug)]
struct Resolved {
    /// The base URI (the server may override it).
    uri: String,
    prefix: Option<String>,
    /// The server's defaults, the catalog's own properties over them, then the
    /// server's overrides (the order the REST client merges them in).
    props: HashMap<String, String>,
    idempotency: bool,
}

/// Commits to one REST catalog.
pub(crate) struct RestCommitter {
    client: Client,
    uri: String,
    warehouse: Option<String>,
    /// The catalog's own properties (auth, headers, storage).
    props: HashMap<String, String>,
    resolved: OnceCell<Resolved>,
    /// The bearer token: the static `token`, or the last one the OAuth2 grant gave.
    token: Mutex<Option<String>>,
}

impl std::fmt::Debug for RestCommitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestCommitter")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

/// Sends `request` and reads its 200 answer as JSON; anything else is an error naming
/// `what`, with the server's answer.
async fn json_ok<T: serde::de::DeserializeOwned>(
    request: RequestBuilder,
    what: &str,
) -> Result<T, String> {
    let response = request.send().await.map_err(|e| format!("{what}: {e}"))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| format!("{what}: {e}"))?;
    let text = || String::from_utf8_lossy(&body).into_owned();
    if status != StatusCode::OK {
        return Err(format!("{what}: {status}: {}", text()));
    }
    serde_json::from_slice(&body)
        .map_err(|e| format!("{what}: unexpected answer ({e}): {}", text()))
}

/// How long one commit request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl RestCommitter {
    pub(crate) fn new(
        uri: &str,
        warehouse: Option<&str>,
        props: HashMap<String, String>,
    ) -> Result<Self, String> {
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot set up an HTTP client: {e}"))?;
        let token = props.get("token").cloned();
        Ok(Self {
            client,
            uri: uri.trim_end_matches('/').to_string(),
            warehouse: warehouse.map(str::to_string),
            props,
            resolved: OnceCell::new(),
            token: Mutex::new(token),
        })
    }

    /// The catalog's properties with the server's `/v1/config` merged in (what the
    /// tables' `FileIO` is built from, before a table's own load `config`).
    pub(crate) async fn properties(&self) -> Result<HashMap<String, String>, String> {
        Ok(self.resolve().await?.props.clone())
    }

    async fn resolve(&self) -> Result<&Resolved, String> {
        self.resolved
            .get_or_try_init(|| async {
                let url = format!("{}/v1/config", self.uri);
                let mut request = self.client.get(&url);
                if let Some(w) = &self.warehouse {
                    request = request.query(&[("warehouse", w)]);
                }
                let request = self.authorized(request).await?;
                let config: ConfigResponse = json_ok(request, &format!("GET {url}")).await?;
                let mut props = config.defaults;
                props.extend(self.props.clone());
                props.extend(config.overrides);
                let uri = props
                    .get("uri")
                    .filter(|u| !u.is_empty())
                    .map(|u| u.trim_end_matches('/').to_string())
                    .unwrap_or_else(|| self.uri.clone());
                Ok(Resolved {
                    uri,
                    prefix: props.get("prefix").filter(|p| !p.is_empty()).cloned(),
                    props,
                    idempotency: config.idempotency_key_lifetime.is_some(),
                })
            })
            .await
    }

    /// `request` with the catalog's `header.*` headers and its bearer token (obtained
    /// first when only a credential is configured).
    async fn authorized(&self, mut request: RequestBuilder) -> Result<RequestBuilder, String> {
        for (k, v) in &self.props {
            if let Some(name) = k.strip_prefix("header.") {
                request = request.header(name, v);
            }
        }
        let mut token = self.token.lock().await;
        if token.is_none() && self.props.contains_key("credential") {
            *token = Some(self.fetch_token().await?);
        }
        if let Some(t) = token.as_ref() {
            request = request.bearer_auth(t);
        }
        Ok(request)
    }

    /// The OAuth2 client-credentials grant at `oauth2-server-uri` (default
    /// `{uri}/v1/oauth/tokens`).
    async fn fetch_token(&self) -> Result<String, String> {
        let credential = self.props.get("credential").cloned().unwrap_or_default();
        let endpoint = self
            .props
            .get("oauth2-server-uri")
            .cloned()
            .unwrap_or_else(|| format!("{}/v1/oauth/tokens", self.uri));
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            match credential.split_once(':') {
                Some((id, secret)) => {
                    form.append_pair("client_id", id);
                    form.append_pair("client_secret", secret);
                }
                None => {
                    form.append_pair("client_secret", &credential);
                }
            }
            form.append_pair(
                "scope",
                self.props
                    .get("scope")
                    .map(String::as_str)
                    .unwrap_or("catalog"),
            );
            for extra in ["audience", "resource"] {
                if let Some(v) = self.props.get(extra) {
                    form.append_pair(extra, v);
                }
            }
            form.finish()
        };
        let request = self
            .client
            .post(&endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
        }
        let parsed: TokenResponse =
            json_ok(request, &format!("getting a token from {endpoint}")).await?;
        Ok(parsed.access_token)
    }

    /// `{uri}/v1/{prefix}/namespaces/{ns}/tables/{table}`, each segment percent-encoded
    /// (a nested namespace's parts joined by U+001F, as the REST spec says).
    fn table_url(&self, resolved: &Resolved, ident: &TableIdent) -> Result<url::Url, String> {
        let mut url = url::Url::parse(&resolved.uri)
            .map_err(|e| format!("invalid catalog uri '{}': {e}", resolved.uri))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| format!("invalid catalog uri '{}'", resolved.uri))?;
            segments.pop_if_empty().push("v1");
            if let Some(prefix) = &resolved.prefix {
                for part in prefix.split('/').filter(|p| !p.is_empty()) {
                    segments.push(part);
                }
            }
            segments
                .push("namespaces")
                .push(&ident.namespace().to_url_string())
                .push("tables")
                .push(ident.name());
        }
        Ok(url)
    }

    /// Sends one commit: `updates` apply only if every requirement holds on the server.
    pub(crate) async fn commit(
        &self,
        ident: &TableIdent,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> RestOutcome {
        let resolved = match self.resolve().await {
            Ok(r) => r,
            // Nothing was sent.
            Err(e) => return RestOutcome::Failed(e),
        };
        let url = match self.table_url(resolved, ident) {
            Ok(u) => u,
            Err(e) => return RestOutcome::Failed(e),
        };
        let body = match serde_json::to_vec(&CommitTableRequest {
            identifier: Some(ident.clone()),
            requirements,
            updates,
        }) {
            Ok(b) => b,
            Err(e) => return RestOutcome::Failed(format!("encoding the commit: {e}")),
        };
        let mut refreshed = false;
        loop {
            let mut request = self
                .client
                .request(Method::POST, url.clone())
                .header("Content-Type", "application/json")
                .body(body.clone());
            if resolved.idempotency {
                request = request.header("Idempotency-Key", uuid::Uuid::now_v7().to_string());
            }
            let request = match self.authorized(request).await {
                Ok(r) => r,
                Err(e) => return RestOutcome::Failed(e),
            };
            let response = match request.send().await {
                Ok(r) => r,
                // Refused before anything was sent: nothing applied.
                Err(e) if e.is_connect() => {
                    return RestOutcome::Conflict(format!("POST {url}: {e}"))
                }
                // Sent, maybe applied.
                Err(e) => return RestOutcome::Unknown(format!("POST {url}: {e}")),
            };
            let status = response.status();
            let text = match response.bytes().await {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(e) if status == StatusCode::OK || status.is_server_error() => {
                    return RestOutcome::Unknown(format!("POST {url}: {status}, then {e}"))
                }
                Err(e) => format!("(body unreadable: {e})"),
            };
            let said = || format!("POST {url}: {status}: {text}");
            return match status {
                StatusCode::OK => match serde_json::from_str::<CommitTableResponse>(&text) {
                    Ok(r) => RestOutcome::Committed {
                        metadata_location: r.metadata_location,
                        metadata: Box::new(r.metadata),
                    },
                    Err(e) => RestOutcome::Unknown(format!(
                        "POST {url}: 200 with an unreadable answer ({e}): {text}"
                    )),
                },
                StatusCode::CONFLICT => RestOutcome::Conflict(said()),
                StatusCode::UNAUTHORIZED if !refreshed && self.props.contains_key("credential") => {
                    // The token expired: nothing was applied; get a new one, send again.
                    refreshed = true;
                    *self.token.lock().await = None;
                    continue;
                }
                s if s.is_server_error() => RestOutcome::Unknown(said()),
                _ => RestOutcome::Failed(said()),
            };
        }
    }
}
