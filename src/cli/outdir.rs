//! All-or-nothing output folders.
//!
//! A command never writes into `--out` itself. It takes a lock beside the
//! folder, builds its outputs in a sibling staging folder and, when
//! everything is written, swaps the staging folder in with one
//! `renameat2(RENAME_EXCHANGE)`: readers see the previous outputs or the
//! new ones, never a mix, and a run that fails or is killed at any moment
//! leaves the previous outputs as they were.
//!
//! Beside `OUT` live (all hidden):
//! - `.OUT.cohortcast-lock`: held with `flock` while a command writes
//!   `OUT`; the kernel drops it when the process ends, so a killed run
//!   never blocks the next one.
//! - `.OUT.cohortcast-new-PID`: the staging folder. It carries a marker
//!   file while it holds new outputs; after the exchange it holds the
//!   previous outputs and no marker.
//!
//! Files in `OUT` that cohortcast does not write (an input folder kept
//! there, notes) are moved into the new folder after the exchange. A
//! command that finds a sibling left by a killed one finishes or discards
//! its work before starting, under the lock.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// What cohortcast writes into an output folder. An entry of these names
/// in the previous outputs that the new ones lack is stale and dropped;
/// anything else is the user's and is kept.
pub const OUTPUTS: &[&str] = &[
    "ingest",
    "model",
    "notifications",
    "pushes.csv",
    "cohorts.csv",
    "groups.csv",
    "cohort_hours.csv",
    "ctr.csv",
    "ctr_at_reach.csv",
    "ctr_by_cohort.csv",
    "ctr_by_policy.csv",
    "summary.json",
    "report.html",
    "target.txt",
];

/// What follows `.OUT` in the name of `OUT`'s staging folders, before the
/// writer's process id.
const STAGING: &str = ".cohortcast-new-";

/// Inside a staging folder while it holds new outputs.
const MARKER: &str = ".cohortcast-staging";

fn is_ours(name: &str) -> bool {
    // Temporary files of a writer that died are ours too.
    OUTPUTS.contains(&name) || name == MARKER || (name.starts_with('.') && name.contains(".tmp-"))
}

/// The folder a staging folder becomes when it is swapped in
/// (`.OUT.cohortcast-new-PID` beside `OUT` is `OUT`); `None` for any other
/// folder.
pub fn destination(staging: &Path) -> Option<PathBuf> {
    let name = staging.file_name()?.to_str()?;
    let (out, pid) = name.strip_prefix('.')?.rsplit_once(STAGING)?;
    (!out.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then(|| staging.with_file_name(out))
}

/// An output folder being written: the lock, and the staging folder the
/// command writes into. Dropped without [`Staged::commit`], the staging
/// folder is removed and `OUT` is untouched.
pub struct Staged {
    out: PathBuf,
    staging: PathBuf,
    _lock: File,
    committed: bool,
}

impl Staged {
    /// Locks `out` and prepares its staging folder. With `keep`, the
    /// previous outputs are linked into it (hard links: the stages replace
    /// files by renaming, never in place), for commands that read what
    /// earlier stages left.
    pub fn begin(out: &Path, keep: bool) -> Result<Staged> {
        let out = resolve(out)?;
        let (parent, name) = split(&out)?;
        std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let lock = lock(&parent.join(format!(".{name}.cohortcast-lock")), &out)?;
        recover(&out, &parent, &name)?;
        let staging = parent.join(format!(".{name}{STAGING}{}", std::process::id()));
        std::fs::create_dir(&staging).with_context(|| format!("creating the staging folder {}", staging.display()))?;
        let staged = Staged { out: out.clone(), staging, _lock: lock, committed: false };
        File::create(staged.staging.join(MARKER))
            .with_context(|| format!("writing in {}", staged.staging.display()))?;
        if keep && out.is_dir() {
            for e in read_dir(&out)? {
                let n = e.file_name().to_string_lossy().into_owned();
                if OUTPUTS.contains(&n.as_str()) {
                    link_tree(&e.path(), &staged.staging.join(&n))?;
                }
            }
        }
        Ok(staged)
    }

    /// Where the command writes.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder the outputs will have.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Swaps the new outputs in, moves the user's own files across and
    /// removes the previous outputs.
    pub fn commit(mut self) -> Result<()> {
        sync_dir(&self.staging);
        if self.out.exists() {
            exchange(&self.staging, &self.out)?;
        } else {
            std::fs::rename(&self.staging, &self.out)
                .with_context(|| format!("moving the outputs to {}", self.out.display()))?;
        }
        self.committed = true;
        if let Some(parent) = self.out.parent() {
            sync_dir(parent);
        }
        finish(&self.out, &self.staging)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

/// `out` made absolute, through a symbolic link to a folder; an existing
/// file is refused before any work starts.
fn resolve(out: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(out).with_context(|| format!("--out {}", out.display()))?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => {
            let real = std::fs::canonicalize(&abs).unwrap_or(abs);
            // The swap would leave the shell that ran us in the removed folder.
            if std::env::current_dir().and_then(std::fs::canonicalize).is_ok_and(|cwd| cwd.starts_with(&real)) {
                bail!(
                    "--out {} is the current folder or holds it; the outputs replace the folder as a whole, \
                     so give a folder below it (e.g. --out out)",
                    out.display()
                );
            }
            Ok(real)
        }
        Ok(_) => bail!("--out {} is an existing file, not a folder: choose another path", out.display()),
        Err(_) if std::fs::symlink_metadata(&abs).is_ok() => {
            bail!("--out {} is a symbolic link to nothing: remove it or choose another path", out.display())
        }
        Err(_) => Ok(abs),
    }
}

fn split(out: &Path) -> Result<(PathBuf, String)> {
    match (out.parent(), out.file_name()) {
        (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_string_lossy().into_owned())),
        _ => bail!("--out {} has no parent folder to stage the outputs in", out.display()),
    }
}

fn lock(path: &Path, out: &Path) -> Result<File> {
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("creating the lock {}", path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(path).unwrap_or_default();
            bail!(
                "another cohortcast command (pid {}) is writing {}; wait for it to finish or use another --out",
                pid.trim(),
                out.display()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    f.set_len(0).and_then(|_| write!(f, "{}", std::process::id())).ok();
    Ok(f)
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    entries.collect::<std::io::Result<Vec<_>>>().with_context(|| format!("listing {}", dir.display()))
}

/// Finishes or discards what a killed command left beside `out`. Runs
/// under the lock, so no sibling belongs to a live command.
fn recover(out: &Path, parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}{STAGING}");
    for e in read_dir(parent)? {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with(&prefix) || !e.path().is_dir() {
            continue;
        }
        let sibling = e.path();
        if sibling.join(MARKER).exists() {
            // New outputs that never went in.
            std::fs::remove_dir_all(&sibling).with_context(|| format!("removing {}", sibling.display()))?;
        } else if out.is_dir() {
            // The previous outputs, swapped out: the user's files go over.
            finish(out, &sibling)?;
        } else {
            // Swapped out before the new folder took the name: put back.
            std::fs::rename(&sibling, out).with_context(|| format!("restoring {}", out.display()))?;
        }
    }
    if out.join(MARKER).exists() {
        std::fs::remove_file(out.join(MARKER)).with_context(|| format!("writing in {}", out.display()))?;
    }
    Ok(())
}

/// After the exchange: `out` holds the new outputs, `old` the previous.
fn finish(out: &Path, old: &Path) -> Result<()> {
    let marker = out.join(MARKER);
    if marker.exists() {
        std::fs::remove_file(&marker).with_context(|| format!("writing in {}", out.display()))?;
    }
    if old.is_dir() {
        for e in read_dir(old)? {
            let n = e.file_name();
            if is_ours(&n.to_string_lossy()) || out.join(&n).exists() {
                continue;
            }
            std::fs::rename(e.path(), out.join(&n))
                .with_context(|| format!("moving {} into the new outputs", e.path().display()))?;
        }
        std::fs::remove_dir_all(old).with_context(|| format!("removing the previous outputs {}", old.display()))?;
    }
    Ok(())
}

/// Hard-links `from` (a file or folder) to `to`, copying where links are
/// not possible; temporary files of dead writers are left behind.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = std::fs::metadata(from).with_context(|| format!("reading {}", from.display()))?;
    if meta.is_dir() {
        std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
        for e in read_dir(from)? {
            let n = e.file_name();
            if n.to_string_lossy().contains(".tmp-") {
                continue;
            }
            link_tree(&e.path(), &to.join(n))?;
        }
        Ok(())
    } else {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Swaps two folders' names atomically.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    match renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => Ok(()),
        // A file system or kernel without the exchange.
        Err(Errno::EINVAL | Errno::ENOSYS) => exchange_by_renames(a, b),
        Err(e) => {
            Err(std::io::Error::from(e)).with_context(|| format!("swapping the new outputs into {}", b.display()))
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    exchange_by_renames(a, b)
}

/// The exchange as two renames through a third name. Not atomic: killed in
/// between, `b` is missing and its outputs wait at `a`'s name without the
/// marker, which the next command's recovery puts back.
fn exchange_by_renames(a: &Path, b: &Path) -> Result<()> {
    let mut mid = a.as_os_str().to_owned();
    mid.push(".swap");
    let mid = PathBuf::from(mid);
    std::fs::rename(a, &mid).with_context(|| format!("moving {}", a.display()))?;
    std::fs::rename(b, a).with_context(|| format!("moving {}", b.display()))?;
    std::fs::rename(&mid, b).with_context(|| format!("moving the new outputs to {}", b.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_folder_names_its_destination_and_nothing_else_does() {
        let p = Path::new("/data/.out.v2.cohortcast-new-4242");
        assert_eq!(destination(p), Some(PathBuf::from("/data/out.v2")));
        let dir = tempfile::tempdir().unwrap();
        let s = Staged::begin(&dir.path().join("run"), false).unwrap();
        assert_eq!(destination(s.path()).as_deref(), Some(s.out()));
        for other in
            ["/data/out", "/data/.out.cohortcast-new-", "/data/.out.cohortcast-new-12a", "/data/..cohortcast-new-1"]
        {
            assert_eq!(destination(Path::new(other)), None, "{other}");
        }
    }

    fn write(p: &Path, s: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn outputs_swap_in_together_and_the_users_files_stay() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        write(&out.join("model/a.npy"), "old");
        write(&out.join("ctr.csv"), "old");
        write(&out.join("data/clickstream/part-0"), "input");
        write(&out.join(".model.tmp-99/x"), "dead writer");
        let s = Staged::begin(&out, false).unwrap();
        write(&s.path().join("model/a.npy"), "new");
        // Before the commit, nothing changed.
        assert_eq!(read(&out.join("model/a.npy")), "old");
        s.commit().unwrap();
        assert_eq!(read(&out.join("model/a.npy")), "new");
        assert!(!out.join("ctr.csv").exists(), "a stale output is dropped");
        assert!(!out.join(".model.tmp-99").exists(), "a dead writer's file is dropped");
        assert!(!out.join(MARKER).exists());
        assert_eq!(read(&out.join("data/clickstream/part-0")), "input");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with("cohortcast-lock"))
            .collect();
        assert_eq!(left, vec!["out".to_string()]);
    }

    #[test]
    fn a_failed_command_leaves_the_outputs_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        write(&out.join("summary.json"), "old");
        {
            let s = Staged::begin(&out, false).unwrap();
            write(&s.path().join("summary.json"), "half");
        }
        assert_eq!(read(&out.join("summary.json")), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the folder and its lock only");
        // A fresh folder that fails is not created at all.
        let fresh = dir.path().join("fresh");
        drop(Staged::begin(&fresh, false).unwrap());
        assert!(!fresh.exists());
    }

    #[test]
    fn stages_see_the_earlier_outputs_and_replace_only_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        write(&out.join("ingest/plays.parquet"), "plays");
        write(&out.join("ingest/.plays.parquet.tmp-7"), "dead");
        write(&out.join("model/a.npy"), "old");
        let s = Staged::begin(&out, true).unwrap();
        assert_eq!(read(&s.path().join("ingest/plays.parquet")), "plays");
        assert!(!s.path().join("ingest/.plays.parquet.tmp-7").exists());
        // Replaced by a rename, as the stages write: the old file is intact.
        write(&s.path().join("model/.a.tmp"), "new");
        std::fs::rename(s.path().join("model/.a.tmp"), s.path().join("model/a.npy")).unwrap();
        assert_eq!(read(&out.join("model/a.npy")), "old");
        s.commit().unwrap();
        assert_eq!(read(&out.join("model/a.npy")), "new");
        assert_eq!(read(&out.join("ingest/plays.parquet")), "plays");
    }

    #[test]
    fn a_second_writer_is_refused_and_a_dead_ones_lock_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let s = Staged::begin(&out, false).unwrap();
        let e = Staged::begin(&out, false).err().expect("refused while the first holds the lock");
        assert!(e.to_string().contains("another cohortcast command"), "{e}");
        assert!(e.to_string().contains(&std::process::id().to_string()), "{e}");
        drop(s);
        // The lock file stays behind, as after a kill; it does not block.
        Staged::begin(&out, false).unwrap().commit().unwrap();
        assert!(out.is_dir());
    }

    #[test]
    fn what_a_killed_command_left_is_finished_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // Killed after the exchange: the new outputs hold the name (with
        // the marker still in), the previous ones wait beside.
        write(&out.join("summary.json"), "new");
        write(&out.join(MARKER), "");
        let old = dir.path().join(".out.cohortcast-new-1");
        write(&old.join("summary.json"), "old");
        write(&old.join("notes.txt"), "mine");
        // Killed while building: a staging folder with the marker.
        let partial = dir.path().join(".out.cohortcast-new-2");
        write(&partial.join(MARKER), "");
        write(&partial.join("summary.json"), "half");
        let s = Staged::begin(&out, true).unwrap();
        assert!(!old.exists() && !partial.exists());
        assert_eq!(read(&out.join("summary.json")), "new");
        assert_eq!(read(&out.join("notes.txt")), "mine");
        assert!(!out.join(MARKER).exists());
        drop(s);
        // Killed between the two renames of the fallback: put back.
        std::fs::rename(&out, &old).unwrap();
        Staged::begin(&out, false).unwrap();
        assert_eq!(read(&out.join("summary.json")), "new");
    }

    #[test]
    fn an_existing_file_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        write(&f, "x");
        let e = Staged::begin(&f, false).err().unwrap();
        assert!(e.to_string().contains("existing file"), "{e}");
        assert_eq!(read(&f), "x");
    }

    #[test]
    fn the_fallback_exchange_swaps_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a.join("x"), "a");
        write(&b.join("x"), "b");
        exchange_by_renames(&a, &b).unwrap();
        assert_eq!((read(&a.join("x")), read(&b.join("x"))), ("b".into(), "a".into()));
        exchange(&a, &b).unwrap();
        assert_eq!((read(&a.join("x")), read(&b.join("x"))), ("a".into(), "b".into()));
    }
}
