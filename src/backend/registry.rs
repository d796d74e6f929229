//! `registry://host[:port]/repo` (HTTPS) and `registry+http://…` (plain
//! HTTP): blobs in an OCI distribution registry, read with range GETs of
//! `/v2/<repo>/blobs/sha256:<hex>`.
//!
//! Authentication is driven by the registry's challenges, as docker does:
//! - a request first goes out with whatever authorization is current
//!   (none until a challenge has been seen);
//! - if the registry refuses it (401/403), the blob URL is probed once
//!   without credentials to read its `WWW-Authenticate` challenge;
//! - `Basic` → the user and password are sent from then on;
//!   `Bearer realm=…,service=…,scope=…` → a token is fetched from `realm`
//!   (with Basic credentials if there are any, anonymously otherwise, for
//!   the challenge's scope or `repository:<repo>:pull`) and cached;
//! - the request is retried once with the new authorization; a second
//!   refusal is a final [`BackendError::Auth`].
//!
//! The token lives behind one mutex, held while a token is fetched, so a
//! burst of readers that all find the token stale waits for one fetch
//! instead of each fetching its own. A token is refreshed before use when
//! its `expires_in` (default 60 s) is nearly over (by the backend's
//! [`Clock`], replaceable in tests), and after a 401.
//!
//! Registries often redirect blob GETs to object storage; the shared
//! [`HttpClient`] follows redirects without forwarding `Authorization`.
//! Credentials are looked up once, at open (see [`auth`]), and are never
//! logged: the `Debug` output of the backend redacts them.

pub mod auth;

use self::auth::{Challenge, Clock, Credentials, SystemClock, Token};
use super::client::{answer_locally, origin, status_error, HttpClient};
use super::{Backend, BackendError, BackendOptions, BlobId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest token response read.
const TOKEN_BODY_LIMIT: u64 = 64 << 10;

/// Docker Hub's registry hosts and the token server they use.
const DOCKER_HUB: [&str; 3] = ["registry-1.docker.io", "docker.io", "index.docker.io"];
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
        scope: String,
        token: Option<Token>,
    },
}

/// Blobs in one repository of a registry.
#[derive(Debug)]
pub struct RegistryBackend {
    client: HttpClient,
    /// `scheme://host/v2/<repo>/blobs/sha256:`
    base: String,
    repo: String,
    creds: Option<Credentials>,
    /// Origins (`scheme://host:port`) of token realms that may receive
    /// `creds`: the registry's own, the allowed ones.
    trusted_realms: Vec<String>,
    /// Whether withholding credentials from a realm was logged.
    warned_realm: AtomicBool,
    auth: Mutex<AuthState>,
    sizes: Mutex<HashMap<BlobId, u64>>,
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
    if tls && DOCKER_HUB.iter().any(|h| h.eq_ignore_ascii_case(bare)) {
        out.push(DOCKER_HUB_AUTH.to_owned());
    }
    Ok(out)
}

impl RegistryBackend {
    /// Sets up the backend for `repo` on `host` (`host[:port]`) and looks
    /// up its credentials; no request is made here.
    pub fn open(
        tls: bool,
        host: &str,
        repo: &str,
        opts: &BackendOptions,
    ) -> Result<RegistryBackend, BackendError> {
        let creds = auth::resolve_credentials(host, opts)?;
        let scheme = if tls { "https" } else { "http" };
        Ok(RegistryBackend {
            client: HttpClient::new(opts)?,
            base: format!("{scheme}://{host}/v2/{repo}/blobs/sha256:"),
            repo: repo.to_owned(),
            creds,
            trusted_realms: trusted_realms(tls, host, opts)?,
            warned_realm: AtomicBool::new(false),
            auth: Mutex::new(AuthState::Anonymous),
            sizes: Mutex::new(HashMap::new()),
            clock: Arc::new(SystemClock),
        })
    }

    /// The same backend measuring token lifetimes with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> RegistryBackend {
        self.clock = clock;
        self
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

    fn url(&self, id: &BlobId) -> String {
        format!("{}{}", self.base, id.to_hex())
    }

    fn lock_auth(&self) -> MutexGuard<'_, AuthState> {
        // The state is replaced whole, never left half-written: a panic
        // elsewhere does not make it unusable.
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cached_size(&self, id: &BlobId) -> Option<u64> {
        let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.get(id).copied()
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
                scope,
                token,
            } => {
                let now = self.clock.now();
                let fresh = token.as_ref().filter(|t| now < t.refresh_at).cloned();
                let t = match fresh {
                    Some(t) => t,
                    None => {
                        let t = self.fetch_token(id, realm, service.as_deref(), scope)?;
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
                        self.url(id)
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
        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let token = self.fetch_token(id, &realm, service.as_deref(), &scope)?;
        let header = format!("Bearer {}", token.value);
        *state = AuthState::Bearer {
            realm,
            service,
            scope,
            token: Some(token),
        };
        Ok(Some(header))
    }

    /// GETs a token from the token server `realm`.
    fn fetch_token(
        &self,
        id: &BlobId,
        realm: &str,
        service: Option<&str>,
        scope: &str,
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
        url.push_str(&format!("scope={}", auth::query_escape(scope)));
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

    /// The challenge of blob `id`'s URL, asked without credentials; `None`
    /// if the registry answers anything but a 401 with a challenge rafs
    /// understands (Bearer preferred over Basic).
    fn probe(&self, id: &BlobId) -> Result<Option<Challenge>, BackendError> {
        let raw = self
            .client
            .get(id, &self.url(id), &[("Range", "bytes=0-0")], 2)?;
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

    /// Runs `op` with the current authorization and, if refused, once more
    /// after following the registry's challenge.
    fn with_auth<T>(
        &self,
        id: &BlobId,
        op: impl Fn(&[(&str, &str)]) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let headers = |h: &Option<String>| -> Vec<(&'static str, String)> {
            h.iter().map(|v| ("Authorization", v.clone())).collect()
        };
        let call = |h: &Option<String>| {
            let owned = headers(h);
            let borrowed: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
            op(&borrowed)
        };
        let sent = self.current_header(id)?;
        let first = call(&sent);
        if !matches!(first, Err(BackendError::Auth { .. })) {
            return first;
        }
        let Some(challenge) = self.probe(id)? else {
            return first;
        };
        let next = self.renew(id, challenge, sent.as_deref())?;
        if next == sent {
            return first;
        }
        call(&next)
    }
}

impl Backend for RegistryBackend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let known = self.cached_size(id);
        if let Some(answer) = answer_locally(id, offset, len, known, || self.blob_size(id)) {
            return answer;
        }
        let url = self.url(id);
        self.with_auth(id, |h| self.client.get_range(id, &url, h, offset, len))
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        if let Some(size) = self.cached_size(id) {
            return Ok(size);
        }
        let url = self.url(id);
        let size = self.with_auth(id, |h| self.client.size_of(id, &url, h))?;
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        sizes.insert(*id, size);
        Ok(size)
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
    fn blob_urls() {
        let b = RegistryBackend::open(true, "reg.example:5000", "a/b", &opts()).unwrap();
        let id = BlobId([0xcd; 32]);
        assert_eq!(
            b.url(&id),
            format!(
                "https://reg.example:5000/v2/a/b/blobs/sha256:{}",
                id.to_hex()
            )
        );
        let b = RegistryBackend::open(false, "h", "r", &opts()).unwrap();
        assert!(b.url(&id).starts_with("http://h/v2/r/blobs/sha256:"));
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let b = RegistryBackend::open(true, "h", "r", &opts()).unwrap();
        let dbg = format!("{b:?}");
        assert!(dbg.contains("alice") && !dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn credentials_go_only_to_trusted_realms() {
        let b = RegistryBackend::open(true, "reg.example:5000", "r", &opts()).unwrap();
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
        let b = RegistryBackend::open(true, "reg.example", "r", &allowed).unwrap();
        assert!(b.creds_for_realm("https://auth.example/other").is_some());
        assert!(b.creds_for_realm("https://reg.example:443/t").is_some());
        assert!(b.creds_for_realm("http://auth.example/t").is_none());
        let hub = RegistryBackend::open(true, "registry-1.docker.io", "r", &opts()).unwrap();
        assert!(hub
            .creds_for_realm("https://auth.docker.io/token")
            .is_some());
        let plain = RegistryBackend::open(false, "registry-1.docker.io", "r", &opts()).unwrap();
        assert!(plain
            .creds_for_realm("https://auth.docker.io/token")
            .is_none());
        let bad = BackendOptions {
            registry_token_realms: vec!["auth.example".into()],
            ..opts()
        };
        assert!(matches!(
            RegistryBackend::open(true, "h", "r", &bad),
            Err(BackendError::Config(_))
        ));
        let e = b
            .fetch_token(&BlobId([1; 32]), "file:///etc/passwd", None, "s")
            .unwrap_err();
        assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    }

    #[test]
    fn basic_challenge_without_credentials_is_auth() {
        let mut b = RegistryBackend::open(false, "h", "r", &opts()).unwrap();
        b.creds = None;
        let e = b
            .renew(&BlobId([1; 32]), Challenge::Basic, None)
            .unwrap_err();
        assert!(matches!(e, BackendError::Auth { .. }), "{e}");
    }
}
