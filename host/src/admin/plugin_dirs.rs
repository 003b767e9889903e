//! Where a swap through the admin API may load a plugin from: a regular file of at most
//! [`caps::PLUGIN`](crate::fsutil::caps::PLUGIN), inside one of the plugin directories
//! (`[admin] plugin_dirs`, by default the directories of the plugins the config names).
//!
//! Both the directories and the requested path are canonicalised before they are compared, so a
//! `..` or a symlink that leads out of the directories is refused like any other file outside
//! them. The file is opened without blocking (`fsutil::open_regular`): a FIFO, a device or a
//! directory is refused at once and never read.

use std::path::{Path, PathBuf};

use crate::fsutil::{self, ReadError, caps};

/// The canonical plugin directories.
#[derive(Clone, Debug, Default)]
pub struct PluginDirs {
    dirs: Vec<PathBuf>,
}

/// Why a swap's path is refused. The message names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PathRefused {
    #[error("\"path\" must be absolute (weir resolves it on its side): {0}")]
    NotAbsolute(String),
    #[error(
        "plugin {path}{resolved} is outside the directories weir loads swaps from ({dirs}); copy \
         it into one of them, or list its directory in [admin] plugin_dirs",
        path = .path.display(),
        resolved = resolved_note(.path, .resolved),
        dirs = .dirs,
    )]
    Outside {
        path: PathBuf,
        resolved: PathBuf,
        dirs: String,
    },
    #[error("plugin {path} is {kind}, not a regular file; swap to a .wasm file", path = .path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// Missing, unreadable or too large: the message is fsutil's.
    #[error("{0}")]
    Read(ReadError),
}

impl PathRefused {
    /// The HTTP status that answers it: 400 (malformed), 403 (outside the directories) or
    /// 409 (not a file weir can load).
    pub fn status(&self) -> u16 {
        match self {
            PathRefused::NotAbsolute(_) => 400,
            PathRefused::Outside { .. } => 403,
            PathRefused::NotAFile { .. } | PathRefused::Read(_) => 409,
        }
    }
}

fn resolved_note(path: &Path, resolved: &Path) -> String {
    if path == resolved {
        String::new()
    } else {
        format!(" (that is, {})", resolved.display())
    }
}

impl PluginDirs {
    /// Canonicalises `dirs`; one that cannot be (it does not exist) is left out, with a warning.
    pub fn new(dirs: &[PathBuf]) -> PluginDirs {
        let mut canonical: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| match std::fs::canonicalize(d) {
                Ok(c) if c.is_dir() => Some(c),
                Ok(_) => {
                    tracing::warn!(dir = %d.display(), "a plugin directory is not a directory; swaps never load from it");
                    None
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %fsutil::describe_io(&e),
                        "cannot resolve a plugin directory; swaps never load from it");
                    None
                }
            })
            .collect();
        canonical.sort();
        canonical.dedup();
        PluginDirs { dirs: canonical }
    }

    /// The directories, canonical.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The canonical path of `requested` if a swap may load it: absolute, inside a plugin
    /// directory once resolved, and a regular file within the plugin cap. Never blocks on a
    /// FIFO or reads a device.
    pub fn resolve(&self, requested: &str) -> Result<PathBuf, PathRefused> {
        let path = Path::new(requested);
        if !path.is_absolute() {
            return Err(PathRefused::NotAbsolute(fsutil::elide(requested, 200)));
        }
        let read_error = |e: std::io::Error| {
            PathRefused::Read(ReadError::Io {
                what: "plugin",
                path: path.to_owned(),
                detail: fsutil::describe_io(&e),
                kind: e.kind(),
            })
        };
        let canonical = std::fs::canonicalize(path).map_err(read_error)?;
        if !self.dirs.iter().any(|d| canonical.starts_with(d)) {
            let dirs = if self.dirs.is_empty() {
                "none: the config names no plugin, and [admin] plugin_dirs is not set".to_owned()
            } else {
                self.dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(PathRefused::Outside {
                path: path.to_owned(),
                resolved: canonical,
                dirs,
            });
        }
        match fsutil::open_regular(&canonical, "plugin", caps::PLUGIN) {
            Ok(_) => Ok(canonical),
            Err(ReadError::NotAFile { kind, .. }) => Err(PathRefused::NotAFile {
                path: path.to_owned(),
                kind,
            }),
            Err(e) => Err(PathRefused::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn only_regular_files_inside_the_directories_are_loaded() {
        let root = tempfile::tempdir().unwrap();
        let plugins = root.path().join("plugins");
        let outside = root.path().join("elsewhere");
        std::fs::create_dir_all(plugins.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(plugins.join("a.wasm"), b"\0asm").unwrap();
        std::fs::write(plugins.join("sub/b.wasm"), b"\0asm").unwrap();
        std::fs::write(outside.join("evil.wasm"), b"\0asm").unwrap();
        std::os::unix::fs::symlink(outside.join("evil.wasm"), plugins.join("link.wasm")).unwrap();
        std::os::unix::fs::symlink(plugins.join("a.wasm"), plugins.join("ok-link.wasm")).unwrap();
        fifo(&plugins.join("fifo.wasm"));
        let dirs = PluginDirs::new(&[plugins.clone(), root.path().join("missing")]);
        assert_eq!(dirs.dirs(), [plugins.canonicalize().unwrap()]);
        let at = |p: &Path| p.to_str().unwrap().to_owned();

        let canon = plugins.canonicalize().unwrap();
        assert_eq!(
            dirs.resolve(&at(&plugins.join("a.wasm"))).unwrap(),
            canon.join("a.wasm")
        );
        assert_eq!(
            dirs.resolve(&at(&plugins.join("sub/b.wasm"))).unwrap(),
            canon.join("sub/b.wasm")
        );
        assert_eq!(
            dirs.resolve(&at(&plugins.join("ok-link.wasm"))).unwrap(),
            canon.join("a.wasm")
        );

        let refused = |p: &str| dirs.resolve(p).unwrap_err();
        for p in [
            at(&outside.join("evil.wasm")),
            at(&plugins.join("link.wasm")),
            at(&plugins.join("../elsewhere/evil.wasm")),
            "/dev/zero".to_owned(),
        ] {
            let e = refused(&p);
            assert_eq!(e.status(), 403, "{p}: {e}");
            assert!(e.to_string().contains("[admin] plugin_dirs"), "{e}");
        }
        let e = refused(&at(&plugins.join("link.wasm")));
        assert!(
            e.to_string().contains(&format!(
                "(that is, {})",
                outside.canonicalize().unwrap().join("evil.wasm").display()
            )),
            "{e}"
        );
        // Not blocking: nobody writes to the FIFO.
        let e = refused(&at(&plugins.join("fifo.wasm")));
        assert_eq!(e.status(), 409);
        assert!(
            e.to_string()
                .ends_with("is a FIFO, not a regular file; swap to a .wasm file"),
            "{e}"
        );
        let e = refused(&at(&plugins.join("sub")));
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = refused(&at(&plugins.join("nope.wasm")));
        assert_eq!(e.status(), 409);
        assert!(e.to_string().ends_with("No such file or directory"), "{e}");
        assert_eq!(refused("relative.wasm").status(), 400);
        let e = PluginDirs::new(&[])
            .resolve(&at(&plugins.join("a.wasm")))
            .unwrap_err();
        assert!(e.to_string().contains("the config names no plugin"), "{e}");
    }
}
