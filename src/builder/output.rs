//! The output directory, written all-or-nothing.
//!
//! Everything is built inside `OUTDIR/.rafs-tmp-<pid>` (same filesystem, so
//! the final moves are renames). [`Staging::commit`] syncs and renames each
//! blob to `OUTDIR/blobs/<sha256 hex>` and then the bootstrap to
//! `OUTDIR/bootstrap`: a reader never sees a bootstrap whose blobs are
//! missing, and a crash leaves at worst complete, content-addressed blobs
//! nobody references yet. Blobs already present (a shared blob directory)
//! are kept: same name, same bytes. Dropping an uncommitted [`Staging`]
//! removes the temporary directory, and `blobs/` and `OUTDIR` themselves if
//! this build created them and they are empty, so a failed build leaves
//! `OUTDIR` as it found it.

use super::error::{BuildError, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A build in progress inside `OUTDIR`.
#[derive(Debug)]
pub struct Staging {
    outdir: PathBuf,
    tmp: PathBuf,
    created_outdir: bool,
    created_blobs: bool,
    committed: bool,
}

fn create_dir(path: &Path) -> Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(BuildError::io(path, e)),
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| BuildError::io(path, e))
}

impl Staging {
    /// Creates `outdir` if needed and a fresh temporary directory in it.
    pub fn new(outdir: &Path) -> Result<Staging> {
        let created_outdir = match outdir.parent() {
            Some(p) if !p.as_os_str().is_empty() && !outdir.exists() => {
                fs::create_dir_all(p).map_err(|e| BuildError::io(p, e))?;
                create_dir(outdir)?
            }
            _ => create_dir(outdir)?,
        };
        let tmp = outdir.join(format!(".rafs-tmp-{}", std::process::id()));
        let staging = Staging {
            outdir: outdir.to_owned(),
            tmp: tmp.clone(),
            created_outdir,
            created_blobs: false,
            committed: false,
        };
        if tmp.exists() {
            // Left by a killed build that had our pid: nothing refers to it.
            fs::remove_dir_all(&tmp).map_err(|e| BuildError::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| BuildError::io(&tmp, e))?;
        Ok(staging)
    }

    /// The temporary directory to build in.
    pub fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// Moves the blobs and then the bootstrap into place.
    pub fn commit(mut self, blob_files: &[(PathBuf, [u8; 32])], bootstrap: &[u8]) -> Result<()> {
        let staged = self.tmp.join("bootstrap");
        let mut f = File::create(&staged).map_err(|e| BuildError::io(&staged, e))?;
        f.write_all(bootstrap)
            .and_then(|()| f.sync_all())
            .map_err(|e| BuildError::io(&staged, e))?;
        let blobs = self.outdir.join("blobs");
        self.created_blobs = create_dir(&blobs)?;
        for (path, id) in blob_files {
            let dest = blobs.join(hex::encode(id));
            if dest.is_file() {
                continue;
            }
            fs::rename(path, &dest).map_err(|e| BuildError::io(&dest, e))?;
        }
        sync_dir(&blobs)?;
        let dest = self.outdir.join("bootstrap");
        fs::rename(&staged, &dest).map_err(|e| BuildError::io(&dest, e))?;
        sync_dir(&self.outdir)?;
        self.committed = true;
        fs::remove_dir_all(&self.tmp).map_err(|e| BuildError::io(&self.tmp, e))?;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Best effort: errors here cannot be reported better than the
        // build error that got us here.
        let _ = fs::remove_dir_all(&self.tmp);
        if self.created_blobs {
            let _ = fs::remove_dir(self.outdir.join("blobs"));
        }
        if self.created_outdir {
            let _ = fs::remove_dir(&self.outdir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_staging_leaves_outdir_as_found() {
        let base = tempfile::tempdir().unwrap();
        let out = base.path().join("new/out");
        {
            let s = Staging::new(&out).unwrap();
            fs::write(s.tmp().join("blob-0"), b"partial").unwrap();
        }
        assert!(!out.exists());
        let existing = base.path().join("existing");
        fs::create_dir_all(existing.join("blobs")).unwrap();
        fs::write(existing.join("blobs/keep"), b"x").unwrap();
        drop(Staging::new(&existing).unwrap());
        let names: Vec<_> = fs::read_dir(&existing)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["blobs"]);
        assert!(existing.join("blobs/keep").exists());
    }

    #[test]
    fn commit_moves_blobs_and_bootstrap() {
        let base = tempfile::tempdir().unwrap();
        let out = base.path().join("out");
        let s = Staging::new(&out).unwrap();
        let blob = s.tmp().join("blob-0");
        fs::write(&blob, b"data").unwrap();
        s.commit(&[(blob, [0xab; 32])], b"boot").unwrap();
        assert_eq!(fs::read(out.join("bootstrap")).unwrap(), b"boot");
        assert_eq!(
            fs::read(out.join("blobs").join("ab".repeat(32))).unwrap(),
            b"data"
        );
        assert_eq!(fs::read_dir(&out).unwrap().count(), 2);
    }
}
