//! What `weir check` verifies beyond validation, on the machine it runs on, so that a config it
//! passes also starts: every plugin step started with its config and limits (the plugin's own
//! `init` judges its config), the data directory usable, every password, CA, certificate and key
//! file readable and well-formed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Aggregate, Broker, Config, ConfigError, Decode, PluginStep, pipeline_label};
use crate::runtime::{OperatorSpec, Plugin, Runtime, StartError, World, config_json};

/// Starts every plugin step of `config` (each already loaded, in `plugins`) with its config and
/// limits, as `weir run` does, and drops it; returns what went wrong.
pub fn start_plugins(
    config: &Config,
    plugins: &BTreeMap<PathBuf, Arc<Plugin>>,
    runtime: &Runtime,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let label = pipeline_label(i, Some(&p.name));
        let mut steps: Vec<(String, &PluginStep, World)> = Vec::new();
        if let Decode::Plugin(step) = &p.decode {
            steps.push(("decode".into(), step, World::Decoder));
        }
        for (j, step) in p.transforms.iter().enumerate() {
            steps.push((format!("transform[{j}]"), step, World::Transformer));
        }
        for (k, aggregate) in p.aggregates.iter().enumerate() {
            if let Aggregate::Plugin(step) = aggregate {
                steps.push((format!("aggregate[{k}]"), step, World::Aggregator));
            }
        }
        for (at, step, world) in steps {
            let Some(plugin) = plugins.get(&step.path) else {
                continue;
            };
            let spec = OperatorSpec {
                runtime: runtime.clone(),
                step: format!("{}/{at}", p.name).into(),
                world,
                limits: crate::runtime::Limits {
                    max_key_bytes: p.max_key_bytes,
                    ..step.limits.clone()
                },
                permissions: step.permissions.clone(),
            };
            if let Err(e) = spec.prepare(plugin.clone(), &config_json(&step.config)) {
                let field = match e {
                    StartError::Config { .. } => "config",
                    _ => "plugin",
                };
                errors.push(ConfigError::Invalid {
                    file: config.file.clone(),
                    at: format!("{label}.{at}.{field}"),
                    message: format!("{e}; weir run would stop here"),
                });
            }
        }
    }
    errors
}

/// Checks the files and directories the live sections name: the data directory (a directory
/// weir can write, or one it can create), each broker's password file and TLS files.
pub fn check_files(config: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut error = |at: &str, message: String| {
        errors.push(ConfigError::Invalid {
            file: config.file.clone(),
            at: at.to_owned(),
            message,
        })
    };
    if config
        .pipelines
        .iter()
        .any(|p| p.guarantee == super::Guarantee::EffectivelyOnce)
        && let Err(m) = usable_dir(&config.storage.data_dir)
    {
        error("storage.data_dir", m);
    }
    let mut brokers: Vec<(&str, &Broker)> = vec![("source", &config.source.broker)];
    if let Some(u) = &config.upstream {
        brokers.push(("upstream", &u.broker));
    }
    for (section, broker) in brokers {
        if let Some(path) = &broker.password_file
            && let Err(e) = crate::fsutil::read_secret(path, "password file")
        {
            error(&format!("{section}.password_file"), e.to_string());
        }
        if let Some(tls) = &broker.endpoint.tls
            && let Err(e) = crate::mqtt::tls_client_config(tls)
        {
            error(&format!("{section}.tls"), format!("{e:#}"));
        }
    }
    errors
}

/// Whether weir can keep its store in `dir`: an existing directory it may write to, or a path
/// it can create (its nearest existing ancestor is such a directory).
fn usable_dir(dir: &Path) -> Result<(), String> {
    let mut probe = dir;
    loop {
        match std::fs::metadata(probe) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(format!(
                    "{} is not a directory; data_dir names a directory weir keeps its store in",
                    probe.display()
                ));
            }
            Err(_) => match probe.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => probe = parent,
                _ => return Ok(()),
            },
        }
    }
    if rustix::fs::access(probe, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(format!(
            "weir cannot write to {} (as the user running this check); give the user weir runs \
             as a directory of its own",
            probe.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_must_be_a_writable_directory_or_creatable() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(usable_dir(dir.path()), Ok(()));
        assert_eq!(usable_dir(&dir.path().join("new/store")), Ok(()));
        assert_eq!(
            usable_dir(Path::new("/dev/null")),
            Err(
                "/dev/null is not a directory; data_dir names a directory weir keeps its store in"
                    .into()
            )
        );
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(
            usable_dir(&file.join("below"))
                .unwrap_err()
                .contains("is not a directory")
        );
    }
}
