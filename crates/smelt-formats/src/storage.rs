//! File bytes: memory-mapped (the normal case: opening a model reads only what is touched) or
//! owned (files built in memory, tests, fuzzing).

use std::ops::Deref;
use std::path::Path;

pub enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    /// Maps `path` read-only. An empty file maps to an empty owned buffer (mmap of length 0 is
    /// an error on Linux).
    pub fn map(path: &Path) -> std::io::Result<Storage> {
        let file = std::fs::File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Storage::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only; like every mmap-based loader we rely on the file not
        // being truncated by another process while it is open.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Storage::Mmap(map))
    }
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}
