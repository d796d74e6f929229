//! The S3 backend against a real S3 server (`s3s-fs`, SigV4 enforced):
//! the conformance suite (`tests/common/conformance.rs`) with and without a
//! key prefix, refused credentials, and missing buckets and keys.

mod common;

use common::conformance::{check_backend, check_denied, fixture, Fixture};
use common::s3::{S3Server, ACCESS_KEY, SECRET_KEY};
use rafs::backend::url::BackendUrl;
use rafs::backend::{Backend, BackendError, BackendOptions};
use std::sync::Arc;

/// Options for `server` with the given secret key.
fn options(server: &S3Server, secret: &str) -> BackendOptions {
    BackendOptions {
        s3_endpoint: Some(server.endpoint.clone()),
        s3_path_style: true,
        s3_access_key: Some(ACCESS_KEY.into()),
        s3_secret_key: Some(secret.into()),
        ..BackendOptions::default()
    }
}

fn open(url: &str, opts: &BackendOptions) -> Arc<dyn Backend> {
    BackendUrl::parse(url)
        .unwrap()
        .open(opts)
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

/// Uploads every fixture blob as `<prefix>/<hex>` (or `<hex>`).
fn publish(server: &S3Server, bucket: &str, prefix: &str, fx: &Fixture) {
    for (id, bytes) in &fx.blobs {
        let key = match prefix {
            "" => id.to_hex(),
            p => format!("{p}/{}", id.to_hex()),
        };
        server.put(bucket, &key, bytes);
    }
}

#[test]
fn s3_backend_conforms_with_prefix() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "images/v1", &fx);
    // The objects really are under the prefix, where the server keeps them.
    let hex = fx.blobs[0].0.to_hex();
    assert!(server
        .root()
        .join("rafs-blobs/images/v1")
        .join(&hex)
        .is_file());
    let b = open("s3://rafs-blobs/images/v1/", &options(&server, SECRET_KEY));
    check_backend(b.as_ref(), &fx);
}

#[test]
fn s3_backend_conforms_without_prefix() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("flat");
    publish(&server, "flat", "", &fx);
    let b = open("s3://flat", &options(&server, SECRET_KEY));
    check_backend(b.as_ref(), &fx);
}

#[test]
fn s3_wrong_secret_is_auth() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "p", &fx);
    let b = open("s3://rafs-blobs/p", &options(&server, "not-the-secret"));
    check_denied(b.as_ref(), &fx);
    // The message names the object and the S3 error code, and leaks no
    // part of the presigned URL.
    let msg = b.read_range(&fx.blobs[1].0, 0, 10).unwrap_err().to_string();
    assert!(msg.contains("s3://rafs-blobs/p/"), "{msg}");
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");
    assert!(!msg.contains("X-Amz-"), "{msg}");
    // Streamed, the same: the error body is read for the message.
    let streamed = b.read_range_to(&fx.blobs[1].0, 0, 10, &mut |_| panic!("denied bytes"));
    let msg = streamed.unwrap_err().to_string();
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");
}

#[test]
fn s3_unknown_access_key_is_auth() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "", &fx);
    let opts = BackendOptions {
        s3_access_key: Some("nobody".into()),
        ..options(&server, SECRET_KEY)
    };
    check_denied(open("s3://rafs-blobs", &opts).as_ref(), &fx);
}

#[test]
fn s3_anonymous_is_auth_when_the_server_wants_signatures() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "", &fx);
    let opts = BackendOptions {
        s3_access_key: None,
        s3_secret_key: None,
        ..options(&server, SECRET_KEY)
    };
    // With AWS_* credentials in the environment the request is signed with
    // a key this server does not know: Auth all the same.
    check_denied(open("s3://rafs-blobs", &opts).as_ref(), &fx);
}

#[test]
fn s3_missing_bucket_or_key_is_not_found() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "present", &fx);
    let opts = options(&server, SECRET_KEY);
    let (id, _) = &fx.blobs[1];
    for url in [
        "s3://no-such-bucket/present",
        "s3://rafs-blobs/absent",
        "s3://rafs-blobs",
    ] {
        let b = open(url, &opts);
        match b.read_range(id, 0, 10) {
            Err(e @ BackendError::NotFound(_)) => assert!(!e.is_transient()),
            other => panic!("{url}: want NotFound, got {:?}", other.map(|v| v.len())),
        }
        assert!(
            matches!(b.blob_size(id), Err(BackendError::NotFound(_))),
            "{url}: size"
        );
    }
}

#[test]
fn s3_unreachable_endpoint_is_transient() {
    let server = S3Server::start();
    let endpoint = server.endpoint.clone();
    drop(server);
    let opts = BackendOptions {
        s3_endpoint: Some(endpoint),
        ..BackendOptions::default()
    };
    let fx = fixture();
    let b = open("s3://rafs-blobs", &opts);
    match b.read_range(&fx.blobs[0].0, 0, 1) {
        Err(e @ BackendError::Transport { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("s3://rafs-blobs/"), "{e}");
        }
        other => panic!("want Transport, got {:?}", other.map(|v| v.len())),
    }
}

/// Reads past the end on a fresh backend, before any size is cached: the
/// server clamps `bytes=0-size` to the object and answers 206, which must
/// still come back as `OutOfRange`, not as a short body.
#[test]
fn s3_past_end_before_size_is_known_is_out_of_range() {
    let server = S3Server::start();
    let fx = fixture();
    server.create_bucket("rafs-blobs");
    publish(&server, "rafs-blobs", "", &fx);
    for (id, bytes) in &fx.blobs {
        let size = bytes.len() as u64;
        for (offset, len) in [(0, size + 1), (size - 1, 2), (size, 1)] {
            let b = open("s3://rafs-blobs", &options(&server, SECRET_KEY));
            match b.read_range(id, offset, len) {
                Err(BackendError::OutOfRange { size: got, .. }) => {
                    assert!(got == size || got == 0, "{id}: size {got}, want {size}")
                }
                other => panic!(
                    "{id}: {offset}+{len}: want OutOfRange, got {:?}",
                    other.map(|v| v.len())
                ),
            }
        }
    }
}
