//! Prefetch: what to fetch ahead of reads, and the `rafs prefetch` command.
//!
//! The fetching itself is the fetcher's background lane
//! ([`crate::fetch::prefetch`]); this module turns what a user names —
//! paths (directories recursively), a list file ([`list`]), the image's
//! prefetch table, or everything — into a [`Plan`] of frames in order.

pub mod cli;
pub mod list;

use crate::fetch::prefetch::Plan;
use crate::fetch::Fetcher;
use rafs_format::Bootstrap;
use thiserror::Error;

/// Why a prefetch could not be planned.
#[derive(Debug, Error)]
pub enum PlanError {
    /// A named path is not in the image.
    #[error("'{0}' is not in the image")]
    Missing(String),
    /// The bootstrap is inconsistent.
    #[error("bootstrap: {0}")]
    Format(#[from] rafs_format::FormatError),
}

/// Adds `ino` to `plan`: a regular file's frames (only those overlapping
/// `ranges` if given), a directory's files recursively in name order.
/// Symlinks are not followed.
pub fn plan_inode(
    f: &Fetcher,
    b: &Bootstrap<'_>,
    ino: u32,
    ranges: Option<&[(u64, u64)]>,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    let mut stack = vec![ino];
    while let Some(ino) = stack.pop() {
        let inode = b.inode(ino)?;
        if inode.is_reg() {
            f.plan_file(b, ino, ranges, plan);
        } else if inode.is_dir() {
            let entries = b.dir_entries(ino)?;
            // Reversed onto the stack: visited in name order.
            stack.extend(entries.iter().rev().map(|e| e.ino.get()));
        }
    }
    Ok(())
}

/// Adds each path (with or without a leading `/`) to `plan`, in order.
/// With `skip_missing`, a path not in the image is logged and skipped
/// (a mount's prefetch list may be stale); otherwise it is an error.
pub fn plan_entries(
    f: &Fetcher,
    b: &Bootstrap<'_>,
    entries: &[list::Entry],
    skip_missing: bool,
    plan: &mut Plan,
) -> Result<(), PlanError> {
    for e in entries {
        match b.resolve(&e.path)? {
            Some(ino) => plan_inode(f, b, ino, e.ranges.as_deref(), plan)?,
            None if skip_missing => {
                tracing::warn!(path = %String::from_utf8_lossy(&e.path), "prefetch: not in the image")
            }
            None => {
                return Err(PlanError::Missing(
                    String::from_utf8_lossy(&e.path).into_owned(),
                ))
            }
        }
    }
    Ok(())
}

/// The image's own prefetch table (`rafs create --prefetch-list`).
pub fn plan_table(f: &Fetcher, b: &Bootstrap<'_>, plan: &mut Plan) -> Result<(), PlanError> {
    for p in b.prefetch() {
        plan_inode(f, b, p.ino.get(), None, plan)?;
    }
    Ok(())
}
