//! Crash-safe output, one rule for every file smelt writes.
//!
//! [`write_atomic`] first decides what the output path names ([`OutputTarget::resolve`]):
//!
//! | the path names                                   | what happens                                         |
//! |--------------------------------------------------|------------------------------------------------------|
//! | nothing yet, or a regular file                   | written to `.NAME.tmp-PID` beside it, flushed, synced, renamed over it (an existing file keeps its permissions) |
//! | a symbolic link (to a file, or dangling)         | the link is followed and its target replaced as above; the link stays a link |
//! | a character device or a FIFO (`/dev/null`, a pipe) | written in place, as any Unix tool does          |
//! | an open descriptor (`/dev/stdout`, `/dev/fd/N`, `/proc/...`) | written in place                         |
//! | a directory, a block device, a socket            | refused with an error that says so, before any work  |
//!
//! So a failed or interrupted write never leaves a half-written file under the final name and
//! never destroys an existing one, and device nodes are never replaced by regular files.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind};
use std::path::{Path, PathBuf};

/// Symbolic links followed at most (as the kernel's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// What an output path names, decided before anything is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputTarget {
    /// A regular file, new or existing (`path` is the link-resolved name): replaced atomically.
    Replace { path: PathBuf, existing: bool },
    /// A character device, FIFO or open descriptor: written in place.
    Direct { path: PathBuf },
}

fn refuse(kind: ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

/// Follows `path`'s final component through symbolic links (dangling ones included) to the name
/// that is, or will be, the file itself.
fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = std::fs::read_link(&p)?;
                p = if target.is_absolute() { target } else { p.parent().unwrap_or(Path::new("")).join(target) };
            }
            Ok(_) => return Ok(p),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(p),
            Err(e) => return Err(e),
        }
    }
    Err(refuse(ErrorKind::InvalidInput, format!("more than {MAX_LINKS} symbolic links to follow (a loop?)")))
}

/// A path that names an already open descriptor rather than a file in a folder.
fn is_descriptor_path(path: &Path) -> bool {
    path.starts_with("/proc") || path.starts_with("/dev/fd") || ["/dev/stdout", "/dev/stderr", "/dev/stdin"].iter().any(|p| path == Path::new(p))
}

impl OutputTarget {
    /// Decides how `path` will be written; refuses directories, block devices, sockets and paths
    /// whose folder does not exist, with a message that says what to do.
    pub fn resolve(path: &Path) -> std::io::Result<OutputTarget> {
        if path.as_os_str().is_empty() {
            return Err(refuse(ErrorKind::InvalidInput, "the output path is empty".into()));
        }
        let describe = |m: &std::fs::Metadata, at: &Path| -> std::io::Result<OutputTarget> {
            let ft = m.file_type();
            if ft.is_dir() {
                return Err(refuse(ErrorKind::IsADirectory, "it is a directory: give a file name (inside it, if that is where the file should go)".into()));
            }
            if ft.is_file() {
                return Ok(OutputTarget::Replace { path: at.to_path_buf(), existing: true });
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                if ft.is_char_device() || ft.is_fifo() {
                    return Ok(OutputTarget::Direct { path: at.to_path_buf() });
                }
                let what = if ft.is_block_device() { "a block device" } else if ft.is_socket() { "a socket" } else { "a special file" };
                return Err(refuse(ErrorKind::InvalidInput, format!("it is {what}: smelt writes regular files, character devices (such as /dev/null) and pipes")));
            }
            #[allow(unreachable_code)]
            Err(refuse(ErrorKind::InvalidInput, "it is not a regular file".into()))
        };
        if is_descriptor_path(path) {
            let m = std::fs::metadata(path)?;
            return match describe(&m, path)? {
                OutputTarget::Replace { .. } => Ok(OutputTarget::Direct { path: path.to_path_buf() }),
                direct => Ok(direct),
            };
        }
        let real = follow_links(path)?;
        match std::fs::metadata(&real) {
            Ok(m) => describe(&m, &real),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let parent = real.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                match std::fs::metadata(parent) {
                    Ok(m) if m.is_dir() => Ok(OutputTarget::Replace { path: real, existing: false }),
                    Ok(_) => Err(refuse(ErrorKind::NotADirectory, format!("{} is not a folder", parent.display()))),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        Err(refuse(ErrorKind::NotFound, format!("the folder {} does not exist; create it first", parent.display())))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

/// The temporary name used while writing `path`: `.<name>.tmp-<pid>` in the same directory.
pub fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Runs `write` on a buffered writer for `path` and finishes the output as [`OutputTarget`]
/// says: a regular file is written to a temporary file and renamed into place on success (on any
/// error the temporary file is removed and `path` is left untouched); a device or pipe is written
/// in place. Every I/O failure, a full disk included, is returned through `io_err` with `path`.
pub fn write_atomic<E>(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
    io_err: impl Fn(PathBuf, std::io::Error) -> E,
) -> Result<(), E> {
    let err = |e| io_err(path.to_path_buf(), e);
    match OutputTarget::resolve(path).map_err(err)? {
        OutputTarget::Direct { path: dev } => {
            let file = OpenOptions::new().write(true).open(&dev).map_err(err)?;
            let mut w = BufWriter::with_capacity(1 << 16, file);
            write(&mut w)?;
            w.into_inner().map_err(|e| err(e.into_error()))?;
            Ok(())
        }
        OutputTarget::Replace { path: real, existing } => {
            let tmp = temp_path_for(&real);
            let file = File::create(&tmp).map_err(err)?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            let result = write(&mut w).and_then(|()| {
                let file = w.into_inner().map_err(|e| err(e.into_error()))?;
                if existing {
                    if let Ok(m) = std::fs::metadata(&real) {
                        file.set_permissions(m.permissions()).map_err(err)?;
                    }
                }
                file.sync_all().map_err(err)?;
                std::fs::rename(&tmp, &real).map_err(err)
            });
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
    }
}

/// Convenience for writers whose errors are plain `std::io::Error`.
pub fn write_atomic_io(path: &Path, write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> std::io::Result<()> {
    write_atomic(path, write, |_, e| e)
}

/// Whether `path` is written in place (a device, a pipe, an open descriptor such as
/// `/dev/stdout`) rather than as a file: such outputs have no extension to choose a format by.
pub fn is_stream(path: &Path) -> bool {
    matches!(OutputTarget::resolve(path), Ok(OutputTarget::Direct { .. }))
}

/// Checks before long work that `path` can be written (see [`OutputTarget::resolve`]), so that a
/// bad `-o` fails in the first second rather than after the work.
pub fn check_output(path: &Path) -> std::io::Result<()> {
    OutputTarget::resolve(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("smelt-fsutil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_text(p: &Path, s: &str) -> std::io::Result<()> {
        use std::io::Write;
        write_atomic_io(p, |w| w.write_all(s.as_bytes()))
    }

    #[test]
    fn regular_files_are_replaced_whole_or_not_at_all() {
        let d = dir("regular");
        let p = d.join("out.txt");
        write_text(&p, "one").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one");
        let failed: std::io::Result<()> = write_atomic_io(&p, |w| {
            use std::io::Write;
            w.write_all(b"half")?;
            Err(std::io::Error::other("stopped"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one", "a failed write leaves the old file");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temporary file is left");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_followed_and_stay_links() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let d = dir("links");
        let target = d.join("target.txt");
        std::fs::write(&target, "old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = d.join("link.txt");
        symlink("target.txt", &link).unwrap();
        let chain = d.join("chain.txt");
        symlink(&link, &chain).unwrap();
        write_text(&chain, "new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(&chain).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o640, "permissions kept");
        // A dangling link creates its target.
        let dangling = d.join("dangling.txt");
        symlink("made.txt", &dangling).unwrap();
        write_text(&dangling, "made").unwrap();
        assert_eq!(std::fs::read_to_string(d.join("made.txt")).unwrap(), "made");
        // A loop is refused.
        symlink("loop2", d.join("loop1")).unwrap();
        symlink("loop1", d.join("loop2")).unwrap();
        assert!(write_text(&d.join("loop1"), "x").is_err());
    }

    /// A character device `major:minor` made in `d` when this process may (as root: so that a
    /// regression here can never replace the system's own /dev nodes), else the system's `sys`.
    #[cfg(unix)]
    fn char_device(d: &Path, name: &str, (major, minor): (u32, u32), sys: &str) -> PathBuf {
        let p = d.join(name);
        let made = std::process::Command::new("mknod").arg(&p).arg("c").arg(major.to_string()).arg(minor.to_string()).output();
        if made.is_ok_and(|o| o.status.success()) {
            p
        } else {
            PathBuf::from(sys)
        }
    }

    #[cfg(unix)]
    #[test]
    fn devices_and_pipes_are_written_in_place() {
        let d = dir("devices");
        let null = char_device(&d, "null", (1, 3), "/dev/null");
        write_text(&null, "discarded").unwrap();
        assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device_like());
        let full = char_device(&d, "full", (1, 7), "/dev/full");
        let e = write_text(&full, &"x".repeat(1 << 17)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28), "ENOSPC from a full device: {e}");
        assert!(std::fs::metadata(&full).unwrap().file_type().is_char_device_like());
        // A FIFO with a reader on the other end.
        let fifo = d.join("fifo");
        if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
            };
            write_text(&fifo, "through the pipe").unwrap();
            assert_eq!(reader.join().unwrap(), "through the pipe");
            assert!(!std::fs::metadata(&fifo).unwrap().is_file(), "the FIFO stays a FIFO");
        }
    }

    #[test]
    fn directories_and_missing_folders_are_refused_before_writing() {
        let d = dir("refuse");
        let e = OutputTarget::resolve(&d).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = OutputTarget::resolve(&d.join("no/such/out.txt")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(OutputTarget::resolve(Path::new("")).is_err());
        let mut called = false;
        assert!(write_atomic_io(&d, |_| {
            called = true;
            Ok(())
        })
        .is_err());
        assert!(!called, "nothing is computed for a path that cannot be written");
    }

    trait CharLike {
        fn is_char_device_like(&self) -> bool;
    }
    impl CharLike for std::fs::FileType {
        fn is_char_device_like(&self) -> bool {
            #[cfg(unix)]
            {
                use std::os::unix::fs::FileTypeExt;
                self.is_char_device()
            }
            #[cfg(not(unix))]
            false
        }
    }
}
