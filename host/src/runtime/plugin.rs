//! Loading a plugin: read it, check it is a component of a supported world and version, compile
//! it (or take it from the cache) and prepare it for instantiation.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::cache::{CacheError, CacheOutcome};
pub(crate) use super::exports::Pre;

/// The contract package this weir implements.
pub const PACKAGE: &str = "weir:operator";
/// The contract versions this weir can run.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
/// The interface a plugin exports to read what an earlier version stored (0.2.0 and later).
const MIGRATE: &str = "migrate";

/// The kind of operator a plugin is: which world of the contract it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum World {
    Decoder,
    Transformer,
    Aggregator,
}

impl World {
    /// The interface a component of this world exports.
    fn export(self) -> &'static str {
        match self {
            World::Decoder => "decode",
            World::Transformer => "transform",
            World::Aggregator => "aggregate",
        }
    }

    fn from_export(interface: &str) -> Option<World> {
        [World::Decoder, World::Transformer, World::Aggregator]
            .into_iter()
            .find(|w| w.export() == interface)
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Decoder => "decoder",
            World::Transformer => "transformer",
            World::Aggregator => "aggregator",
        })
    }
}

/// Why a plugin could not be loaded. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (the message names it and says why once).
    #[error("{0}")]
    Read(crate::fsutil::ReadError),
    #[error(
        "plugin {path} is {what}, not a WebAssembly component; build it for the wasm32-wasip2 target \
         (or with componentize-py / componentize-js)"
    )]
    NotComponent { path: PathBuf, what: &'static str },
    #[error(
        "plugin {path} has sha256 {actual}, but the config pins {expected}; check which file is deployed"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("plugin {path} does not compile: {reason}")]
    Compile { path: PathBuf, reason: String },
    #[error(
        "plugin {path} needs compiling, and this weir is built without the compiler: it runs \
         plugins compiled ahead from {}, and {found}; on a machine with a full weir {}, run \
         `weir plugin compile {path} --target {}` and copy the file it writes there (owned by \
         the user weir runs as, writable by nobody else)",
        .expected.display(),
        env!("CARGO_PKG_VERSION"),
        super::host_triple()
    )]
    NotCompiled {
        path: PathBuf,
        expected: PathBuf,
        found: String,
    },
    #[error(
        "plugin {path} exports no weir operator (it exports: {exports}); an operator exports \
         {PACKAGE}/decode, /transform or /aggregate, version {}",
        SUPPORTED_VERSIONS.join(" or ")
    )]
    NoOperator { path: PathBuf, exports: String },
    #[error(
        "plugin {path} is built for {PACKAGE}@{found}, but this weir supports {PACKAGE}@{}; \
         rebuild it against a supported weir-guest (or WIT package) version",
        SUPPORTED_VERSIONS.join(" and @")
    )]
    UnsupportedVersion { path: PathBuf, found: String },
    #[error(
        "plugin {path} imports {import}, which weir does not provide; operators may import {PACKAGE}/state, {PACKAGE}/log and WASI 0.2"
    )]
    UnknownImport { path: PathBuf, import: String },
    #[error("plugin {path} does not match the {world} world of {PACKAGE}@{version}: {reason}")]
    TypeCheck {
        path: PathBuf,
        world: World,
        version: String,
        reason: String,
    },
    #[error(
        "plugin {path} implements the {found} world, but this step needs a plugin of the {expected} world"
    )]
    WrongWorld {
        path: PathBuf,
        found: World,
        expected: World,
    },
}

/// A compiled, checked plugin, ready to be instantiated any number of times.
pub struct Plugin {
    /// The file it was loaded from (or a name, for plugins loaded from bytes).
    pub path: PathBuf,
    /// sha256 of the component, in hex.
    pub sha256: String,
    pub world: World,
    /// The contract version it was built for.
    pub version: String,
    /// Size of the component file.
    pub size_bytes: usize,
    /// Whether it came from the compiled-plugin cache.
    pub cache: CacheOutcome,
    /// How long compiling (or loading from the cache) took.
    pub load_time: Duration,
    pub(crate) pre: Pre,
}

impl Plugin {
    /// Whether the plugin exports `migrate`: it can read what earlier versions stored.
    pub fn migrates(&self) -> bool {
        self.pre.migrates()
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("world", &self.world)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// sha256 of `bytes`, in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl super::Runtime {
    /// Loads the plugin at `path`. With `pinned_sha256`, refuses a file with another hash.
    pub fn load(&self, path: &Path, pinned_sha256: Option<&str>) -> Result<Arc<Plugin>, LoadError> {
        let bytes = crate::fsutil::read_capped(path, "plugin", crate::fsutil::caps::PLUGIN)
            .map_err(LoadError::Read)?;
        self.load_bytes(path, &bytes, pinned_sha256)
    }

    /// Loads a plugin from its bytes; `path` names it in messages.
    pub fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        pinned_sha256: Option<&str>,
    ) -> Result<Arc<Plugin>, LoadError> {
        let path = path.to_owned();
        check_header(&path, bytes)?;
        let sha256 = sha256_hex(bytes);
        if let Some(expected) = pinned_sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(LoadError::HashMismatch {
                path,
                expected: expected.to_owned(),
                actual: sha256,
            });
        }
        let engine = &self.inner.engine;
        let (component, cache, load_time) =
            self.inner
                .cache
                .load(engine, bytes, &sha256)
                .map_err(|e| match e {
                    CacheError::Compile(e) => LoadError::Compile {
                        path: path.clone(),
                        reason: format!("{e:#}"),
                    },
                    CacheError::NeedsCompiling { expected, refused } => LoadError::NotCompiled {
                        path: path.clone(),
                        expected,
                        found: match refused {
                            Some(reason) => format!("the file there is refused: {reason}"),
                            None => "there is none".to_owned(),
                        },
                    },
                })?;
        let (world, version, migrates) = operator_export(&path, engine, &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| import_error(&path, e))?;
        let type_check = |e: wasmtime::Error| LoadError::TypeCheck {
            path: path.clone(),
            world,
            version: version.clone(),
            reason: format!("{e:#}"),
        };
        let pre = Pre::new(instance_pre, world, &version, migrates).map_err(type_check)?;
        tracing::debug!(path = %path.display(), %world, ?cache, ?load_time, "plugin loaded");
        Ok(Arc::new(Plugin {
            path,
            sha256,
            world,
            version,
            size_bytes: bytes.len(),
            cache,
            load_time,
            pre,
        }))
    }
}

/// The bytes of the component at `path`, refused when plainly not a component.
#[cfg(feature = "compiler")]
pub(crate) fn component_bytes(path: &Path) -> Result<Vec<u8>, LoadError> {
    let bytes = crate::fsutil::read_capped(path, "plugin", crate::fsutil::caps::PLUGIN)
        .map_err(LoadError::Read)?;
    check_header(path, &bytes)?;
    Ok(bytes)
}

/// Refuses what is plainly not a component, with a useful word on what it is instead.
fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let what = match bytes {
        [0x00, b'a', b's', b'm', 0x0d, 0x00, 0x01, 0x00, ..] => return Ok(()),
        [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00, ..] => {
            "a core WebAssembly module (built for wasm32-unknown-unknown or wasm32-wasip1?)"
        }
        [0x00, b'a', b's', b'm', ..] => "WebAssembly of an unknown version",
        [] => "empty",
        _ => "not WebAssembly",
    };
    Err(LoadError::NotComponent {
        path: path.to_owned(),
        what,
    })
}

/// Finds the operator interface the component exports, its version, and whether it exports
/// `migrate` too.
fn operator_export(
    path: &Path,
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<(World, String, bool), LoadError> {
    let ty = component.component_type();
    let mut names = Vec::new();
    let mut found = None;
    let mut migrates = false;
    for (name, item) in ty.exports(engine) {
        names.push(name.to_owned());
        let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            continue;
        }
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        if interface == MIGRATE && version != "0.1.0" {
            migrates = true;
            continue;
        }
        let Some(world) = World::from_export(interface) else {
            continue;
        };
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(LoadError::UnsupportedVersion {
                path: path.to_owned(),
                found: if version.is_empty() {
                    "no version".to_owned()
                } else {
                    version.to_owned()
                },
            });
        }
        found = Some((world, version.to_owned()));
    }
    if let Some((world, version)) = found {
        return Ok((world, version, migrates));
    }
    Err(LoadError::NoOperator {
        path: path.to_owned(),
        exports: if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        },
    })
}

fn import_error(path: &Path, e: wasmtime::Error) -> LoadError {
    let reason = format!("{e:#}");
    // wasmtime: "component imports instance `x`, but a matching implementation was not found
    // in the linker" (or a function of an instance).
    let import = reason
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or(reason.clone());
    LoadError::UnknownImport {
        path: path.to_owned(),
        import,
    }
}
