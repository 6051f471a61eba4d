//! Result folders: every file is written under a temporary name first and renamed into place
//! only once all of them were written, so a failed run leaves nothing half-written behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One file of a result folder.
pub struct OutputFile {
    /// File name inside the folder.
    pub name: &'static str,
    /// Full contents.
    pub bytes: Vec<u8>,
}

/// Writes `files` into `dir` (created if missing). On any error the temporary files, and the
/// folder if this call created it, are removed, and earlier contents of `dir` stay untouched.
pub fn write_folder(dir: &Path, files: &[OutputFile]) -> Result<()> {
    let created = !dir.exists();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let temp = |name: &str| dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut written: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<()> {
        for file in files {
            let path = temp(file.name);
            written.push(path.clone());
            std::fs::write(&path, &file.bytes)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        for file in files {
            let target = dir.join(file.name);
            std::fs::rename(temp(file.name), &target)
                .with_context(|| format!("cannot move {} into place", target.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for path in &written {
            let _ = std::fs::remove_file(path);
        }
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_all_files_and_cleans_up_on_failure() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let files = [
            OutputFile {
                name: "a.txt",
                bytes: b"a".to_vec(),
            },
            OutputFile {
                name: "b.txt",
                bytes: b"b".to_vec(),
            },
        ];
        write_folder(&dir, &files).unwrap();
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);

        // A name that cannot be created (a folder of that name exists) fails the whole write.
        let bad = root.path().join("bad");
        std::fs::create_dir_all(bad.join("x.txt")).unwrap();
        let files = [
            OutputFile {
                name: "a.txt",
                bytes: b"a".to_vec(),
            },
            OutputFile {
                name: "x.txt",
                bytes: b"x".to_vec(),
            },
        ];
        assert!(write_folder(&bad, &files).is_err());
        let left: Vec<_> = std::fs::read_dir(&bad)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("x.txt")]);
    }
}
