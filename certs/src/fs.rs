//! Key material on disk: private files are 0600 and written atomically.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{CertsError, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))
}

/// Writes `data` to `path` atomically (temp file, fsync, rename, fsync of the
/// directory) with the given permission bits.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = PathBuf::from(path);
    tmp.as_mut_os_string().push(".tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    // `mode` is masked by the umask on creation; set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err(&tmp))?;
    file.write_all(data).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Writes a private key file, mode 0600.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic(path, data, 0o600)
}

/// Writes a public file (certificate, state), mode 0644.
pub(crate) fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic(path, data, 0o644)
}

/// Reads a private key file, refusing one that group or others can access.
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CertsError::InsecureKeyFile {
            path: path.to_path_buf(),
            mode,
        });
    }
    fs::read(path).map_err(io_err(path))
}

/// Reads a public file.
pub(crate) fn read_public(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(io_err(path))
}

/// Encodes DER as PEM with the given label (64 columns, as OpenSSL writes it).
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
