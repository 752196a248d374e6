//! Files that hold secrets (`key_file`, a BMC's `password_file`): read only when no
//! one but the owner can read them, as ssh does with private keys.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Refuses `path` when its mode lets group or others in (anything beyond 0600);
/// the error says the mode and the fix.
pub fn check_mode(path: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "mode {mode:04o} lets others read a secret: `chmod 600 {}`",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The trimmed contents of a secret file whose mode passes [`check_mode`].
pub fn read(path: &Path) -> io::Result<String> {
    check_mode(path)?;
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owner_readable_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "0123456789abcdef\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read(&path).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains(&format!("{mode:04o}")), "{e}");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(read(&path).unwrap(), "0123456789abcdef");
        }
        assert_eq!(
            read(&dir.path().join("missing")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
