//! `softvi merge`: the folders of `softvi solve --tasks I/N` shards joined into the folder the
//! whole solve would have written (Slurm job arrays).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde_json::{Value, json};

use super::EXIT_DIVERGED;
use super::solve::SOLVE_FILES;
use super::summary::path_json;
use softvi::engine::solution::Status;
use softvi::io::npy;
use softvi::io::output::{MARKER, OutputFile, OutputFolder, ResultFolder};

#[derive(Args, Debug)]
pub(super) struct MergeArgs {
    /// Output folder: the folder a single `softvi solve` of the whole batch would have written.
    /// It must be new, empty or a folder of an earlier `softvi solve`, whose result is replaced.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Write into a non-empty --out that is not a `softvi solve` folder (files of the same
    /// names are replaced, other files kept).
    #[arg(long)]
    force: bool,
    /// The shard folders written by `softvi solve --tasks I/N`, in any order.
    #[arg(value_name = "SHARD_DIR", required = true, num_args = 1..)]
    shards: Vec<PathBuf>,
}

/// Lists of summary.json that hold one entry per task: the merge joins them in task order.
const PER_TASK: &[&[&str]] = &[
    &["goals"],
    &["iterations"],
    &["evaluation_sweeps"],
    &["residual"],
    &["error_bound"],
    &["precision_limited"],
    &["status"],
    &["unreachable"],
    &["occupancy", "residual"],
    &["occupancy", "status"],
];

/// Fields of summary.json that may differ between the shards of one solve: per-machine
/// timing and adapter, which shard it is, the files a diverged shard did not write, the
/// forward pass's sweep count (the batch's slowest task's; the merge takes the largest), and
/// where each shard read its world file (a copy, a link, another working directory: the
/// fingerprint compares the contents).
const MAY_DIFFER: &[&[&str]] = &[
    &["tasks"],
    &["seconds"],
    &["solve_seconds"],
    &["adapter"],
    &["shard", "index"],
    &["shard", "count"],
    &["shard", "tasks"],
    &[MARKER, "files"],
    &[MARKER, "hashes"],
    &["occupancy", "iterations"],
    &["world", "map", "path"],
    &["world", "source"],
    &["mdp", "path"],
];

/// One shard folder, read and locked (no run rewrites it while the merge reads it).
struct ShardFolder {
    dir: PathBuf,
    /// The folder's absolute path, for summary.json.
    path: Value,
    folder: std::rc::Rc<ResultFolder>,
    summary: Value,
    index: u64,
    count: u64,
    /// Its tasks in the whole batch, `start..end`.
    start: usize,
    end: usize,
    batch: usize,
    fingerprint: String,
    diverged: bool,
    /// The arrays it wrote (its marker's files but summary.json).
    files: Vec<String>,
}

impl ShardFolder {
    /// Reads `dir/summary.json` and checks that it is a shard of a `softvi solve`.
    /// Reads `dir` through `folder`, its [`ResultFolder`] (shared by the names of one folder:
    /// one lock each).
    fn read(dir: &Path, folder: std::rc::Rc<ResultFolder>) -> Result<Self> {
        let shown = dir.display();
        let summary = folder.summary.clone();
        let command = summary[MARKER]["command"].as_str();
        ensure!(
            command == Some("solve"),
            "{shown} is not a solve folder: its summary.json {}",
            match command {
                Some(c) => format!("is of `softvi {c}`"),
                None => "has no softvi marker".to_owned(),
            }
        );
        let shard = &summary["shard"];
        ensure!(
            shard.is_object(),
            "{shown} is a solve of the whole batch, not a shard: solve with --tasks I/N"
        );
        let number = |v: &Value, what: &str| {
            v.as_u64()
                .with_context(|| format!("{shown}: summary.json's shard.{what} is not a count"))
        };
        let (start, end) = (
            number(&shard["tasks"][0], "tasks")? as usize,
            number(&shard["tasks"][1], "tasks")? as usize,
        );
        let batch = number(&shard["batch_tasks"], "batch_tasks")? as usize;
        ensure!(
            start < end && end <= batch,
            "{shown}: summary.json's shard.tasks {start}..{end} is not a range of its \
             {batch}-task batch"
        );
        let fingerprint = shard["fingerprint"]
            .as_str()
            .with_context(|| format!("{shown}: summary.json's shard has no fingerprint"))?
            .to_owned();
        for key in PER_TASK {
            if let Some(list) = get(&summary, key) {
                ensure!(
                    list.as_array().map(Vec::len) == Some(end - start),
                    "{shown}: summary.json's {} does not hold one entry for each of its {} tasks",
                    key.join("."),
                    end - start
                );
            }
        }
        let statuses = (summary["status"].as_array())
            .with_context(|| format!("{shown}: summary.json has no status list"))?;
        let names = [
            Status::Converged,
            Status::MaxIters,
            Status::Diverged,
            Status::Horizon,
        ]
        .map(|s| s.name());
        if let Some((k, bad)) = (statuses.iter().enumerate())
            .find(|(_, s)| !s.as_str().is_some_and(|s| names.contains(&s)))
        {
            bail!(
                "{shown}: summary.json's status[{k}] is {bad}, not a status softvi writes \
                 ({})",
                names.join(", ")
            );
        }
        let diverged = statuses.iter().any(|s| s == "diverged");
        let (index, count) = (
            number(&shard["index"], "index")?,
            number(&shard["count"], "count")?,
        );
        ensure!(
            index < count,
            "{shown}: summary.json's shard.index {index} is not below its shard.count {count}"
        );
        let expected = softvi::world::shard::task_range(batch, index as usize, count as usize);
        ensure!(
            expected == (start..end),
            "{shown}: summary.json's shard.tasks {start}..{end} is not shard {index} of {count} \
             of a {batch}-task batch (that is tasks {}..{})",
            expected.start,
            expected.end
        );
        let files: Vec<String> = (summary[MARKER]["files"].as_array())
            .with_context(|| format!("{shown}: summary.json's marker lists no files"))?
            .iter()
            .filter_map(Value::as_str)
            .filter(|f| *f != "summary.json")
            .map(str::to_owned)
            .collect();
        if let Some(f) = files.iter().find(|f| !SOLVE_FILES.contains(&f.as_str())) {
            bail!("{shown}: summary.json lists {f}, which `softvi solve` does not write");
        }
        ensure!(
            diverged || files.iter().any(|f| f == "values.npy"),
            "{shown}: summary.json lists no values.npy, and the shard did not diverge"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            path: path_json(dir, "shard folder")?,
            folder,
            index,
            count,
            summary,
            start,
            end,
            batch,
            fingerprint,
            diverged,
            files,
        })
    }

    /// The summary without what may differ between shards ([`MAY_DIFFER`], [`PER_TASK`]):
    /// what must be equal. With `diverged` somewhere, also without what a diverged solve
    /// writes differently: no occupancy, no steps, and the layout of the arrays it did not
    /// write.
    fn settings(&self, diverged: bool) -> Value {
        let mut settings = self.summary.clone();
        for key in PER_TASK.iter().chain(MAY_DIFFER) {
            remove(&mut settings, key);
        }
        if diverged {
            remove(&mut settings, &["occupancy"]);
            remove(&mut settings, &["layout"]);
            remove(&mut settings, &["all_steps"]);
        }
        settings
    }
}

/// The value at `key` (a path of object keys).
fn get<'a>(value: &'a Value, key: &[&str]) -> Option<&'a Value> {
    key.iter().try_fold(value, |v, k| v.get(k))
}

/// Removes the value at `key` (a path of object keys), if there.
fn remove(value: &mut Value, key: &[&str]) {
    let (last, parents) = key.split_last().expect("a key");
    let mut v = value;
    for k in parents {
        match v.get_mut(k) {
            Some(next) => v = next,
            None => return,
        }
    }
    if let Some(object) = v.as_object_mut() {
        object.remove(*last);
    }
}

/// The first field (as `a.b.c`, keys in order) where `a` and `b` differ, with both values.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<(String, String, String)> {
    let join = |k: &str| {
        if at.is_empty() {
            k.to_owned()
        } else {
            format!("{at}.{k}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v, &join(k)),
                (u, v) => {
                    let show = |w: Option<&Value>| w.map_or("(none)".to_owned(), Value::to_string);
                    Some((join(k), show(u), show(v)))
                }
            })
        }
        _ if a == b => None,
        _ => Some((
            if at.is_empty() { "(summary)" } else { at }.to_owned(),
            a.to_string(),
            b.to_string(),
        )),
    }
}

/// Checks that the shards, sorted by their first task, cover `0..batch` exactly once; the
/// error names every gap and every overlap.
fn check_coverage(shards: &[ShardFolder], batch: usize) -> Result<()> {
    let mut problems = Vec::new();
    // The shard reaching furthest so far, and where it ends.
    let mut covered: Option<&ShardFolder> = None;
    let mut end = 0;
    for s in shards {
        if s.start > end {
            problems.push(format!("tasks {end}..{} missing", s.start));
        }
        if let Some(c) = covered.filter(|_| s.start < end) {
            problems.push(format!(
                "tasks {}..{} in both {} and {}",
                s.start,
                end.min(s.end),
                c.dir.display(),
                s.dir.display()
            ));
        }
        if s.end > end {
            (covered, end) = (Some(s), s.end);
        }
    }
    if end < batch {
        problems.push(format!("tasks {end}..{batch} missing"));
    }
    ensure!(
        problems.is_empty(),
        "the shards do not cover the {batch}-task batch exactly once: {}",
        problems.join("; ")
    );
    Ok(())
}

/// Joins one array file of every shard along axis 0 in task order, bit for bit.
fn merge_array(shards: &[ShardFolder], name: &'static str, batch: usize) -> Result<OutputFile> {
    let mut data = Vec::new();
    let mut tail: Option<(Vec<usize>, &Path)> = None;
    for s in shards {
        let path = s.dir.join(name);
        let bytes = s.folder.read(name)?.with_context(|| {
            format!(
                "{}: its summary.json lists {name} but records no hash for it",
                s.dir.display()
            )
        })?;
        let array = npy::decode_f32(&bytes)
            .with_context(|| format!("{} is not a float32 .npy softvi wrote", path.display()))?;
        ensure!(
            array.shape.first() == Some(&(s.end - s.start)),
            "{}: shape {:?} does not lead with the shard's {} tasks",
            path.display(),
            array.shape,
            s.end - s.start
        );
        let rest = array.shape[1..].to_vec();
        match &tail {
            Some((shape, first)) if *shape != rest => bail!(
                "{name} of {} is [_, {}] per task, of {} [_, {}]: not shards of one solve",
                first.display(),
                dims(shape),
                s.dir.display(),
                dims(&rest)
            ),
            Some(_) => {}
            None => tail = Some((rest, &s.dir)),
        }
        data.extend_from_slice(&array.data);
    }
    let shape = [vec![batch], tail.map(|t| t.0).unwrap_or_default()].concat();
    Ok(OutputFile {
        name,
        bytes: npy::encode_f32(&shape, &data),
    })
}

fn dims(shape: &[usize]) -> String {
    (shape.iter().map(usize::to_string))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The summary.json of the whole solve from the shards' (sorted by task): the first shard's
/// settings, every per-task list joined in task order, `tasks` = B, the timing summed over
/// the shards, and `"merged"` naming the shards in place of `"shard"`.
fn merged_summary(shards: &[ShardFolder], batch: usize, diverged: bool) -> Value {
    // A diverged shard's summary has what the whole diverged solve writes (its layout, no
    // occupancy, no steps); the per-task lists below come from every shard.
    let base = match diverged {
        true => shards.iter().find(|s| s.diverged).unwrap_or(&shards[0]),
        false => &shards[0],
    };
    let mut summary = base.summary.clone();
    remove(&mut summary, &["shard"]);
    remove(&mut summary, &[MARKER]);
    for key in PER_TASK {
        if get(&summary, key).is_none() {
            continue;
        }
        let joined: Vec<Value> = shards
            .iter()
            .flat_map(|s| get(&s.summary, key).and_then(Value::as_array).cloned())
            .flatten()
            .collect();
        let (last, parents) = key.split_last().expect("a key");
        let parent = parents.iter().fold(&mut summary, |v, k| &mut v[*k]);
        parent[*last] = Value::Array(joined);
    }
    summary["tasks"] = json!(batch);
    for key in ["seconds", "solve_seconds"] {
        let total: f64 = shards.iter().filter_map(|s| s.summary[key].as_f64()).sum();
        summary[key] = json!(total);
    }
    if let Some(most) = (shards.iter())
        .filter_map(|s| get(&s.summary, &["occupancy", "iterations"])?.as_u64())
        .max()
        && summary["occupancy"].is_object()
    {
        summary["occupancy"]["iterations"] = json!(most);
    }
    let mut adapters: Vec<&Value> = Vec::new();
    for s in shards {
        if !adapters.contains(&&s.summary["adapter"]) {
            adapters.push(&s.summary["adapter"]);
        }
    }
    if adapters.len() > 1 {
        summary["adapter"] = json!(adapters);
    }
    summary["merged"] = json!({
        "batch_tasks": batch,
        "fingerprint": shards[0].fingerprint,
        "shards": shards.iter().map(|s| json!({
            "path": s.path.clone(),
            "index": s.index,
            "count": s.count,
            "tasks": [s.start, s.end],
            "seconds": s.summary["seconds"],
        })).collect::<Vec<_>>(),
    });
    summary
}

/// `softvi merge`. Returns the process exit code: 0, or that of a diverged solve when a
/// shard diverged (then, as the whole solve, it writes summary.json only).
pub(super) fn merge_command(args: &MergeArgs) -> Result<i32> {
    let out_abs = std::fs::canonicalize(&args.out).ok();
    for dir in &args.shards {
        ensure!(
            out_abs.is_none() || std::fs::canonicalize(dir).ok() != out_abs,
            "--out {} is the shard folder {}: merge into a new folder",
            args.out.display(),
            dir.display()
        );
    }
    let mut out = OutputFolder::claim(&args.out, "solve", SOLVE_FILES, args.force)?;
    // A folder named twice is opened (and locked) once; the coverage check names the overlap.
    let mut opened: Vec<(PathBuf, std::rc::Rc<ResultFolder>)> = Vec::new();
    let mut shards: Vec<ShardFolder> = Vec::new();
    for dir in &args.shards {
        let key = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
        let folder = match opened.iter().find(|(k, _)| *k == key) {
            Some((_, f)) => f.clone(),
            None => {
                let f = std::rc::Rc::new(ResultFolder::open(dir, "the shard folder")?);
                opened.push((key, f.clone()));
                f
            }
        };
        shards.push(ShardFolder::read(dir, folder)?);
    }
    shards.sort_by_key(|s| (s.start, s.end));
    let first = &shards[0];
    for s in &shards[1..] {
        ensure!(
            (s.fingerprint.as_str(), s.batch) == (first.fingerprint.as_str(), first.batch),
            "{} and {} are shards of different task batches (fingerprint {} of {} tasks vs {} \
             of {} tasks): merge the shards of one world and one batch",
            first.dir.display(),
            s.dir.display(),
            first.fingerprint,
            first.batch,
            s.fingerprint,
            s.batch
        );
    }
    let diverged = shards.iter().any(|s| s.diverged);
    let settings = first.settings(diverged);
    for s in &shards[1..] {
        if let Some((field, a, b)) = first_difference(&settings, &s.settings(diverged), "") {
            bail!(
                "{} and {} are not shards of one solve: {field} is {a} in the first, {b} in \
                 the second",
                first.dir.display(),
                s.dir.display()
            );
        }
    }
    check_coverage(&shards, first.batch)?;
    let batch = first.batch;
    let mut files = Vec::new();
    if !diverged {
        for s in &shards[1..] {
            ensure!(
                s.files == first.files,
                "{} wrote {:?}, {} wrote {:?}: not shards of one solve (same --q, --no-policy, \
                 --occupancy)",
                first.dir.display(),
                first.files,
                s.dir.display(),
                s.files
            );
        }
        for &name in SOLVE_FILES {
            if first.files.iter().any(|f| f == name) {
                files.push(merge_array(&shards, name, batch)?);
            }
        }
    }
    let mut summary = merged_summary(&shards, batch, diverged);
    out.write(&mut summary, files)?;
    println!(
        "merged   {} shards, {batch} tasks, into {}",
        shards.len(),
        args.out.display()
    );
    if diverged {
        let which: Vec<String> = (shards.iter().filter(|s| s.diverged))
            .map(|s| s.dir.display().to_string())
            .collect();
        eprintln!(
            "error: the solve diverged in {}; as the whole solve, the merge wrote summary.json \
             only, no values",
            which.join(", ")
        );
        return Ok(EXIT_DIVERGED);
    }
    Ok(0)
}
