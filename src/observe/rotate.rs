//! A file that rotates by size: once a write would take `FILE` past `max_bytes`, `FILE` becomes
//! `FILE.1`, `FILE.1` becomes `FILE.2`, and so on; files past `FILE.<max_files>` are removed.
//! Used by the access log and the audit trail, always from their writer threads.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotatePolicy {
    pub max_bytes: u64,
    pub max_files: u32,
}

pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    /// (device, inode) of the open file, to tell whether the path still names it.
    id: (u64, u64),
    pub policy: RotatePolicy,
}

/// `FILE.n`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of a rotated log that exist now, oldest first (`FILE.n` ... `FILE.1`, `FILE`).
pub fn files_oldest_first(path: &Path, max_files: u32) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=max_files)
        .rev()
        .map(|n| numbered(path, n))
        .filter(|p| p.is_file())
        .collect();
    if path.is_file() {
        out.push(path.to_path_buf());
    }
    out
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl RotatingFile {
    pub fn open(path: &Path, policy: RotatePolicy) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        let file = open_append(path)?;
        let meta = file.metadata()?;
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size: meta.len(),
            id: (meta.dev(), meta.ino()),
            policy,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the open file (it was not removed, renamed away or
    /// replaced since it was opened). One `stat`.
    pub fn is_current(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false)
    }

    /// Flushes the file's data to the disk (`fdatasync`).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Writes `bytes` with one `write_all` (no user-space buffer: the bytes are with the kernel
    /// when this returns), rotating first when they would not fit.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.policy.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Writes a batch of newline-terminated lines, rotating between lines so that no file
    /// grows past `max_bytes` by more than one line (as if the lines came one at a time).
    pub fn write_lines(&mut self, mut batch: &[u8]) -> io::Result<()> {
        while !batch.is_empty() {
            let room = self.policy.max_bytes.saturating_sub(self.size) as usize;
            if batch.len() <= room {
                return self.write(batch);
            }
            // The longest run of whole lines that fits, or else one line (which rotates).
            let fit = batch[..room]
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            let take = if fit > 0 {
                fit
            } else {
                batch
                    .iter()
                    .position(|b| *b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(batch.len())
            };
            self.write(&batch[..take])?;
            batch = &batch[take..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let n = self.policy.max_files.max(1);
        let oldest = numbered(&self.path, n);
        if oldest.exists() {
            std::fs::remove_file(&oldest)?;
        }
        for i in (1..n).rev() {
            let from = numbered(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        let meta = self.file.metadata()?;
        self.id = (meta.dev(), meta.ino());
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_rotate_between_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = RotatingFile::open(
            &path,
            RotatePolicy {
                max_bytes: 25,
                max_files: 10,
            },
        )
        .unwrap();
        let batch: Vec<u8> = (0..10)
            .flat_map(|i| format!("line-{i:04}\n").into_bytes())
            .collect();
        f.write_lines(&batch).unwrap();
        let mut all = String::new();
        for i in (1..=10).rev() {
            if let Ok(t) = std::fs::read_to_string(numbered(&path, i)) {
                assert!(t.len() <= 25, "{t:?}");
                assert!(t.ends_with('\n'));
                all.push_str(&t);
            }
        }
        all.push_str(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(all.as_bytes(), &batch[..], "every line once, in order");
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let mut f = RotatingFile::open(
            &path,
            RotatePolicy {
                max_bytes: 10,
                max_files: 2,
            },
        )
        .unwrap();
        for i in 0..5 {
            f.write(format!("line{i}\n").as_bytes()).unwrap(); // 6 bytes: one line per file
        }
        let files = files_oldest_first(&path, 2);
        let contents: Vec<String> = files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        assert_eq!(contents, vec!["line2\n", "line3\n", "line4\n"]);
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn knows_when_its_path_names_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("z.log");
        let policy = RotatePolicy {
            max_bytes: 8,
            max_files: 2,
        };
        let mut f = RotatingFile::open(&path, policy).unwrap();
        assert!(f.is_current());
        f.write(b"0123456\n").unwrap();
        f.write(b"abc\n").unwrap(); // rotated: the path names the new file, still ours
        assert!(f.is_current());
        f.sync().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!f.is_current());
        std::fs::write(&path, "someone else's\n").unwrap();
        assert!(!f.is_current());
    }

    #[test]
    fn reopening_counts_the_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.log");
        std::fs::write(&path, "0123456789").unwrap();
        let mut f = RotatingFile::open(
            &path,
            RotatePolicy {
                max_bytes: 12,
                max_files: 1,
            },
        )
        .unwrap();
        f.write(b"abc\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(numbered(&path, 1)).unwrap(),
            "0123456789"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
    }
}
