//! `s3://bucket[/prefix]`: blobs as objects `<prefix>/<hex>` in S3-compatible
//! object storage.
//!
//! Every request is a plain HTTP GET of a presigned URL: [`rusty_s3`]
//! signs a `GetObject` (SigV4, query-string form, 15-minute expiry) afresh
//! for each call, and [`HttpClient::get_range`] adds the `Range` header,
//! which is not part of the signature, and does every check on the answer
//! (206, `Content-Range`, exact length). Without credentials the URL is
//! simply not signed (a public bucket). So no SDK, no async runtime and no
//! request of ours that differs from what the other HTTP backends send.
//!
//! Sizes come from a one-byte range GET (`Content-Range: bytes 0-0/size`;
//! a presigned GET URL cannot be used for HEAD) and are cached: blobs are
//! immutable, named by their hash. A known size also lets a read past the
//! end be refused without a request, and tells a clamped answer from a
//! short one (S3 answers `bytes=0-99` on a 10-byte object with a 206 of 10
//! bytes, not with 416).
//!
//! Settings, each from the first source that has it (see
//! [`Settings::resolve`]): endpoint `--s3-endpoint`, `AWS_ENDPOINT_URL`,
//! `https://s3.<region>.amazonaws.com`; region `--s3-region`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, `us-east-1`; credentials `--s3-access-key` and
//! `--s3-secret-key`, else `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! the optional `AWS_SESSION_TOKEN`, else anonymous. URLs are path-style
//! with `--s3-path-style` or when the endpoint's host is an IP address or
//! `localhost` (which cannot carry a bucket as a sub-domain), else
//! virtual-hosted.
//!
//! Secrets never reach a message: errors name `s3://bucket/key` rather than
//! the presigned URL (whose query holds the access key id, the signature
//! and a session token), and the [`Debug`] form shows no credentials.

use super::client::{answer_locally, HttpClient};
use super::{Backend, BackendError, BackendOptions, BlobId};
use rusty_s3::actions::{GetObject, S3Action};
use rusty_s3::{Bucket, BucketError, Credentials, UrlStyle};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

/// How long a presigned URL stays valid. URLs are signed per request, so
/// this only needs to cover one request plus clock skew.
const PRESIGN_EXPIRY: Duration = Duration::from_secs(15 * 60);

/// Region when nothing says otherwise (the one AWS itself defaults to).
const DEFAULT_REGION: &str = "us-east-1";

/// Where and how to reach the bucket, resolved from options and the
/// environment.
#[derive(Clone, PartialEq, Eq)]
struct Settings {
    endpoint: String,
    region: String,
    path_style: bool,
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("signed", &self.credentials.is_some())
            .finish()
    }
}

impl Settings {
    /// Fills what `opts` leaves open from `env` (a variable lookup, so
    /// tests need not touch the process environment). Empty values count
    /// as unset. A key without a secret (or the reverse) is a configuration
    /// error rather than a silent fall-back to anonymous access.
    fn resolve(
        opts: &BackendOptions,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, BackendError> {
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let env = |k: &str| nonempty(env(k));
        let region = nonempty(opts.s3_region.clone())
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let endpoint = nonempty(opts.s3_endpoint.clone())
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let from_opts = (
            nonempty(opts.s3_access_key.clone()),
            nonempty(opts.s3_secret_key.clone()),
        );
        let credentials = match from_opts {
            (Some(key), Some(secret)) => Some(Credentials::new(key, secret)),
            (Some(_), None) => return Err(half("--s3-access-key", "--s3-secret-key")),
            (None, Some(_)) => return Err(half("--s3-secret-key", "--s3-access-key")),
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(key), Some(secret)) => Some(match env("AWS_SESSION_TOKEN") {
                    Some(token) => Credentials::new_with_token(key, secret, token),
                    None => Credentials::new(key, secret),
                }),
                (Some(_), None) => return Err(half("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
                (None, Some(_)) => return Err(half("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")),
                (None, None) => None,
            },
        };
        Ok(Settings {
            endpoint,
            region,
            path_style: opts.s3_path_style,
            credentials,
        })
    }
}

fn half(given: &str, missing: &str) -> BackendError {
    BackendError::Config(format!("s3: {given} is set but {missing} is not"))
}

/// Whether `host` (as in a URL, IPv6 in brackets) cannot take a bucket
/// name as a sub-domain.
fn needs_path_style(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok()
}

/// The bucket's addressing, from resolved settings.
fn make_bucket(name: &str, s: &Settings) -> Result<Bucket, BackendError> {
    let bad = |why: String| BackendError::Config(format!("s3 endpoint '{}': {why}", s.endpoint));
    // A trailing '/' so that a path in the endpoint (a gateway under
    // `https://host/s3/`) is kept when the bucket and key are joined on.
    let mut endpoint = s.endpoint.clone();
    if !endpoint.ends_with('/') {
        endpoint.push('/');
    }
    // `url::Url` is only reachable through `Bucket::new`'s signature, so
    // the string is parsed where it is passed and the host checked on the
    // path-style bucket's base URL.
    let parse = || endpoint.parse().map_err(|e| bad(format!("{e}")));
    let bucket = |url, style| {
        Bucket::new(url, style, name.to_owned(), s.region.clone()).map_err(|e| {
            bad(match e {
                BucketError::UnsupportedScheme => "the scheme must be http or https".into(),
                BucketError::MissingHost => "no host".into(),
                BucketError::ParseError(e) => format!("{e}"),
            })
        })
    };
    let path = bucket(parse()?, UrlStyle::Path)?;
    if s.path_style || path.base_url().host_str().is_some_and(needs_path_style) {
        Ok(path)
    } else {
        bucket(parse()?, UrlStyle::VirtualHost)
    }
}

/// The object key of a blob: `<prefix>/<hex>`, or `<hex>` without prefix.
fn object_key(prefix: &str, id: &BlobId) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        id.to_hex()
    } else {
        format!("{prefix}/{}", id.to_hex())
    }
}

/// Blobs in one bucket under one key prefix.
pub struct S3Backend {
    bucket: Bucket,
    prefix: String,
    credentials: Option<Credentials>,
    client: HttpClient,
    /// Sizes seen so far; blobs are immutable, so never stale.
    sizes: Mutex<HashMap<BlobId, u64>>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("url", &self.bucket.base_url().as_str())
            .field("region", &self.bucket.region())
            .field("prefix", &self.prefix)
            .field("signed", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// Sets up the backend for `bucket` and key `prefix` (no leading or
    /// trailing `/`; may be empty). Checks the configuration only; the
    /// first request is the first read.
    pub fn open(
        bucket: &str,
        prefix: &str,
        opts: &BackendOptions,
    ) -> Result<S3Backend, BackendError> {
        let settings = Settings::resolve(opts, |k| std::env::var(k).ok())?;
        Ok(S3Backend {
            bucket: make_bucket(bucket, &settings)?,
            prefix: prefix.trim_matches('/').to_owned(),
            credentials: settings.credentials,
            client: HttpClient::new(opts)?,
            sizes: Mutex::new(HashMap::new()),
        })
    }

    /// `s3://bucket/key`, for messages.
    fn display_name(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket.name())
    }

    /// A freshly presigned GET URL for `key`.
    fn presign(&self, key: &str) -> String {
        GetObject::new(&self.bucket, self.credentials.as_ref(), key)
            .sign(PRESIGN_EXPIRY)
            .to_string()
    }

    fn cached_size(&self, id: &BlobId) -> Option<u64> {
        self.sizes.lock().ok()?.get(id).copied()
    }

    /// Rewrites an error of a request to `signed` so it names the object
    /// instead of the presigned URL, and so an S3 `<Code>` in a refusal is
    /// shown plainly.
    fn scrub(&self, e: BackendError, signed: &str, key: &str) -> BackendError {
        let name = self.display_name(key);
        let query = signed.split_once('?').map(|(_, q)| q).unwrap_or("");
        let clean = |s: &str| {
            let s = s.replace(signed, &name);
            if query.is_empty() {
                s
            } else {
                s.replace(query, "…")
            }
        };
        match e {
            BackendError::Auth { blob, detail } => BackendError::Auth {
                blob,
                detail: match s3_error_code(&detail) {
                    Some(code) => format!("{name}: {code}"),
                    None => clean(&detail),
                },
            },
            BackendError::Status { blob, status, .. } => BackendError::Status {
                blob,
                url: name.into(),
                status,
            },
            BackendError::Transport {
                blob,
                detail,
                timeout,
            } => BackendError::Transport {
                blob,
                detail: clean(&detail),
                timeout,
            },
            other => other,
        }
    }
}

/// The `<Code>` of an S3 error document (`AccessDenied`,
/// `SignatureDoesNotMatch`, `InvalidAccessKeyId`, ...), if `text` holds one.
fn s3_error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code = text[start..start + len].trim();
    let plain = !code.is_empty() && code.chars().all(|c| c.is_ascii_alphanumeric());
    plain.then_some(code)
}

impl Backend for S3Backend {
    fn read_range(&self, id: &BlobId, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        super::collect_range(len, |sink| self.read_range_to(id, offset, len, sink))
    }

    fn read_range_to(
        &self,
        id: &BlobId,
        offset: u64,
        len: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), BackendError> {
        let known = self.cached_size(id);
        if let Some(answer) = answer_locally(id, offset, len, known, || self.blob_size(id)) {
            return answer;
        }
        let key = object_key(&self.prefix, id);
        let url = self.presign(&key);
        self.client
            .get_range_to(id, &url, &[], offset, len, sink)
            .map_err(|e| self.scrub(e, &url, &key))
    }

    fn blob_size(&self, id: &BlobId) -> Result<u64, BackendError> {
        if let Some(size) = self.cached_size(id) {
            return Ok(size);
        }
        let key = object_key(&self.prefix, id);
        let url = self.presign(&key);
        let size = self
            .client
            .size_of(id, &url, &[])
            .map_err(|e| self.scrub(e, &url, &key))?;
        if let Ok(mut sizes) = self.sizes.lock() {
            sizes.insert(*id, size);
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn object_keys() {
        let id = BlobId([0xab; 32]);
        let hex = id.to_hex();
        assert_eq!(object_key("", &id), hex);
        assert_eq!(object_key("a/b", &id), format!("a/b/{hex}"));
        assert_eq!(object_key("/a/", &id), format!("a/{hex}"));
    }

    #[test]
    fn defaults_without_options_or_environment() {
        let s = Settings::resolve(&BackendOptions::default(), env_of(&[])).unwrap();
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.endpoint, "https://s3.us-east-1.amazonaws.com");
        assert!(!s.path_style);
        assert!(s.credentials.is_none());
    }

    #[test]
    fn environment_fills_what_options_leave_open() {
        let env = env_of(&[
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let s = Settings::resolve(&BackendOptions::default(), env).unwrap();
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.endpoint, "https://s3.eu-west-3.amazonaws.com");
        let c = s.credentials.unwrap();
        assert_eq!(
            (c.key(), c.secret(), c.token()),
            ("AKID", "sekrit", Some("tok"))
        );

        // AWS_REGION wins over AWS_DEFAULT_REGION; AWS_ENDPOINT_URL over the
        // AWS default; empty values are unset.
        let env = env_of(&[
            ("AWS_REGION", "ap-south-1"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", ""),
        ]);
        let s = Settings::resolve(&BackendOptions::default(), env).unwrap();
        assert_eq!(s.region, "ap-south-1");
        assert_eq!(s.endpoint, "http://127.0.0.1:9000");
        assert!(s.credentials.is_none());
    }

    #[test]
    fn options_win_over_environment() {
        let opts = BackendOptions {
            s3_endpoint: Some("https://minio.example:9000".into()),
            s3_region: Some("local".into()),
            s3_path_style: true,
            s3_access_key: Some("flagkey".into()),
            s3_secret_key: Some("flagsecret".into()),
            ..BackendOptions::default()
        };
        let env = env_of(&[
            ("AWS_REGION", "eu-west-3"),
            ("AWS_ENDPOINT_URL", "http://other"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sekrit"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let s = Settings::resolve(&opts, env).unwrap();
        assert_eq!(s.endpoint, "https://minio.example:9000");
        assert_eq!(s.region, "local");
        assert!(s.path_style);
        let c = s.credentials.unwrap();
        // The session token belongs to the environment's key, not ours.
        assert_eq!(
            (c.key(), c.secret(), c.token()),
            ("flagkey", "flagsecret", None)
        );
    }

    #[test]
    fn half_credentials_are_refused() {
        let opts = BackendOptions {
            s3_access_key: Some("k".into()),
            ..BackendOptions::default()
        };
        let e = Settings::resolve(&opts, env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("--s3-secret-key"), "{e}");
        let env = env_of(&[("AWS_SECRET_ACCESS_KEY", "s")]);
        let e = Settings::resolve(&BackendOptions::default(), env).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    }

    fn settings(endpoint: &str, path_style: bool) -> Settings {
        Settings {
            endpoint: endpoint.into(),
            region: "us-east-1".into(),
            path_style,
            credentials: None,
        }
    }

    #[test]
    fn url_styles() {
        let url = |endpoint, path_style| {
            let b = make_bucket("my-bucket", &settings(endpoint, path_style)).unwrap();
            GetObject::new(&b, None, "p/ab")
                .sign(PRESIGN_EXPIRY)
                .to_string()
        };
        assert_eq!(
            url("https://s3.us-east-1.amazonaws.com", false),
            "https://my-bucket.s3.us-east-1.amazonaws.com/p/ab"
        );
        assert_eq!(
            url("https://minio.example", true),
            "https://minio.example/my-bucket/p/ab"
        );
        // A path in the endpoint is kept.
        assert_eq!(
            url("https://gw.example/s3", true),
            "https://gw.example/s3/my-bucket/p/ab"
        );
        // IP addresses and localhost cannot take a bucket sub-domain.
        assert_eq!(
            url("http://127.0.0.1:9000", false),
            "http://127.0.0.1:9000/my-bucket/p/ab"
        );
        assert_eq!(
            url("http://[::1]:9000", false),
            "http://[::1]:9000/my-bucket/p/ab"
        );
        assert_eq!(
            url("http://localhost:1", false),
            "http://localhost:1/my-bucket/p/ab"
        );
    }

    #[test]
    fn bad_endpoints_are_config_errors() {
        for bad in ["ftp://host", "not a url", "http://"] {
            match make_bucket("my-bucket", &settings(bad, true)) {
                Err(BackendError::Config(m)) => assert!(m.contains(bad), "{m}"),
                other => panic!("{bad}: want Config, got {other:?}"),
            }
        }
    }

    #[test]
    fn signed_urls_carry_the_signature() {
        let mut s = settings("http://127.0.0.1:9000", true);
        s.credentials = Some(Credentials::new("AKID", "sekrit"));
        let b = make_bucket("bkt", &s).unwrap();
        let url = GetObject::new(&b, s.credentials.as_ref(), "k")
            .sign(PRESIGN_EXPIRY)
            .to_string();
        assert!(url.starts_with("http://127.0.0.1:9000/bkt/k?"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(url.contains("X-Amz-Expires=900"), "{url}");
        assert!(!url.contains("sekrit"), "{url}");
    }

    #[test]
    fn debug_shows_no_secrets() {
        let opts = BackendOptions {
            s3_endpoint: Some("http://127.0.0.1:1".into()),
            s3_access_key: Some("AKIDSECRETISH".into()),
            s3_secret_key: Some("topsecret".into()),
            ..BackendOptions::default()
        };
        let b = S3Backend::open("bkt", "pre", &opts).unwrap();
        let dbg = format!("{b:?}");
        assert!(
            !dbg.contains("topsecret") && !dbg.contains("AKIDSECRETISH"),
            "{dbg}"
        );
        assert!(dbg.contains("signed: true"), "{dbg}");
    }

    #[test]
    fn error_codes() {
        let body = "http://x: HTTP 403: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>m</Message></Error>";
        assert_eq!(s3_error_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(s3_error_code("<Code>a b</Code>"), None);
        assert_eq!(s3_error_code("<Code>Access"), None);
        assert_eq!(s3_error_code("nothing"), None);
    }

    #[test]
    fn refusals_name_the_object_not_the_presigned_url() {
        let opts = BackendOptions {
            s3_endpoint: Some("http://127.0.0.1:1".into()),
            s3_access_key: Some("AKID".into()),
            s3_secret_key: Some("s".into()),
            ..BackendOptions::default()
        };
        let b = S3Backend::open("bkt", "pre", &opts).unwrap();
        let id = BlobId([1; 32]);
        let key = object_key("pre", &id);
        let url = b.presign(&key);
        let auth = BackendError::Auth {
            blob: id,
            detail: format!("{url}: HTTP 403: <Error><Code>AccessDenied</Code></Error>"),
        };
        let msg = b.scrub(auth, &url, &key).to_string();
        assert!(
            msg.contains(&format!("s3://bkt/{key}: AccessDenied")),
            "{msg}"
        );
        let transport = BackendError::Transport {
            blob: id,
            detail: format!("{url}: connection refused"),
            timeout: false,
        };
        let msg = b.scrub(transport, &url, &key).to_string();
        assert!(!msg.contains("X-Amz-"), "{msg}");
        assert!(msg.contains("s3://bkt/"), "{msg}");
    }
}
