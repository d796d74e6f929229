//! `Name`: a validated directory entry name (one path component).

use crate::error::NameError;
use crate::layout::MAX_NAME_LEN;

/// Checks that `bytes` is a valid path component: non-empty, at most 255
/// bytes, no `/` or NUL, not `.` or `..`.
pub fn check_name(bytes: &[u8]) -> Result<(), NameError> {
    if bytes.is_empty() {
        return Err(NameError::Empty);
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if bytes == b"." || bytes == b".." {
        return Err(NameError::Dot);
    }
    for &b in bytes {
        match b {
            b'/' => return Err(NameError::Slash),
            0 => return Err(NameError::Nul),
            _ => {}
        }
    }
    Ok(())
}

/// A directory entry name that passed [`check_name`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    /// Validates and wraps `bytes`.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, NameError> {
        let bytes = bytes.into();
        check_name(&bytes)?;
        Ok(Name(bytes))
    }
    /// The name's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&str> for Name {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        Name::new(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("."), Err(NameError::Dot));
        assert_eq!(Name::new(".."), Err(NameError::Dot));
        assert_eq!(Name::new("a/b"), Err(NameError::Slash));
        assert_eq!(Name::new(&b"a\0b"[..]), Err(NameError::Nul));
        assert_eq!(Name::new(vec![b'x'; 256]), Err(NameError::TooLong));
        assert!(Name::new(vec![b'x'; 255]).is_ok());
        assert!(Name::new("...").is_ok());
        assert!(Name::new(&[0xffu8, 0xfe][..]).is_ok());
    }
}
