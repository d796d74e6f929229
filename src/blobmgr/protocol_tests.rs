//! Tests of the blob-manager codec.
