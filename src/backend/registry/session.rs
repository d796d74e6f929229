//! One authenticated conversation with one repository of a registry: the
//! state machine of the registry's challenges, shared by the registry
//! backend (range reads of blobs) and `rafs push`/`rafs pull`
//! ([`crate::oci`]), so both speak the same auth with the same
//! credentials.
//!
//! A request first goes out with whatever authorization is current (none
//! until a challenge has been seen). If the registry refuses it (401/403),
//! a URL of the repository is probed once without credentials to read its
//! `WWW-Authenticate` challenge: `Basic` → the user and password are sent
//! from then on; `Bearer realm=…,service=…,scope=…` → a token is fetched
//! from `realm` (with Basic credentials if the realm may have them,
//! anonymously otherwise) and cached. The request is then retried once; a
//! second refusal is final.
//!
//! The scopes asked for are the challenge's (else `repository:<repo>:pull`)
//! unless the session was given its own with [`RegistryClient::with_scopes`]
//! (a push asks for `repository:<repo>:pull,push`, and `repository:<other>:pull`
//! for cross-repository mounts).
//!
//! The token lives behind one mutex, held while a token is fetched, so a
//! burst of requests that all find the token stale waits for one fetch. A
//! token is refreshed before use when its `expires_in` is nearly over (by
//! the session's [`Clock`]), and after a 401.

use super::auth::{self, Challenge, Clock, Credentials, SystemClock, Token};
use crate::backend::client::{origin, status_error, HttpClient};
use crate::backend::{BackendError, BackendOptions, BlobId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest token response read.
const TOKEN_BODY_LIMIT: u64 = 64 << 10;

/// The token server Docker Hub uses.
const DOCKER_HUB_AUTH: &str = "https://auth.docker.io:443";

/// What the registry asked for, and the token if it wants one.
#[derive(Debug)]
enum AuthState {
    /// No challenge seen yet: requests carry no `Authorization`.
    Anonymous,
    /// The registry takes HTTP Basic credentials.
    Basic,
    /// The registry takes tokens from `realm`.
    Bearer {
        realm: String,
        service: Option<String>,
        scopes: Vec<String>,
        token: Option<Token>,
    },
}

/// An authenticated client of one repository (`scheme://host/v2/<repo>/`).
#[derive(Debug)]
pub struct RegistryClient {
    client: HttpClient,
    /// `scheme://host`
    origin_url: String,
    repo: String,
    creds: Option<Credentials>,
    /// Origins (`scheme://host:port`) of token realms that may receive
    /// `creds`: the registry's own, the allowed ones.
    trusted_realms: Vec<String>,
    /// Whether withholding credentials from a realm was logged.
    warned_realm: AtomicBool,
    /// The scopes to ask tokens for; empty: the challenge's.
    scopes: Vec<String>,
    auth: Mutex<AuthState>,
    clock: Arc<dyn Clock>,
}

/// The realm origins `creds` may go to for a registry at `host`.
fn trusted_realms(
    tls: bool,
    host: &str,
    opts: &BackendOptions,
) -> Result<Vec<String>, BackendError> {
    let scheme = if tls { "https" } else { "http" };
    let own = origin(&format!("{scheme}://{host}/"))
        .ok_or_else(|| BackendError::Config(format!("registry host '{host}' is not valid")))?;
    let mut out = vec![own];
    for realm in &opts.registry_token_realms {
        out.push(origin(realm).ok_or_else(|| {
            BackendError::Config(format!(
                "--registry-token-realm '{realm}': not an http(s) URL with a host"
            ))
        })?);
    }
    let bare = host.split(':').next().unwrap_or(host);
    if tls && super::is_docker_hub(bare) {
        out.push(DOCKER_HUB_AUTH.to_owned());
    }
    Ok(out)
}

/// Where the registry API of `host` is: Docker Hub's names for itself
/// (`docker.io`, `index.docker.io`, as references spell it) serve no
/// registry API; docker and containerd talk to `registry-1.docker.io`.
fn api_host(host: &str) -> &str {
    if super::is_docker_hub_name(host) {
        super::DOCKER_HUB_API
    } else {
        host
    }
}

impl RegistryClient {
    /// Sets up a client of `repo` on `host` (`host[:port]`) and looks up
    /// its credentials; no request is made here.
    pub fn open(
        tls: bool,
        host: &str,
        repo: &str,
        opts: &BackendOptions,
    ) -> Result<RegistryClient, BackendError> {
        let creds = auth::resolve_credentials(host, opts)?;
        let scheme = if tls { "https" } else { "http" };
        Ok(RegistryClient {
            client: HttpClient::new(opts)?,
            origin_url: format!("{scheme}://{}", api_host(host)),
            repo: repo.to_owned(),
            creds,
            trusted_realms: trusted_realms(tls, host, opts)?,
            warned_realm: AtomicBool::new(false),
            scopes: Vec::new(),
            auth: Mutex::new(AuthState::Anonymous),
            clock: Arc::new(SystemClock),
        })
    }

    /// The same client asking tokens for `scopes` instead of the
    /// challenges' (e.g. `repository:a/b:pull,push`).
    pub fn with_scopes(mut self, scopes: Vec<String>) -> RegistryClient {
        self.scopes = scopes;
        self
    }

    /// The same client measuring token lifetimes with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> RegistryClient {
        self.clock = clock;
        self
    }

    /// The HTTP transport.
    pub fn http(&self) -> &HttpClient {
        &self.client
    }

    /// The repository.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// `scheme://host` (the base of relative `Location`s).
    pub fn origin_url(&self) -> &str {
        &self.origin_url
    }

    /// `scheme://host/v2/<repo>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.origin_url, self.repo)
    }

    /// The URL of blob `id` in the repository.
    pub fn blob_url(&self, id: &BlobId) -> String {
        self.url(&format!("blobs/sha256:{}", id.to_hex()))
    }

    /// The credentials to send to token server `realm`: `None` (an
    /// anonymous token request) unless its origin is trusted.
    fn creds_for_realm(&self, realm: &str) -> Option<&Credentials> {
        let creds = self.creds.as_ref()?;
        if origin(realm).is_some_and(|o| self.trusted_realms.contains(&o)) {
            return Some(creds);
        }
        if !self.warned_realm.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "registry credentials withheld from token realm {realm}: not the \
                 registry's host; allow it with --registry-token-realm"
            );
        }
        None
    }

    fn lock_auth(&self) -> MutexGuard<'_, AuthState> {
        // The state is replaced whole, never left half-written: a panic
        // elsewhere does not make it unusable.
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `Authorization` value to send now, fetching a fresh token if
    /// the cached one is due for refresh.
    fn current_header(&self, id: &BlobId) -> Result<Option<String>, BackendError> {
        let mut state = self.lock_auth();
        match &mut *state {
            AuthState::Anonymous => Ok(None),
            AuthState::Basic => Ok(self.creds.as_ref().map(Credentials::basic_header)),
            AuthState::Bearer {
                realm,
                service,
                scopes,
                token,
            } => {
                let now = self.clock.now();
                let fresh = token.as_ref().filter(|t| now < t.refresh_at).cloned();
                let t = match fresh {
                    Some(t) => t,
                    None => {
                        let t = self.fetch_token(id, realm, service.as_deref(), scopes)?;
                        *token = Some(t.clone());
                        t
                    }
                };
                Ok(Some(format!("Bearer {}", t.value)))
            }
        }
    }

    /// Adopts `challenge` after `sent` was refused and returns the
    /// authorization to retry with. If another thread has already
    /// replaced the refused token, its token is used as is.
    fn renew(
        &self,
        id: &BlobId,
        challenge: Challenge,
        sent: Option<&str>,
    ) -> Result<Option<String>, BackendError> {
        let mut state = self.lock_auth();
        let (realm, service, scope) = match challenge {
            Challenge::Basic => {
                let creds = self.creds.as_ref().ok_or_else(|| BackendError::Auth {
                    blob: *id,
                    detail: format!(
                        "{}: the registry wants a user and password and none is configured",
                        self.url("")
                    ),
                })?;
                *state = AuthState::Basic;
                return Ok(Some(creds.basic_header()));
            }
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => (realm, service, scope),
        };
        if let AuthState::Bearer {
            token: Some(t),
            realm: r,
            ..
        } = &*state
        {
            let header = format!("Bearer {}", t.value);
            if *r == realm && Some(header.as_str()) != sent && self.clock.now() < t.refresh_at {
                return Ok(Some(header));
            }
        }
        let scopes = if self.scopes.is_empty() {
            vec![scope.unwrap_or_else(|| format!("repository:{}:pull", self.repo))]
        } else {
            self.scopes.clone()
        };
        let token = self.fetch_token(id, &realm, service.as_deref(), &scopes)?;
        let header = format!("Bearer {}", token.value);
        *state = AuthState::Bearer {
            realm,
            service,
            scopes,
            token: Some(token),
        };
        Ok(Some(header))
    }

    /// GETs a token for `scopes` from the token server `realm`.
    fn fetch_token(
        &self,
        id: &BlobId,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<Token, BackendError> {
        let lower = realm.to_ascii_lowercase();
        let refuse = |why: &str| BackendError::Auth {
            blob: *id,
            detail: format!("token realm '{realm}': {why}"),
        };
        if !lower.starts_with("https://") && !lower.starts_with("http://") {
            return Err(refuse("not an http(s) URL"));
        }
        let mut url = realm.to_owned();
        url.push(if realm.contains('?') { '&' } else { '?' });
        if let Some(service) = service {
            url.push_str(&format!("service={}&", auth::query_escape(service)));
        }
        let scopes: Vec<String> = scopes
            .iter()
            .map(|s| format!("scope={}", auth::query_escape(s)))
            .collect();
        url.push_str(&scopes.join("&"));
        let basic = self.creds_for_realm(realm).map(Credentials::basic_header);
        let headers: Vec<(&str, &str)> = basic
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        let started = self.clock.now();
        let raw = self.client.get(id, &url, &headers, TOKEN_BODY_LIMIT)?;
        if raw.status.as_u16() != 200 {
            return Err(status_error(id, &url, &raw));
        }
        auth::parse_token_response(&raw.body, started).map_err(|why| BackendError::Auth {
            blob: *id,
            detail: format!("token server {realm}: {why}"),
        })
    }

    /// The challenge of `url`, asked without credentials; `None` if the
    /// registry answers anything but a 401 with a challenge rafs
    /// understands (Bearer preferred over Basic).
    fn probe(&self, id: &BlobId, url: &str) -> Result<Option<Challenge>, BackendError> {
        let raw = self.client.get(id, url, &[("Range", "bytes=0-0")], 2)?;
        if raw.status.as_u16() != 401 {
            return Ok(None);
        }
        let mut challenges: Vec<Challenge> = raw
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        challenges.sort_by_key(|c| matches!(c, Challenge::Basic));
        Ok(challenges.into_iter().next())
    }

    /// Runs `op` with the current authorization and, if refused
    /// ([`BackendError::Auth`]), once more after following the challenge
    /// the registry gives for a GET of `probe_url` (a URL of this
    /// repository). `id` names the object in errors.
    pub fn with_auth<T>(
        &self,
        id: &BlobId,
        probe_url: &str,
        mut op: impl FnMut(&[(&str, &str)]) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut call = |h: &Option<String>| {
            let owned: Vec<(&str, String)> =
                h.iter().map(|v| ("Authorization", v.clone())).collect();
            let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            op(&borrowed)
        };
        let sent = self.current_header(id)?;
        let first = call(&sent);
        if !matches!(first, Err(BackendError::Auth { .. })) {
            return first;
        }
        let Some(challenge) = self.probe(id, probe_url)? else {
            return first;
        };
        let next = self.renew(id, challenge, sent.as_deref())?;
        if next == sent {
            return first;
        }
        call(&next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BackendOptions {
        BackendOptions {
            registry_user: Some("alice".into()),
            registry_password: Some("hunter2".into()),
            ..BackendOptions::default()
        }
    }

    #[test]
    fn urls() {
        let c = RegistryClient::open(true, "reg.example:5000", "a/b", &opts()).unwrap();
        let id = BlobId([0xcd; 32]);
        assert_eq!(
            c.blob_url(&id),
            format!(
                "https://reg.example:5000/v2/a/b/blobs/sha256:{}",
                id.to_hex()
            )
        );
        assert_eq!(
            c.url("manifests/latest"),
            "https://reg.example:5000/v2/a/b/manifests/latest"
        );
        let c = RegistryClient::open(false, "h", "r", &opts()).unwrap();
        assert!(c.blob_url(&id).starts_with("http://h/v2/r/blobs/sha256:"));
        for hub in ["docker.io", "Index.Docker.IO", "registry-1.docker.io"] {
            let c = RegistryClient::open(true, hub, "library/alpine", &opts()).unwrap();
            assert_eq!(
                c.url("manifests/3"),
                "https://registry-1.docker.io/v2/library/alpine/manifests/3",
                "{hub}"
            );
        }
    }

    #[test]
    fn credentials_go_only_to_trusted_realms() {
        let b = RegistryClient::open(true, "reg.example:5000", "r", &opts()).unwrap();
        let sent = |realm: &str| b.creds_for_realm(realm).is_some();
        assert!(sent("https://reg.example:5000/token?x=1"));
        assert!(sent("HTTPS://REG.example:5000/t"));
        for other in [
            "http://reg.example:5000/token",
            "https://reg.example/token",
            "https://reg.example:5001/token",
            "https://evil.example/token",
            "https://auth.docker.io/token",
            "not a url",
        ] {
            assert!(!sent(other), "{other}");
        }
        let allowed = BackendOptions {
            registry_token_realms: vec!["https://auth.example/token".into()],
            ..opts()
        };
        let b = RegistryClient::open(true, "reg.example", "r", &allowed).unwrap();
        assert!(b.creds_for_realm("https://auth.example/other").is_some());
        assert!(b.creds_for_realm("https://reg.example:443/t").is_some());
        assert!(b.creds_for_realm("http://auth.example/t").is_none());
        let hub = RegistryClient::open(true, "registry-1.docker.io", "r", &opts()).unwrap();
        assert!(hub
            .creds_for_realm("https://auth.docker.io/token")
            .is_some());
        let plain = RegistryClient::open(false, "registry-1.docker.io", "r", &opts()).unwrap();
        assert!(plain
            .creds_for_realm("https://auth.docker.io/token")
            .is_none());
        let bad = BackendOptions {
            registry_token_realms: vec!["auth.example".into()],
            ..opts()
        };
        assert!(matches!(
            RegistryClient::open(true, "h", "r", &bad),
            Err(BackendError::Config(_))
        ));
        let e = b
            .fetch_token(&BlobId([1; 32]), "file:///etc/passwd", None, &["s".into()])
            .unwrap_err();
        assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    }

    #[test]
    fn basic_challenge_without_credentials_is_auth() {
        let mut b = RegistryClient::open(false, "h", "r", &opts()).unwrap();
        b.creds = None;
        let e = b
            .renew(&BlobId([1; 32]), Challenge::Basic, None)
            .unwrap_err();
        assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    }
}
