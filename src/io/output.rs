//! Result folders, written so that softvi never loses a result and never touches a file it
//! did not write.
//!
//! A command claims its folder before it computes anything ([`OutputFolder::claim`]): it takes
//! an exclusive lock beside the folder (a second run on the same folder fails at once), and it
//! accepts only a new or empty folder, or a result folder of the same command, recognised by
//! the marker in its `summary.json` (`"softvi": {"command", "version", "files", "hashes"}`:
//! `hashes` holds each file's [`file_hash`], binding it to this summary); anything
//! else needs `force`. [`OutputFolder::write`] stages every file in a hidden sibling folder,
//! moves the previous result's files aside, moves the new ones in (`summary.json` last), and
//! only then deletes the old ones; any failure puts the previous result back as it was. Files
//! in the folder that the previous result does not list (a picture, the user's notes) are
//! left alone. [`ResultFolder`] reads a result back under the same lock, each file checked
//! against its hash; [`read_input`] reads an input file, refusing what is not a regular file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};

use super::hash::file_hash;

/// The key of the marker every result folder's `summary.json` carries.
pub const MARKER: &str = "softvi";

/// One file of a result folder.
pub struct OutputFile {
    /// File name inside the folder.
    pub name: &'static str,
    /// Full contents.
    pub bytes: Vec<u8>,
}

/// The marker of a result folder: which command wrote it and which files.
struct Marker {
    command: String,
    files: Vec<String>,
}

/// An exclusive lock on an output path: the hidden file `.NAME.softvi-lock` beside it, locked
/// with the operating system's file lock (released when the process ends, however it ends) and
/// removed by its holder when done.
struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock on `folder` (shown to the user as `shown`), or fails at once naming the
    /// holder when another run holds it.
    fn take(path: &Path, shown: &Path) -> Result<Self> {
        Self::take_or(path, |holder| {
            format!(
                "--out {} is being written by another softvi run{holder}: wait for it to \
                 finish or choose another --out (lock file {})",
                shown.display(),
                path.display()
            )
        })
    }

    /// Takes the lock at `path`, or fails at once with `busy(" (pid N)")` when another run
    /// holds it.
    fn take_or(path: &Path, busy: impl Fn(&str) -> String) -> Result<Self> {
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| Error::io("cannot create the lock file", path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok())
                        .map_or(String::new(), |pid| format!(" (pid {pid})"));
                    return Err(Error::InvalidInput(busy(&holder)));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", path, e));
                }
            }
            // The holder removes the file when done: between our open and our lock it may have
            // gone, and a third run may lock a new one. Ours counts only if it is still there.
            if same_file(&file, path) {
                let mut lock = Lock {
                    file,
                    path: path.to_path_buf(),
                };
                let _ = lock.file.set_len(0);
                let _ = write!(lock.file, "{}", std::process::id());
                return Ok(lock);
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Removed while still held, so a waiting run that opened it finds it gone and retries.
        if cfg!(unix) && same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether the open `file` is the file at `path` now.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// A result folder claimed by one command: locked, checked, ready to [`write`](Self::write).
pub struct OutputFolder {
    /// The folder as the user gave it (for messages).
    shown: PathBuf,
    /// The absolute folder, symbolic links and `.` resolved.
    path: PathBuf,
    parent: PathBuf,
    name: String,
    command: &'static str,
    /// The files the command may write (besides `summary.json`).
    names: Vec<&'static str>,
    /// Files of the previous result (named by its marker): replaced or removed by the write.
    previous: Vec<String>,
    /// Files not written by softvi that `force` lets the write replace (those of the same
    /// names as the command's files); kept when the write does not write them.
    forced: Vec<String>,
    /// Folders created above the output folder by the claim, removed again if nothing is
    /// written (deepest first).
    created: Vec<PathBuf>,
    written: bool,
    lock: Option<Lock>,
}

impl OutputFolder {
    /// Claims `dir` for `command`, which writes `summary.json` and some of `names`: locks it
    /// (another run on it fails at once), removes what killed runs left beside it (putting a
    /// half-replaced previous result back), and refuses a folder that holds files softvi did
    /// not write, or the result of another command, unless `force` (then files of the same
    /// names, and another command's result, are replaced; other files are kept). Call it
    /// before computing, so a bad `--out` costs nothing.
    pub fn claim(
        dir: &Path,
        command: &'static str,
        names: &[&'static str],
        force: bool,
    ) -> Result<Self> {
        let shown = dir.to_path_buf();
        let bad = |why: &str| Error::InvalidInput(format!("--out {} {why}", shown.display()));
        let mut created = Vec::new();
        let path = if std::fs::symlink_metadata(dir).is_ok() {
            let meta = std::fs::metadata(dir).map_err(|e| Error::io("cannot read", dir, e))?;
            if !meta.is_dir() {
                return Err(bad("is a file, not a folder"));
            }
            std::fs::canonicalize(dir).map_err(|e| Error::io("cannot resolve", dir, e))?
        } else {
            let name = match dir.components().next_back() {
                Some(Component::Normal(name)) => name.to_owned(),
                _ => return Err(bad("is not a folder name")),
            };
            let parent = dir
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut missing = parent;
            while std::fs::symlink_metadata(missing).is_err() {
                created.push(missing.to_path_buf());
                match missing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => missing = p,
                    _ => break,
                }
            }
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("cannot create the folder of --out", parent, e))?;
            let parent = std::fs::canonicalize(parent)
                .map_err(|e| Error::io("cannot resolve", parent, e))?;
            parent.join(name)
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(bad("is the root folder: write into a folder below it"));
        };
        let (parent, name) = (parent.to_path_buf(), name.to_string_lossy().into_owned());
        let mut folder = OutputFolder {
            shown,
            path,
            parent,
            name,
            command,
            names: names.to_vec(),
            previous: Vec::new(),
            forced: Vec::new(),
            created,
            written: false,
            lock: None,
        };
        folder.lock = Some(Lock::take(&folder.sibling("lock"), &folder.shown)?);
        folder.clean_stale();
        (folder.previous, folder.forced) = folder.check(force)?;
        Ok(folder)
    }

    /// The hidden sibling `.NAME.softvi-KIND` of the folder.
    fn sibling(&self, kind: &str) -> PathBuf {
        self.parent.join(format!(".{}.softvi-{kind}", self.name))
    }

    /// What the folder holds that a write replaces: the previous result's files, and the
    /// files of the same names as the command's that `force` lets it replace. An error when
    /// the folder holds what softvi did not write (without `force`), another command's
    /// result (without `force`), or a folder or link where a file of the result belongs.
    fn check(&self, force: bool) -> Result<(Vec<String>, Vec<String>)> {
        let shown = self.shown.display();
        let entries: Vec<String> = match std::fs::read_dir(&self.path) {
            Ok(list) => list
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io("cannot list", &self.path, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io("cannot list", &self.path, e)),
        };
        if entries.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let present = |name: &str| entries.iter().any(|e| e == name);
        let marker = read_marker(&self.path);
        let mut previous: Vec<String> = Vec::new();
        if let Some(marker) = &marker {
            previous.extend(marker.files.iter().filter(|f| present(f)).cloned());
            if !previous.iter().any(|f| f == "summary.json") {
                previous.push("summary.json".to_owned());
            }
        }
        let ours: Vec<String> = (self.names.iter().copied())
            .chain(["summary.json"])
            .filter(|n| present(n) && !previous.iter().any(|f| f == n))
            .map(str::to_owned)
            .collect();
        for name in previous.iter().chain(&ours) {
            let path = self.path.join(name);
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| Error::io("cannot read", &path, e))?;
            if !meta.is_file() {
                return Err(Error::InvalidInput(format!(
                    "{} is a {}, not a file softvi wrote: softvi replaces only its own files; \
                     move it away or choose another --out",
                    self.shown.join(name).display(),
                    if meta.is_dir() {
                        "folder"
                    } else {
                        "link or special file"
                    }
                )));
            }
        }
        match &marker {
            Some(marker) if marker.command != self.command && !force => {
                return Err(Error::InvalidInput(format!(
                    "--out {shown} holds the result of `softvi {}`; `softvi {}` will not mix \
                     its files into it: choose another --out (or --force to replace that result)",
                    marker.command, self.command
                )));
            }
            None if !force => {
                return Err(Error::InvalidInput(format!(
                    "--out {shown} is not empty and is not a softvi result folder (no \"{MARKER}\" \
                     marker in its summary.json): softvi does not overwrite files it did not \
                     write; choose a new or empty folder, or pass --force to replace the files \
                     of the same names"
                )));
            }
            _ => {}
        }
        if let (Some(name), false) = (ours.first(), force) {
            return Err(Error::InvalidInput(format!(
                "--out {shown} holds {name}, which softvi did not write (its summary.json does \
                 not list it): move it away, or pass --force to replace it"
            )));
        }
        Ok((previous, ours))
    }

    /// Refuses a picture path `path` (given as `flag`) that would replace one of this folder's
    /// files, then checks it as [`check_picture_path`] does. A picture inside the folder
    /// itself is allowed even before the folder exists.
    pub fn check_picture(&self, path: &Path, flag: &str, force: bool) -> Result<()> {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let inside = std::fs::canonicalize(parent).ok().as_deref() == Some(&self.path)
            || (!self.path.exists() && absolute(parent).as_deref() == Some(&self.path));
        if let (true, Some(name)) = (inside, &name) {
            let ours = self.names.iter().any(|n| n == name)
                || self.previous.iter().any(|n| n == name)
                || self.forced.iter().any(|n| n == name)
                || name == "summary.json";
            if ours {
                return Err(Error::InvalidInput(format!(
                    "{flag} {} would overwrite {name} of --out {}: choose another file name",
                    path.display(),
                    self.shown.display()
                )));
            }
            if !self.path.exists() {
                return Ok(());
            }
        }
        check_picture_path(path, flag, force)
    }

    /// Writes `files` and `summary` (as `summary.json`, with the marker naming the command and
    /// the files added) into the folder, replacing the previous result; returns the summary's
    /// text. Nothing of the previous result is lost when this fails.
    pub fn write(
        &mut self,
        summary: &mut serde_json::Value,
        files: Vec<OutputFile>,
    ) -> Result<String> {
        let mut listed: Vec<&str> = files.iter().map(|f| f.name).collect();
        listed.push("summary.json");
        if let Some(name) = files
            .iter()
            .map(|f| f.name)
            .find(|n| !self.names.contains(n))
        {
            return Err(Error::InvalidInput(format!(
                "`softvi {}` does not write {name}: its files are {:?}",
                self.command, self.names
            )));
        }
        let hashes: serde_json::Map<String, serde_json::Value> = (files.iter())
            .map(|f| (f.name.to_owned(), json!(file_hash(&f.bytes))))
            .collect();
        summary[MARKER] = json!({
            "command": self.command,
            "version": env!("CARGO_PKG_VERSION"),
            "files": listed,
            "hashes": hashes,
        });
        let text = serde_json::to_string_pretty(summary)
            .map_err(|e| Error::InvalidInput(format!("cannot encode summary.json: {e}")))?
            + "\n";
        let mut files = files;
        files.push(OutputFile {
            name: "summary.json",
            bytes: text.as_bytes().to_vec(),
        });
        let pid = std::process::id();
        let staging = self.sibling(&format!("tmp-{pid}"));
        let old = self.sibling(&format!("old-{pid}"));
        let result = self.stage_and_place(&staging, &old, &files);
        let _ = std::fs::remove_dir_all(&staging);
        let _ = std::fs::remove_dir_all(&old);
        result?;
        self.written = true;
        Ok(text)
    }

    fn stage_and_place(&self, staging: &Path, old: &Path, files: &[OutputFile]) -> Result<()> {
        let _ = std::fs::remove_dir_all(staging);
        std::fs::create_dir(staging)
            .map_err(|e| Error::io("cannot create a staging folder beside", &self.shown, e))?;
        for file in files {
            let path = staging.join(file.name);
            std::fs::write(&path, &file.bytes).map_err(|e| {
                Error::io(
                    format!("cannot write {} staged for", file.name),
                    &self.shown,
                    e,
                )
            })?;
        }
        if !self.path.exists() {
            return std::fs::rename(staging, &self.path)
                .map_err(|e| Error::io("cannot create output folder", &self.shown, e));
        }
        // The previous result goes aside whole, a forced file only where a new one replaces it;
        // a file of the new result that appeared since the claim is not ours to replace.
        let names: Vec<&str> = files.iter().map(|f| f.name).collect();
        let mut aside = self.previous.clone();
        aside.extend(
            (self.forced.iter())
                .filter(|f| names.contains(&f.as_str()))
                .cloned(),
        );
        aside.sort_by_key(|f| f == "summary.json");
        if let Some(name) = names.iter().find(|n| {
            !aside.iter().any(|p| p == *n) && std::fs::symlink_metadata(self.path.join(n)).is_ok()
        }) {
            return Err(Error::InvalidInput(format!(
                "{} appeared while softvi was running: it was left as it is and nothing was written",
                self.path.join(name).display()
            )));
        }
        swap(&self.path, staging, old, &aside, &names).map_err(|e| {
            e.context(format!(
                "writing --out {} failed, its previous result is kept",
                self.shown.display()
            ))
        })
    }

    /// Removes what runs killed while writing this folder left beside it: a staging folder,
    /// and a half-replaced previous result put back in place. Runs under the lock, so no live
    /// run is writing the folder; a folder of a process still alive is kept all the same.
    fn clean_stale(&self) {
        let Ok(list) = std::fs::read_dir(&self.parent) else {
            return;
        };
        let prefix = format!(".{}.softvi-tmp-", self.name);
        for entry in list.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(&prefix)
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || process_alive(pid) {
                continue;
            }
            let staging = entry.path();
            let old = self.sibling(&format!("old-{pid}"));
            // summary.json is placed last: still staged, the swap was under way.
            if old.exists() && staging.join("summary.json").exists() {
                let placed: Vec<String> = read_marker(&staging)
                    .map(|m| m.files)
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|f| !staging.join(f).exists())
                    .collect();
                let moved: Vec<String> = std::fs::read_dir(&old)
                    .map(|l| {
                        l.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let placed: Vec<&str> = placed.iter().map(String::as_str).collect();
                let moved: Vec<&str> = moved.iter().map(String::as_str).collect();
                restore(&self.path, &staging, &old, &placed, &moved);
            }
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(&old);
        }
        let prefix = format!(".{}.softvi-old-", self.name);
        if let Ok(list) = std::fs::read_dir(&self.parent) {
            for entry in list.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix(&prefix)
                    .and_then(|p| p.parse::<u32>().ok())
                    && pid != std::process::id()
                    && !process_alive(pid)
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

impl Drop for OutputFolder {
    fn drop(&mut self) {
        // The lock file lives in the parent: remove it before the parents this claim created.
        self.lock = None;
        if !self.written {
            for dir in &self.created {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// Replaces the files `previous` of `dir` with the files `names` staged in `staging`: the old
/// ones are moved into `old`, the new ones in (both in order, `summary.json` last). On a
/// failure everything is moved back.
fn swap(dir: &Path, staging: &Path, old: &Path, previous: &[String], names: &[&str]) -> Result<()> {
    let mut moved: Vec<&str> = Vec::new();
    let mut placed: Vec<&str> = Vec::new();
    let result = (|| {
        std::fs::create_dir(old).map_err(|e| {
            Error::io(
                "cannot create a folder for the previous result beside",
                dir,
                e,
            )
        })?;
        for name in previous {
            std::fs::rename(dir.join(name), old.join(name))
                .map_err(|e| Error::io("cannot move aside", &dir.join(name), e))?;
            moved.push(name);
        }
        let mut names = names.to_vec();
        names.sort_by_key(|n| *n == "summary.json");
        for name in names {
            std::fs::rename(staging.join(name), dir.join(name))
                .map_err(|e| Error::io("cannot move into place", &dir.join(name), e))?;
            placed.push(name);
        }
        Ok(())
    })();
    if result.is_err() {
        restore(dir, staging, old, &placed, &moved);
    }
    result
}

/// Undoes a swap: the files `placed` into `dir` go back to `staging`, the files `moved` into
/// `old` come back to `dir`.
fn restore(dir: &Path, staging: &Path, old: &Path, placed: &[&str], moved: &[&str]) {
    for name in placed {
        if std::fs::rename(dir.join(name), staging.join(name)).is_err() {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    for name in moved {
        let _ = std::fs::rename(old.join(name), dir.join(name));
    }
}

/// The marker of the result folder `dir` (from its `summary.json`), if it has a valid one.
fn read_marker(dir: &Path) -> Option<Marker> {
    let path = dir.join("summary.json");
    // A summary is a few kB; a huge file of that name is not one of ours.
    if std::fs::symlink_metadata(&path).ok()?.len() > 64 << 20 {
        return None;
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let marker = summary.get(MARKER)?;
    let command = marker.get("command")?.as_str()?.to_owned();
    let files = marker
        .get("files")?
        .as_array()?
        .iter()
        .map(|f| f.as_str().filter(|n| is_plain_name(n)).map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    Some(Marker { command, files })
}

/// Reads the input file `path` (`what` names it for messages: a flag, an array): only a
/// regular file (a device such as `/dev/zero` never ends, a FIFO blocks), read to the length
/// it had when opened.
pub fn read_input(path: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("cannot read {what}"), path, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidInput(format!(
            "{what} {shown} is {}, not a regular file: softvi reads its inputs from files",
            if meta.is_dir() {
                "a folder"
            } else {
                "a device, pipe or socket"
            }
        )));
    }
    let file = File::open(path).map_err(|e| Error::io(format!("cannot read {what}"), path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot read {what}"), path, e))?
        .len();
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(Error::InvalidInput(format!(
            "{what} {shown} is not a regular file: softvi reads its inputs from files"
        )));
    }
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(|_| {
            Error::InvalidInput(format!(
                "{what} {shown} ({len} bytes) does not fit in memory"
            ))
        })?;
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("cannot read {what}"), path, e))?;
    Ok(bytes)
}

/// [`read_input`] of a text file.
pub fn read_input_text(path: &Path, what: &str) -> Result<String> {
    String::from_utf8(read_input(path, what)?).map_err(|e| {
        Error::InvalidInput(format!(
            "{what} {} is not UTF-8 text (byte {} is not)",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// A result folder read back: its `summary.json`, and the files its marker lists, each checked
/// against the hash the marker records, all under the folder's lock (a run writing it fails,
/// and reading waits for none: a folder being written is refused at once).
pub struct ResultFolder {
    dir: PathBuf,
    /// The parsed `summary.json`.
    pub summary: serde_json::Value,
    /// The marker's `command`.
    pub command: String,
    /// The marker's files, each with its hash.
    hashes: serde_json::Map<String, serde_json::Value>,
    _lock: Option<Lock>,
}

impl ResultFolder {
    /// Locks `dir` and reads its `summary.json`; `flag` names where the folder came from.
    /// Refuses a folder another run is writing, one without a softvi marker, and one whose
    /// marker records no file hashes (written before softvi bound files to their summary).
    pub fn open(dir: &Path, flag: &str) -> Result<Self> {
        let shown = dir.display();
        let path = std::fs::canonicalize(dir)
            .map_err(|e| Error::io(format!("cannot open {flag}"), dir, e))?;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(Error::InvalidInput(format!(
                "{flag} {shown} is not a result folder"
            )));
        };
        let lock_path = parent.join(format!(".{}.softvi-lock", name.to_string_lossy()));
        let lock = match Lock::take_or(&lock_path, |holder| {
            format!(
                "{flag} {shown} is being written by another softvi run{holder}: wait for it to \
                 finish (lock file {})",
                lock_path.display()
            )
        }) {
            Ok(lock) => Some(lock),
            // A folder we may not write beside (read-only): no run writes it either, and the
            // hashes still bind each file to the summary.
            Err(Error::Io { .. }) => None,
            Err(e) => return Err(e),
        };
        let summary_path = path.join("summary.json");
        let text = read_input_text(&summary_path, &format!("{flag} {shown}: summary.json"))
            .map_err(|e| {
                Error::InvalidInput(format!("{flag} {shown} is not a softvi result folder: {e}"))
            })?;
        let summary: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidInput(format!(
                "{flag} {shown} is not a softvi result folder: its summary.json is not JSON ({e})"
            ))
        })?;
        let command = summary[MARKER]["command"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{flag} {shown} is not a softvi result folder: its summary.json has no \
                 \"{MARKER}\" marker"
                ))
            })?;
        let hashes = summary[MARKER]["hashes"]
            .as_object()
            .cloned()
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "{flag} {shown}: its summary.json records no file hashes (written by a softvi \
                 before {}?): run the command again to bind its files to the summary",
                    env!("CARGO_PKG_VERSION")
                ))
            })?;
        Ok(Self {
            dir: path,
            summary,
            command,
            hashes,
            _lock: lock,
        })
    }

    /// Whether the marker lists `name` (with a hash).
    pub fn lists(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    /// The file `name` of the folder, or `None` when the marker does not list it; an error when
    /// it cannot be read or does not match its hash (changed or rewritten after the summary).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(hash) = self.hashes.get(name) else {
            return Ok(None);
        };
        let path = self.dir.join(name);
        let bytes = read_input(&path, "the result file")?;
        let found = file_hash(&bytes);
        if hash.as_str() != Some(found.as_str()) {
            return Err(Error::InvalidInput(format!(
                "{} does not match its summary.json (hash {found}, the summary records {hash}): \
                 the file was changed or rewritten after the summary was written; run the \
                 command again",
                path.display()
            )));
        }
        Ok(Some(bytes))
    }
}

/// Whether `name` is a plain file name (no folder, no `..`): a marker names nothing else.
fn is_plain_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

/// Whether process `pid` is alive (Linux `/proc`; elsewhere assumed gone: callers hold the
/// folder's lock, so no live softvi run writes it).
fn process_alive(pid: u32) -> bool {
    Path::new("/proc/self").exists() && Path::new("/proc").join(pid.to_string()).exists()
}

/// `path` made absolute without touching the file system.
fn absolute(path: &Path) -> Option<PathBuf> {
    std::path::absolute(path).ok()
}

/// Checks, before anything is computed, that a picture can be written at `path` (given as
/// `flag`): a file name, not a folder, in a folder that exists and can be written to, and not
/// an existing file that is not a PNG picture (unless `force`).
pub fn check_picture_path(path: &Path, flag: &str, force: bool) -> Result<()> {
    let shown = path.display();
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(Error::InvalidInput(format!(
            "{flag} {shown} is not a file name"
        )));
    };
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{flag} {shown} is a folder, not a file name"
            )));
        }
        let mut head = [0u8; 8];
        let is_png = File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && head == *b"\x89PNG\r\n\x1a\n";
        if !is_png && !force {
            return Err(Error::InvalidInput(format!(
                "{flag} {shown} exists and is not a PNG picture: softvi will not replace it \
                 (choose another file name, or --force)"
            )));
        }
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !std::fs::metadata(parent).is_ok_and(|m| m.is_dir()) {
        return Err(Error::InvalidInput(format!(
            "{flag} {shown}: the folder {} does not exist",
            parent.display()
        )));
    }
    let probe = parent.join(format!(".{name}.softvi-probe-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| Error::io(format!("{flag}: cannot write into the folder of"), path, e))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &'static str, bytes: &[u8]) -> OutputFile {
        OutputFile {
            name,
            bytes: bytes.to_vec(),
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const NAMES: &[&str] = &["a.txt", "b.txt", "c.txt"];

    fn write(
        dir: &Path,
        command: &'static str,
        files: Vec<OutputFile>,
        force: bool,
    ) -> Result<String> {
        OutputFolder::claim(dir, command, NAMES, force)?.write(&mut json!({"x": 1}), files)
    }

    #[test]
    fn writes_a_marked_folder_and_replaces_only_its_own_result() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let text = write(
            &dir,
            "solve",
            vec![file("a.txt", b"a"), file("b.txt", b"b")],
            false,
        )
        .unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(summary[MARKER]["command"], "solve");
        assert_eq!(
            summary[MARKER]["files"],
            json!(["a.txt", "b.txt", "summary.json"])
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("summary.json")).unwrap(),
            text
        );
        assert_eq!(listing(&dir), ["a.txt", "b.txt", "summary.json"]);
        // A file the user added is kept; the earlier result's b.txt, not written again, goes.
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        write(&dir, "solve", vec![file("a.txt", b"A")], false).unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"A");
        assert_eq!(listing(&dir), ["a.txt", "notes.txt", "summary.json"]);
        // Nothing left beside it: no lock, no staging folder.
        assert_eq!(listing(root.path()), ["out"]);
    }

    #[test]
    fn refuses_folders_softvi_did_not_write_unless_forced() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("user");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), b"user a").unwrap();
        std::fs::write(dir.join("c.txt"), b"user c").unwrap();
        let e = write(&dir, "solve", vec![file("a.txt", b"a")], false).unwrap_err();
        assert!(e.to_string().contains("not a softvi result folder"), "{e}");
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"user a");
        // --force replaces what it writes and keeps the rest, c.txt included.
        write(&dir, "solve", vec![file("a.txt", b"a")], true).unwrap();
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"a");
        assert_eq!(std::fs::read(dir.join("c.txt")).unwrap(), b"user c");
        // Now marked, but c.txt is still not softvi's: a write of c.txt is refused.
        let e = write(&dir, "solve", vec![file("c.txt", b"c")], false).unwrap_err();
        assert!(
            e.to_string().contains("c.txt, which softvi did not write"),
            "{e}"
        );
        // Another command's folder is refused; --force replaces its whole result.
        let e = write(&dir, "sample", vec![file("b.txt", b"b")], false).unwrap_err();
        assert!(
            e.to_string().contains("holds the result of `softvi solve`"),
            "{e}"
        );
        write(&dir, "sample", vec![file("b.txt", b"b")], true).unwrap();
        assert_eq!(listing(&dir), ["b.txt", "c.txt", "summary.json"]);
        // A folder where a file belongs is refused even with --force.
        std::fs::create_dir_all(dir.join("a.txt/x")).unwrap();
        let e = write(&dir, "sample", vec![file("a.txt", b"a")], true).unwrap_err();
        assert!(e.to_string().contains("is a folder"), "{e}");
        // The folder's path must be a folder.
        let e = write(&dir.join("c.txt"), "solve", vec![], false).unwrap_err();
        assert!(e.to_string().contains("is a file, not a folder"), "{e}");
    }

    #[test]
    fn a_failed_swap_puts_the_previous_result_back() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let staging = root.path().join("staging");
        let old = root.path().join("old");
        std::fs::create_dir_all(dir.join("b.txt/x")).unwrap();
        std::fs::create_dir(&staging).unwrap();
        for (name, bytes) in [("a.txt", "old a"), ("summary.json", "old s")] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        for name in ["a.txt", "b.txt", "summary.json"] {
            std::fs::write(staging.join(name), "new").unwrap();
        }
        // a.txt goes in, then b.txt fails on the folder of that name.
        let previous = ["a.txt".to_owned(), "summary.json".to_owned()];
        let e = swap(
            &dir,
            &staging,
            &old,
            &previous,
            &["a.txt", "b.txt", "summary.json"],
        );
        assert!(e.is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "old a");
        assert_eq!(
            std::fs::read_to_string(dir.join("summary.json")).unwrap(),
            "old s"
        );
        assert!(dir.join("b.txt/x").is_dir());
        assert_eq!(listing(&dir), ["a.txt", "b.txt", "summary.json"]);
    }

    #[test]
    fn a_second_claim_fails_at_once_while_the_first_holds_the_lock() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let first = OutputFolder::claim(&dir, "solve", NAMES, false).unwrap();
        let e = OutputFolder::claim(&dir, "solve", NAMES, false)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("is being written by another softvi run"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        assert!(listing(root.path()).is_empty(), "lock file left");
        OutputFolder::claim(&dir, "solve", NAMES, false).unwrap();
    }

    #[test]
    fn a_killed_run_is_cleaned_up_and_its_half_swap_undone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        write(
            &dir,
            "solve",
            vec![file("a.txt", b"old a"), file("b.txt", b"old b")],
            false,
        )
        .unwrap();
        let before: Vec<_> = ["a.txt", "b.txt", "summary.json"]
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .into();
        // A run (a pid no process has: Linux pids stay below 2^22) killed in mid-swap: the old
        // result aside, its a.txt and c.txt moved in, b.txt and summary.json still staged.
        let staging = root.path().join(".out.softvi-tmp-999999999");
        let old = root.path().join(".out.softvi-old-999999999");
        std::fs::create_dir(&staging).unwrap();
        std::fs::create_dir(&old).unwrap();
        for name in ["a.txt", "b.txt", "summary.json"] {
            std::fs::rename(dir.join(name), old.join(name)).unwrap();
        }
        let marker = json!({MARKER: {"command": "solve", "files": ["a.txt", "b.txt", "c.txt", "summary.json"]}});
        std::fs::write(staging.join("summary.json"), marker.to_string()).unwrap();
        std::fs::write(staging.join("b.txt"), b"new b").unwrap();
        std::fs::write(dir.join("a.txt"), b"new a").unwrap();
        std::fs::write(dir.join("c.txt"), b"new c").unwrap();
        // Another killed run's lone staging folder.
        std::fs::create_dir(root.path().join(".out.softvi-tmp-999999998")).unwrap();
        drop(OutputFolder::claim(&dir, "solve", NAMES, false).unwrap());
        let after: Vec<_> = ["a.txt", "b.txt", "summary.json"]
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .into();
        assert_eq!(after, before);
        assert_eq!(listing(&dir), ["a.txt", "b.txt", "summary.json"]);
        assert_eq!(listing(root.path()), ["out"]);
    }

    #[test]
    fn pictures_may_not_replace_results_or_other_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("out");
        let folder = OutputFolder::claim(&dir, "solve", NAMES, false).unwrap();
        let e = folder
            .check_picture(&dir.join("a.txt"), "--png", true)
            .unwrap_err();
        assert!(e.to_string().contains("would overwrite a.txt"), "{e}");
        folder
            .check_picture(&dir.join("v.png"), "--png", false)
            .unwrap();
        let e = folder
            .check_picture(&root.path().join("no/such/v.png"), "--png", false)
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = folder
            .check_picture(root.path(), "--png", false)
            .unwrap_err();
        assert!(e.to_string().contains("is a folder"), "{e}");
        let text = root.path().join("notes.txt");
        std::fs::write(&text, b"mine").unwrap();
        let e = folder.check_picture(&text, "--png", false).unwrap_err();
        assert!(e.to_string().contains("not a PNG picture"), "{e}");
        folder.check_picture(&text, "--png", true).unwrap();
        let png = root.path().join("old.png");
        std::fs::write(&png, b"\x89PNG\r\n\x1a\n...").unwrap();
        folder.check_picture(&png, "--png", false).unwrap();
        assert_eq!(std::fs::read(&text).unwrap(), b"mine");
    }
}
