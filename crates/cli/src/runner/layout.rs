//! The directories of a supervisor's slots.
//!
//! The actions runner keeps its registration (`.runner`, `.credentials`) in
//! its root, the directory above `bin/`, and finds its root from where its
//! binary really is. Several listeners therefore cannot share one runner
//! directory: each slot gets its own root under the state directory, a
//! mirror of the runner directory whose files are hard links (copies where
//! the file system refuses), with `externals` a link to the one shared
//! externals folder that job containers mount. The slot's work folder is
//! under the work root (the orchestrator's `proxy.work_root`), emptied
//! before every registration, so nothing of one job is seen by the next.

use std::io;
use std::path::{Path, PathBuf};

/// What a runner directory holds that belongs to one registration or one
/// run, never mirrored.
const NOT_MIRRORED: &[&str] = &[
    "_work",
    "_diag",
    "_slots",
    "externals",
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
    ".service",
];

/// A registration's files in a runner root.
pub const REGISTRATION_FILES: &[&str] = &[
    ".runner",
    ".credentials",
    ".credentials_rsaparams",
    ".runner_migrated",
    ".credentials_migrated",
];

pub const HOOK_JOB_STARTED: &str = "job-started.sh";
pub const HOOK_JOB_COMPLETED: &str = "job-completed.sh";
pub const HOOK_CONTAINER: &str = "container-hook.sh";

/// The project's hooks, built in.
const HOOKS: &[(&str, &str)] = &[
    (
        HOOK_JOB_STARTED,
        include_str!("../../../../hooks/job-started.sh"),
    ),
    (
        HOOK_JOB_COMPLETED,
        include_str!("../../../../hooks/job-completed.sh"),
    ),
    (
        HOOK_CONTAINER,
        include_str!("../../../../hooks/container-hook.sh"),
    ),
];

/// Writes the built-in hooks into `dir` (executable, read-only for others).
pub fn write_hooks(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    for (name, text) in HOOKS {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

/// Makes `slot_root` a fresh mirror of the runner directory `install`
/// whose `externals` is a link to `externals`.
pub fn prepare_slot_root(install: &Path, slot_root: &Path, externals: &Path) -> io::Result<()> {
    remove_dir(slot_root)?;
    std::fs::create_dir_all(slot_root)?;
    let skip_self = std::fs::canonicalize(slot_root).ok();
    for entry in std::fs::read_dir(install)? {
        let entry = entry?;
        let name = entry.file_name();
        if NOT_MIRRORED.iter().any(|n| name == *n) {
            continue;
        }
        let from = entry.path();
        // The state directory may be inside the runner directory.
        if let (Some(own), Ok(real)) = (&skip_self, std::fs::canonicalize(&from))
            && own.starts_with(&real)
        {
            continue;
        }
        mirror(&from, &slot_root.join(&name))?;
    }
    std::os::unix::fs::symlink(externals, slot_root.join("externals"))
}

/// Hard-links (or copies) `from` to `to`, directories recursively,
/// symbolic links as links.
fn mirror(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(std::fs::read_link(from)?, to);
    }
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            mirror(&entry.path(), &to.join(entry.file_name()))?;
        }
        return std::fs::set_permissions(to, meta.permissions());
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}

/// Copies the runner's `externals` to `target` when it is not there yet
/// (a marker names the source it came from).
pub fn sync_externals(install: &Path, target: &Path) -> io::Result<()> {
    let source = install.join("externals");
    let marker = target.join(".proxy-runner-source");
    let stamp = format!("{}\n", source.display());
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == stamp) {
        return Ok(());
    }
    remove_dir(target)?;
    std::fs::create_dir_all(target)?;
    if source.is_dir() {
        for entry in std::fs::read_dir(&source)? {
            let entry = entry?;
            copy_tree(&entry.path(), &target.join(entry.file_name()))?;
        }
    }
    std::fs::write(marker, stamp)
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        return std::os::unix::fs::symlink(std::fs::read_link(from)?, to);
    }
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        return std::fs::set_permissions(to, meta.permissions());
    }
    std::fs::copy(from, to).map(|_| ())
}

/// Removes a registration's files from a runner root.
pub fn forget_registration(slot_root: &Path) -> io::Result<()> {
    for name in REGISTRATION_FILES {
        match std::fs::remove_file(slot_root.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// An empty directory at `dir` (what was there is gone), readable by job
/// containers' users.
pub fn fresh_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    remove_dir(dir)?;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

/// Removes a directory tree; a missing one is fine.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A slot's directories.
#[derive(Debug, Clone)]
pub struct SlotDirs {
    /// The slot's runner root (its registration lives here).
    pub root: PathBuf,
    /// The slot's work folder (mounted into its jobs' containers).
    pub work: PathBuf,
    /// Hook calls that never reached the orchestrator, for the next one.
    pub hook_report: PathBuf,
}

impl SlotDirs {
    pub fn new(state_dir: &Path, work_root: &Path, name: &str, slot: u32) -> SlotDirs {
        SlotDirs {
            root: state_dir.join(format!("{name}-{slot}")),
            work: work_root.join(format!("{name}-{slot}")),
            hook_report: state_dir.join(format!("{name}-{slot}.hook-report")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    #[test]
    fn slot_roots_mirror_the_runner_without_its_registration() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("runner");
        std::fs::create_dir_all(install.join("bin/sub")).unwrap();
        std::fs::create_dir_all(install.join("externals/node")).unwrap();
        std::fs::create_dir_all(install.join("_work/old")).unwrap();
        std::fs::write(install.join("bin/Runner.Listener"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            install.join("bin/Runner.Listener"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(install.join("bin/sub/lib.so"), "x").unwrap();
        std::fs::write(install.join("config.sh"), "#!/bin/sh\n").unwrap();
        std::fs::write(install.join(".credentials"), "SECRET").unwrap();
        std::fs::write(install.join(".runner"), "{}").unwrap();
        std::os::unix::fs::symlink("bin/Runner.Listener", install.join("run-link")).unwrap();
        let state = install.join("_slots");
        let externals = install.join("externals");
        let root = state.join("proxy-0");
        // A leftover of an earlier start goes.
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("stale"), "x").unwrap();
        prepare_slot_root(&install, &root, &externals).unwrap();

        let listener = root.join("bin/Runner.Listener");
        assert_eq!(
            std::fs::metadata(&listener).unwrap().ino(),
            std::fs::metadata(install.join("bin/Runner.Listener"))
                .unwrap()
                .ino(),
            "hard-linked"
        );
        assert_eq!(
            std::fs::metadata(&listener).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(root.join("bin/sub/lib.so").is_file());
        assert!(root.join("config.sh").is_file());
        assert_eq!(
            std::fs::read_link(root.join("externals")).unwrap(),
            externals
        );
        assert_eq!(
            std::fs::read_link(root.join("run-link")).unwrap(),
            PathBuf::from("bin/Runner.Listener")
        );
        for absent in [".credentials", ".runner", "_work", "_slots", "stale"] {
            assert!(!root.join(absent).exists(), "{absent}");
        }

        std::fs::write(root.join(".credentials"), "x").unwrap();
        std::fs::write(root.join(".runner"), "x").unwrap();
        forget_registration(&root).unwrap();
        forget_registration(&root).unwrap();
        assert!(!root.join(".credentials").exists() && !root.join(".runner").exists());
    }

    #[test]
    fn externals_are_copied_once_and_work_folders_start_empty() {
        let dir = tempfile::tempdir().unwrap();
        let install = dir.path().join("runner");
        std::fs::create_dir_all(install.join("externals/node/bin")).unwrap();
        std::fs::write(install.join("externals/node/bin/node"), "n").unwrap();
        let target = dir.path().join("shared/externals");
        sync_externals(&install, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("node/bin/node")).unwrap(),
            "n"
        );
        std::fs::write(target.join("node/bin/node"), "changed").unwrap();
        sync_externals(&install, &target).unwrap();
        assert_eq!(
            std::fs::read_to_string(target.join("node/bin/node")).unwrap(),
            "changed",
            "not copied again"
        );

        let work = dir.path().join("work/proxy-0");
        std::fs::create_dir_all(work.join("repo/repo")).unwrap();
        std::fs::write(work.join("repo/repo/secret.txt"), "job A").unwrap();
        fresh_dir(&work).unwrap();
        assert!(work.is_dir());
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        remove_dir(&work).unwrap();
        remove_dir(&work).unwrap();
        assert!(!work.exists());
    }

    #[test]
    fn the_built_in_hooks_are_the_projects() {
        let dir = tempfile::tempdir().unwrap();
        write_hooks(dir.path()).unwrap();
        for name in [HOOK_JOB_STARTED, HOOK_JOB_COMPLETED, HOOK_CONTAINER] {
            let written = std::fs::read_to_string(dir.path().join(name)).unwrap();
            let source = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../hooks")
                    .join(name),
            )
            .unwrap();
            assert_eq!(written, source, "{name}");
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
    }
}
