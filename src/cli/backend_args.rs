//! Command-line flags of the network backends, shared by every command that
//! reads blobs (`mount`, `check`, `prefetch`), turned into
//! [`BackendOptions`]. Environment fallbacks are applied by the backends
//! themselves, so a library user gets them too.

use super::fetch_args::SettingError;
use crate::backend::BackendOptions;
use crate::util::parse_duration;
use std::path::PathBuf;

/// Network backend flags.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct BackendArgs {
    /// HTTP(S) proxy for backend requests [default: from HTTPS_PROXY /
    /// HTTP_PROXY, honouring NO_PROXY].
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// A PEM file of certificates to trust for HTTPS backends and
    /// registries, beside the system's trust store (repeatable).
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Vec<PathBuf>,
    /// Timeout of one backend request, e.g. 10s or 500ms [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub request_timeout: Option<String>,
    /// Registry user [default: RAFS_REGISTRY_USER, else docker config.json].
    #[arg(long, value_name = "USER")]
    pub registry_user: Option<String>,
    /// Registry password [default: RAFS_REGISTRY_PASSWORD].
    #[arg(long, value_name = "PASSWORD")]
    pub registry_password: Option<String>,
    /// A token server on another host that may receive the registry
    /// credentials (repeatable; the registry's own host always may, any
    /// other gets an anonymous token request; checked when the registry
    /// backend opens).
    #[arg(long, value_name = "URL")]
    pub registry_token_realm: Vec<String>,
    /// Docker config file with registry credentials [default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// S3 endpoint URL [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Path-style S3 addressing (most self-hosted servers need it).
    #[arg(long)]
    pub s3_path_style: bool,
    /// S3 access key id [default: AWS_ACCESS_KEY_ID].
    #[arg(long, value_name = "KEY")]
    pub s3_access_key: Option<String>,
    /// S3 secret key [default: AWS_SECRET_ACCESS_KEY].
    #[arg(long, value_name = "KEY")]
    pub s3_secret_key: Option<String>,
}

impl BackendArgs {
    /// The options these flags give (defaults for the rest).
    pub fn options(&self) -> Result<BackendOptions, SettingError> {
        let mut o = BackendOptions::default();
        if let Some(t) = &self.request_timeout {
            o.request_timeout =
                parse_duration(t).map_err(|e| SettingError(format!("--request-timeout: {e}")))?;
        }
        o.proxy.clone_from(&self.proxy);
        o.ca_certs.clone_from(&self.ca_cert);
        o.registry_user.clone_from(&self.registry_user);
        o.registry_password.clone_from(&self.registry_password);
        o.docker_config.clone_from(&self.docker_config);
        o.registry_token_realms
            .clone_from(&self.registry_token_realm);
        o.s3_endpoint.clone_from(&self.s3_endpoint);
        o.s3_region.clone_from(&self.s3_region);
        o.s3_path_style = self.s3_path_style;
        o.s3_access_key.clone_from(&self.s3_access_key);
        o.s3_secret_key.clone_from(&self.s3_secret_key);
        Ok(o)
    }
}
