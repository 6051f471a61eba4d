//! Result folders: every file is staged first and moved into place only once all of them
//! were written, so a failed run leaves nothing half-written behind.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One file of a result folder.
pub struct OutputFile {
    /// File name inside the folder.
    pub name: &'static str,
    /// Full contents.
    pub bytes: Vec<u8>,
}

/// Writes `files` into `dir`. The files are staged in a sibling folder first; a new `dir` is
/// that folder renamed (atomic). Into an existing `dir` the files are moved one by one, and
/// files named in `managed` that this run does not write (stale results of an earlier run)
/// are removed. On any error, everything this call placed is removed again, so `dir` never
/// mixes two runs' results.
pub fn write_folder(dir: &Path, files: &[OutputFile], managed: &[&str]) -> Result<()> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = parent.join(format!(".{name}.softvi-tmp-{}", std::process::id()));
    let result = stage_and_place(dir, &staging, files, managed);
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn stage_and_place(
    dir: &Path,
    staging: &Path,
    files: &[OutputFile],
    managed: &[&str],
) -> Result<()> {
    std::fs::create_dir_all(staging)
        .map_err(|e| Error::io("cannot create a staging folder beside", dir, e))?;
    for file in files {
        let path = staging.join(file.name);
        std::fs::write(&path, &file.bytes)
            .map_err(|e| Error::io(format!("cannot write {} staged for", file.name), dir, e))?;
    }
    if !dir.exists() {
        return std::fs::rename(staging, dir)
            .map_err(|e| Error::io("cannot create output folder", dir, e));
    }
    let mut placed: Vec<PathBuf> = Vec::new();
    for file in files {
        let target = dir.join(file.name);
        if let Err(e) = std::fs::rename(staging.join(file.name), &target) {
            for path in &placed {
                let _ = std::fs::remove_file(path);
            }
            return Err(Error::io("cannot move into place", &target, e));
        }
        placed.push(target);
    }
    for stale in managed
        .iter()
        .filter(|m| !files.iter().any(|f| f.name == **m))
    {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    Ok(())
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
        write_folder(&dir, &files, &["a.txt", "b.txt", "c.txt"]).unwrap();
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"b");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        // A second run into the same folder replaces its files and drops stale ones.
        let files = [OutputFile {
            name: "a.txt",
            bytes: b"A".to_vec(),
        }];
        write_folder(&dir, &files, &["a.txt", "b.txt"]).unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"A");
        assert!(!dir.join("b.txt").exists());
        assert_eq!(
            std::fs::read_dir(root.path()).unwrap().count(),
            1,
            "staging folder left"
        );

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
        assert!(write_folder(&bad, &files, &[]).is_err());
        let left: Vec<_> = std::fs::read_dir(&bad)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("x.txt")]);
    }
}
