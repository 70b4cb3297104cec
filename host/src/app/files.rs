//! A component's `files`, placed where Spin places them. Folders named
//! whole with nothing excluded are mounted as they are (what `spin up
//! --direct-mounts` does, and no copy); anything else (a glob, a single
//! file, `exclude_files`) is copied at load into a staging folder of the
//! component's own, mounted at `/`, as `spin up` does by default. Either way
//! the guest sees the same paths, read-only.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A `files` entry of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum FileEntry {
    /// A path or glob relative to the application's folder, seen at the same
    /// path from `/`.
    Pattern(String),
    /// `{ source, destination }`: a file or folder, seen at `destination`.
    Placement { source: String, destination: String },
}

/// Where a component's files are: host folders and the guest path each is
/// seen at, and the staging folder they may live in, removed with it.
#[derive(Debug, Default)]
pub struct Placed {
    pub mounts: Vec<(PathBuf, String)>,
    _staging: Option<TempDir>,
}

/// Places `entries` (relative to `root`, the application's folder),
/// leaving out what matches an `exclude` glob (relative to `root` too).
pub fn place(root: &Path, entries: &[FileEntry], exclude: &[String]) -> Result<Placed, String> {
    for entry in entries {
        if let FileEntry::Pattern(pattern) = entry
            && let Some(last @ (".." | ".")) = pattern.trim_end_matches('/').rsplit('/').next()
        {
            return Err(format!(
                "`files`: `{pattern}` ends in `{last}`: to include a folder, use \
                 `{{ source, destination }}` or a glob ending in `**/*`"
            ));
        }
    }
    if let Some(mounts) = direct(root, entries, exclude) {
        return Ok(Placed {
            mounts,
            _staging: None,
        });
    }
    let exclude = exclude
        .iter()
        .map(|pattern| {
            glob::Pattern::new(pattern)
                .map_err(|err| format!("`exclude_files`: `{pattern}` is not a glob: {err}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let staging = tempfile::Builder::new()
        .prefix("wasi-http-server-files-")
        .tempdir()
        .map_err(|err| format!("cannot make a folder for the component's files: {err}"))?;
    let stage = Stage {
        root,
        into: staging.path(),
        exclude: &exclude,
    };
    for entry in entries {
        match entry {
            FileEntry::Pattern(pattern) => stage.pattern(pattern)?,
            FileEntry::Placement {
                source,
                destination,
            } => stage.placement(source, destination)?,
        }
    }
    Ok(Placed {
        mounts: vec![(staging.path().to_path_buf(), "/".to_string())],
        _staging: Some(staging),
    })
}

/// The mounts of `entries` if every one is a whole folder and nothing is
/// excluded.
fn direct(
    root: &Path,
    entries: &[FileEntry],
    exclude: &[String],
) -> Option<Vec<(PathBuf, String)>> {
    if !exclude.is_empty() {
        return None;
    }
    entries
        .iter()
        .map(|entry| {
            let (source, destination) = match entry {
                FileEntry::Pattern(path) => (
                    path.as_str(),
                    format!("/{}", path.trim_start_matches("./").trim_end_matches('/')),
                ),
                FileEntry::Placement {
                    source,
                    destination,
                } => (source.as_str(), destination.clone()),
            };
            let source = root.join(source);
            let plain = !looks_like_glob(&source.to_string_lossy());
            (plain && source.is_dir()).then_some((source, destination))
        })
        .collect()
}

/// Copies files into the staging folder.
struct Stage<'a> {
    root: &'a Path,
    into: &'a Path,
    exclude: &'a [glob::Pattern],
}

impl Stage<'_> {
    /// A string entry: a folder (all its files), a file, or a glob, each
    /// file seen at its path relative to the application's folder.
    fn pattern(&self, pattern: &str) -> Result<(), String> {
        let path = self.root.join(pattern);
        if path.is_dir() {
            self.glob(&path.join("**/*"), self.root)
        } else if path.is_file() {
            self.file(&path, pattern)
        } else if looks_like_glob(pattern) {
            self.glob(&path, self.root)
        } else {
            Err(format!(
                "`files`: `{pattern}` does not exist and is not a glob pattern"
            ))
        }
    }

    /// `{ source, destination }`: a folder's files under `destination`, or
    /// one file at `destination`.
    fn placement(&self, source: &str, destination: &str) -> Result<(), String> {
        let path = self.root.join(source);
        let into = destination.trim_start_matches('/');
        if path.is_dir() {
            return self.glob_into(&path.join("**/*"), &path, into);
        }
        if !path.is_file() {
            return Err(format!("`files`: `{source}` does not exist"));
        }
        if destination.ends_with('/') || into.is_empty() {
            return Err(format!(
                "`files`: `{destination}` is a folder's name, but `{source}` is a file: \
                 name the file it becomes"
            ));
        }
        self.file(&path, into)
    }

    /// Every file matching `pattern`, at its path relative to `prefix`.
    fn glob(&self, pattern: &Path, prefix: &Path) -> Result<(), String> {
        self.glob_into(pattern, prefix, "")
    }

    /// Every file matching `pattern`, at its path relative to `prefix`
    /// under the guest folder `into`.
    fn glob_into(&self, pattern: &Path, prefix: &Path, into: &str) -> Result<(), String> {
        let text = pattern.to_string_lossy();
        let paths = glob::glob(&text).map_err(|err| format!("`files`: `{text}`: {err}"))?;
        for path in paths {
            let path = path.map_err(|err| format!("`files`: {err}"))?;
            if !path.is_file() {
                continue;
            }
            let in_app = path.strip_prefix(self.root).map_err(|_| {
                format!(
                    "`files`: {} is outside the application's folder",
                    path.display()
                )
            })?;
            if self.exclude.iter().any(|ex| ex.matches_path(in_app)) {
                continue;
            }
            let relative = path.strip_prefix(prefix).unwrap_or(in_app);
            let guest = Path::new(into).join(relative);
            self.file(&path, &guest.to_string_lossy())?;
        }
        Ok(())
    }

    /// Copies `source` to `guest` (relative to `/`) in the staging folder.
    fn file(&self, source: &Path, guest: &str) -> Result<(), String> {
        let to = self
            .into
            .join(guest.trim_start_matches("./").trim_start_matches('/'));
        if !to.starts_with(self.into) || guest.split('/').any(|part| part == "..") {
            return Err(format!("`files`: `{guest}` is outside the component's `/`"));
        }
        let copy = || -> std::io::Result<u64> {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(source, &to)
        };
        copy().map(drop).map_err(|err| {
            format!(
                "`files`: cannot copy {} to the component's `/{}`: {err}",
                source.display(),
                guest.trim_start_matches('/')
            )
        })
    }
}

/// Whether `text` is a glob pattern rather than a path, as Spin tells them.
fn looks_like_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An application folder with `static/{index.html, css/site.css,
    /// draft.tmp}` and `README.md`.
    fn app() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("static/css")).unwrap();
        std::fs::write(root.join("static/index.html"), "index").unwrap();
        std::fs::write(root.join("static/css/site.css"), "css").unwrap();
        std::fs::write(root.join("static/draft.tmp"), "draft").unwrap();
        std::fs::write(root.join("README.md"), "readme").unwrap();
        dir
    }

    /// Every file the guest sees, by its guest path.
    fn seen(placed: &Placed) -> Vec<String> {
        let mut files = Vec::new();
        for (host, guest) in &placed.mounts {
            for path in glob::glob(&host.join("**/*").to_string_lossy()).unwrap() {
                let path = path.unwrap();
                if path.is_file() {
                    let relative = path.strip_prefix(host).unwrap().to_string_lossy();
                    files.push(format!("{}/{relative}", guest.trim_end_matches('/')));
                }
            }
        }
        files.sort();
        files
    }

    fn pattern(text: &str) -> FileEntry {
        FileEntry::Pattern(text.into())
    }

    fn placement(source: &str, destination: &str) -> FileEntry {
        FileEntry::Placement {
            source: source.into(),
            destination: destination.into(),
        }
    }

    #[test]
    fn whole_folders_are_mounted_without_a_copy() {
        let dir = app();
        let placed = place(
            dir.path(),
            &[placement("static", "/www"), pattern("static")],
            &[],
        )
        .unwrap();
        assert!(placed._staging.is_none());
        assert_eq!(placed.mounts[0], (dir.path().join("static"), "/www".into()));
        assert_eq!(placed.mounts[1].1, "/static");
    }

    #[test]
    fn globs_files_and_exclusions_are_staged_as_spin_places_them() {
        let dir = app();
        let placed = place(
            dir.path(),
            &[
                pattern("static/**/*"),
                pattern("README.md"),
                placement("static/css/site.css", "/styles/main.css"),
                placement("static", "/www"),
            ],
            &["static/*.tmp".into()],
        )
        .unwrap();
        assert!(placed._staging.is_some());
        assert_eq!(
            seen(&placed),
            [
                "/README.md",
                "/static/css/site.css",
                "/static/index.html",
                "/styles/main.css",
                "/www/css/site.css",
                "/www/index.html",
            ]
        );
    }

    #[test]
    fn what_spin_refuses_is_refused() {
        let dir = app();
        let cases = [
            (pattern("static/.."), "ends in `..`"),
            (pattern("."), "ends in `.`"),
            (pattern("missing.txt"), "does not exist and is not a glob"),
            (placement("missing", "/x"), "`missing` does not exist"),
            (placement("README.md", "/docs/"), "is a folder's name"),
            (
                placement("README.md", "/../../etc/x"),
                "outside the component's `/`",
            ),
        ];
        for (entry, expected) in cases {
            let err = place(dir.path(), std::slice::from_ref(&entry), &[]).unwrap_err();
            assert!(
                err.contains(expected),
                "{entry:?}: {expected:?} not in {err:?}"
            );
        }
        let err = place(dir.path(), &[pattern("static")], &["[".into()]).unwrap_err();
        assert!(err.contains("is not a glob"), "{err}");
    }

    #[test]
    fn the_staging_folder_goes_with_the_component() {
        let dir = app();
        let placed = place(dir.path(), &[pattern("README.md")], &[]).unwrap();
        let staging = placed.mounts[0].0.clone();
        assert!(staging.join("README.md").is_file());
        drop(placed);
        assert!(!staging.exists());
    }
}
