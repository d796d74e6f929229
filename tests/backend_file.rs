//! The file backend passes the backend conformance suite
//! (`tests/common/conformance.rs`).

mod common;

use common::conformance::{check_backend, fixture};
use rafs::backend::url::BackendUrl;
use rafs::backend::BackendOptions;

#[test]
fn file_backend_conforms() {
    let fx = fixture();
    let dir = common::tempdir();
    fx.write_dir(dir.path());
    let url = format!("file://{}", dir.path().display());
    let backend = BackendUrl::parse(&url)
        .unwrap()
        .open(&BackendOptions::default())
        .unwrap();
    check_backend(backend.as_ref(), &fx);
}
