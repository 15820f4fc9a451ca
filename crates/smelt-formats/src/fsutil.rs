//! Crash-safe output: write to a temporary file beside the target, flush and sync it, then
//! rename it into place, so that a failed or interrupted write never leaves a half-written file
//! under the final name and never destroys an existing one.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// The temporary name used while writing `path`: `.<name>.tmp-<pid>` in the same directory.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Runs `write` on a buffered temporary file and renames it to `path` on success. On any error
/// the temporary file is removed and `path` is left untouched.
pub fn write_atomic<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_err: impl Fn(PathBuf, std::io::Error) -> E,
) -> Result<(), E> {
    let tmp = temp_path_for(path);
    let file = File::create(&tmp).map_err(|e| io_err(path.to_path_buf(), e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let result = write(&mut w).and_then(|()| {
        let file = w.into_inner().map_err(|e| io_err(path.to_path_buf(), e.into_error()))?;
        file.sync_all().map_err(|e| io_err(path.to_path_buf(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| io_err(path.to_path_buf(), e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Convenience for writers whose errors are plain `std::io::Error`.
pub fn write_atomic_io(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> std::io::Result<()> {
    write_atomic(path, write, |_, e| e)
}
