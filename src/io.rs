//! Atomic file output: write a temporary file beside the target, flush, sync, rename, sync
//! the directory; through a [`Storage`], so that tests can make any step fail.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// A file being written through a [`Storage`].
pub trait StoredFile: Write {
    /// Makes what was written durable (`fsync`).
    fn sync_all(&mut self) -> std::io::Result<()>;
}

impl StoredFile for std::fs::File {
    fn sync_all(&mut self) -> std::io::Result<()> {
        std::fs::File::sync_all(self)
    }
}

/// Where atomic writes go: [`Disk`], or in tests a store that fails on cue (a full disk, a
/// lost permission) to show that a failed write never spoils what was there.
pub trait Storage: Send + Sync {
    /// Creates (or truncates) the file at `path` for writing.
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StoredFile>>;
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Makes the directory's entries durable, so that a rename into it survives a crash.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// The file system.
pub struct Disk;

impl Storage for Disk {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn StoredFile>> {
        Ok(Box::new(std::fs::File::create(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        // Only Unix lets a directory be opened and synced; elsewhere the rename is as durable
        // as the platform makes it.
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        #[cfg(not(unix))]
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path` so that readers see either the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] of what `write` writes (through a buffer), so that a large file needs no
/// copy of itself in memory first.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    write_atomic_to(&Disk, path, write)
}

/// The name of the temporary file beside `name` that this process writes.
fn temp_name(name: &std::ffi::OsStr) -> String {
    format!(".{}.tmp{}", name.to_string_lossy(), std::process::id())
}

/// [`write_atomic_with`] through `store`. On any failure the previous file at `path` is left
/// as it was, the temporary file is removed, and the error names `path`.
pub fn write_atomic_to(
    store: &dyn Storage,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(temp_name(name));
    let mut renamed = false;
    let result = (|| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, store.create(&tmp)?);
        write(&mut f)?;
        let mut f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        store.rename(&tmp, path)?;
        renamed = true;
        store.sync_dir(dir)
    })();
    result.map_err(|e| {
        if !renamed {
            let _ = std::fs::remove_file(&tmp);
        }
        Error::io(path, e)
    })
}

/// Removes the temporary files that writers of `path` killed mid-write (by any process)
/// left beside it.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.strip_prefix(&prefix)
            .is_some_and(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The disk, except that its `fail_at`-th operation (creating, writing, syncing,
    /// renaming; counted from 1) fails as a full disk does.
    struct FailAt {
        fail_at: usize,
        ops: std::sync::Arc<AtomicUsize>,
    }

    fn full(ops: &AtomicUsize, fail_at: usize) -> std::io::Result<()> {
        if ops.fetch_add(1, Ordering::SeqCst) + 1 == fail_at {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    struct FailingFile {
        inner: std::fs::File,
        fail_at: usize,
        ops: std::sync::Arc<AtomicUsize>,
    }

    impl Write for FailingFile {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            full(&self.ops, self.fail_at)?;
            // Half of what was asked, so that writers must loop.
            self.inner.write(&buf[..buf.len().div_ceil(2)])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    impl StoredFile for FailingFile {
        fn sync_all(&mut self) -> std::io::Result<()> {
            full(&self.ops, self.fail_at)?;
            self.inner.sync_all()
        }
    }

    impl Storage for FailAt {
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn StoredFile>> {
            full(&self.ops, self.fail_at)?;
            Ok(Box::new(FailingFile {
                inner: std::fs::File::create(path)?,
                fail_at: self.fail_at,
                ops: self.ops.clone(),
            }))
        }
        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            full(&self.ops, self.fail_at)?;
            std::fs::rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            full(&self.ops, self.fail_at)?;
            Disk.sync_dir(dir)
        }
    }

    #[test]
    fn a_failure_at_any_step_keeps_the_old_file_whole_and_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, b"old contents").unwrap();
        let new: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let mut n = 1;
        loop {
            let store = FailAt {
                fail_at: n,
                ops: Default::default(),
            };
            let r = write_atomic_to(&store, &path, |w| {
                // Small pieces through the buffer, then a flush: several writes below.
                for c in new.chunks(1000) {
                    w.write_all(c)?;
                    w.flush()?;
                }
                Ok(())
            });
            let now = std::fs::read(&path).unwrap();
            match r {
                Ok(()) => {
                    assert_eq!(now, new);
                    break;
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(&path.display().to_string()), "{msg}");
                    assert!(msg.contains("No space left"), "{msg}");
                    // Failing after the rename (syncing the directory) leaves the new file;
                    // anywhere before it, the old one.
                    assert!(now == b"old contents" || now == new, "failure {n}");
                    if now == new {
                        std::fs::write(&path, b"old contents").unwrap();
                    }
                }
            }
            // No temporary file stays behind.
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 1, "failure {n}: {names:?}");
            n += 1;
        }
        // create, 5 writes at least, sync, rename, directory sync.
        assert!(n >= 9, "{n} operations");
    }

    #[test]
    fn stale_temps_of_a_killed_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        for name in [
            ".checkpoint.safetensors.tmp123",
            ".checkpoint.safetensors.tmp9",
        ] {
            std::fs::write(dir.path().join(name), b"partial").unwrap();
        }
        std::fs::write(dir.path().join(".other.tmp1"), b"x").unwrap();
        std::fs::write(dir.path().join(".checkpoint.safetensors.tmpx"), b"x").unwrap();
        remove_stale_temps(&path);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".checkpoint.safetensors.tmpx", ".other.tmp1"]);
    }
}
