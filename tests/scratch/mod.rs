//! Scratch folders for the tests, removed when dropped. Plain std on purpose: a
//! dev-dependency such as `tempfile` turns on features of crates the release build shares
//! (`bitflags/std` under the whole wgpu stack), so `cargo test --release` would compile the
//! GPU backends a second time after `cargo build --release`.

use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty folder under the system's temporary folder.
pub fn tempdir() -> std::io::Result<TempDir> {
    loop {
        // A fresh random state per call: no counter shared between tests.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let path = std::env::temp_dir().join(format!("fedolf-test-{:016x}", hasher.finish()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(TempDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}
