//! Plugin checks: every plugin a config names is loaded with a [`Runtime`] and must implement the
//! world of its step (decode: decoder, transform: transformer, aggregate: aggregator) and, if
//! pinned, have its sha256. Each file is loaded (compiled) once, however many steps use it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Aggregate, Config, ConfigError, Decode, pipeline_label};
use crate::runtime::{LoadError, Plugin, Runtime, World};

/// A plugin a config names, and what its step needs of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginUse {
    /// The field naming it, e.g. `pipeline[0] (farm).transform[1].plugin`.
    pub at: String,
    /// The component, resolved against the config file's directory.
    pub path: PathBuf,
    /// The pinned sha256, if any.
    pub sha256: Option<String>,
    /// The world its step needs.
    pub world: World,
}

/// Every plugin `config` names, in order.
pub fn plugin_uses(config: &Config) -> Vec<PluginUse> {
    let mut uses = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let label = pipeline_label(i, Some(&p.name));
        let mut add = |at: String, step: &super::PluginStep, world| {
            uses.push(PluginUse {
                at: format!("{label}.{at}.plugin"),
                path: step.path.clone(),
                sha256: step.sha256.clone(),
                world,
            })
        };
        if let Decode::Plugin(step) = &p.decode {
            add("decode".into(), step, World::Decoder);
        }
        for (j, step) in p.transforms.iter().enumerate() {
            add(format!("transform[{j}]"), step, World::Transformer);
        }
        for (k, aggregate) in p.aggregates.iter().enumerate() {
            if let Aggregate::Plugin(step) = aggregate {
                add(format!("aggregate[{k}]"), step, World::Aggregator);
            }
        }
    }
    uses
}

/// Loads every plugin of `config` and checks its world and pin; returns the problems found.
pub fn check_plugins(config: &Config, runtime: &Runtime) -> Vec<ConfigError> {
    load_plugins(&config.file, &plugin_uses(config), runtime).1
}

/// Everything `weir check` checks of a valid config on this machine: every plugin loaded and
/// checked against its step, then (if they all load) each step started with its config and
/// limits, and the files and directories the live sections name.
pub fn check_machine(config: &Config, runtime: &Runtime) -> Vec<ConfigError> {
    let (plugins, mut errors) = load_plugins(&config.file, &plugin_uses(config), runtime);
    if errors.is_empty() {
        errors.extend(super::start_plugins(config, &plugins, runtime));
        errors.extend(super::check_files(config));
    }
    errors
}

/// Loads the plugins of `uses` (each file once) and checks each use; `file` is the config file,
/// named in messages. Returns the plugins loaded, by path, and the problems found.
pub(crate) fn load_plugins(
    file: &Path,
    uses: &[PluginUse],
    runtime: &Runtime,
) -> (BTreeMap<PathBuf, Arc<Plugin>>, Vec<ConfigError>) {
    let mut loaded: HashMap<&Path, Result<Arc<Plugin>, String>> = HashMap::new();
    let mut errors = Vec::new();
    for u in uses {
        let result = loaded
            .entry(&u.path)
            .or_insert_with(|| runtime.load(&u.path, None).map_err(|e| e.to_string()));
        let problem = match result {
            Err(e) => Some(e.clone()),
            Ok(plugin) => match &u.sha256 {
                Some(expected) if !expected.eq_ignore_ascii_case(&plugin.sha256) => Some(
                    LoadError::HashMismatch {
                        path: plugin.path.clone(),
                        expected: expected.clone(),
                        actual: plugin.sha256.clone(),
                    }
                    .to_string(),
                ),
                _ if plugin.world != u.world => Some(
                    LoadError::WrongWorld {
                        path: plugin.path.clone(),
                        found: plugin.world,
                        expected: u.world,
                    }
                    .to_string(),
                ),
                _ => None,
            },
        };
        if let Some(message) = problem {
            errors.push(ConfigError::Invalid {
                file: file.to_owned(),
                at: u.at.clone(),
                message,
            });
        }
    }
    let plugins = loaded
        .into_iter()
        .filter_map(|(path, result)| Some((path.to_owned(), result.ok()?)))
        .collect();
    (plugins, errors)
}
