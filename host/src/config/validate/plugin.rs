//! Validation of plugin steps (a decoder, a transform, an aggregator plugin): the component's
//! path, its config table and pin, its limits and what it may reach outside its sandbox.

use std::net::SocketAddr;

use super::{Validator, duplicates, shown};
use crate::config::raw::{Part, RawAllow, RawLimits, RawPlugin};
use crate::config::units::format_duration;
use crate::config::{PluginStep, PluginUse};
use crate::runtime::{DirGrant, Limits, Permissions, World};

/// The longest `time_budget` a step may have.
const MAX_TIME_BUDGET: std::time::Duration = std::time::Duration::from_secs(600);

impl Validator<'_> {
    pub(super) fn transform(&mut self, at: &str, part: Part<RawPlugin>) -> Option<PluginStep> {
        match part {
            Part::Ok(raw) => self.plugin_step(at, raw, World::Transformer),
            Part::Bad { error, .. } => {
                self.serde_error(at, &error);
                None
            }
        }
    }

    /// A plugin step at `at`, implementing `world`; its plugin is recorded for the plugin checks.
    pub(super) fn plugin_step(
        &mut self,
        at: &str,
        raw: RawPlugin,
        world: World,
    ) -> Option<PluginStep> {
        let before = self.errors.len();
        let path = self.dir.join(&raw.plugin);
        if raw.plugin.trim().is_empty() {
            self.error(
                format!("{at}.plugin"),
                "empty; give the path of the component (.wasm), relative to the config file's \
                 directory",
            );
        }
        let config = match raw.config {
            None => toml::Value::Table(toml::Table::new()),
            Some(table @ toml::Value::Table(_)) => table,
            Some(other) => {
                self.error(
                    format!("{at}.config"),
                    format!(
                        "expected a table, found a {}; write the plugin's config as a table, e.g. \
                         config = {{ field = \"temp\" }}",
                        other.type_str()
                    ),
                );
                toml::Value::Table(toml::Table::new())
            }
        };
        let pinned = raw.sha256.is_some();
        let sha256 = raw
            .sha256
            .and_then(|s| self.sha256(&format!("{at}.sha256"), &s));
        let watch = raw.watch.unwrap_or(false);
        if watch && pinned {
            self.error(
                format!("{at}.watch"),
                "watch = true swaps to whatever the file holds next, and sha256 pins one exact \
                 content: they contradict each other; remove sha256 to follow the file, or \
                 watch to keep the pinned version",
            );
        }
        if watch && world == World::Aggregator {
            self.error(
                format!("{at}.watch"),
                "watch is for decoder and transform steps; swap an aggregator with `weir plugin \
                 swap <pipeline> aggregate FILE` (the windows it holds go over to the new \
                 version, see the README): remove watch",
            );
        }
        if !raw.plugin.trim().is_empty() {
            self.plugins.push(PluginUse {
                at: format!("{at}.plugin"),
                path: path.clone(),
                sha256: sha256.clone(),
                world,
            });
        }
        let limits = self.limits(&format!("{at}.limits"), raw.limits.unwrap_or_default());
        let permissions = self.permissions(&format!("{at}.allow"), raw.allow.unwrap_or_default());
        (self.errors.len() == before).then_some(PluginStep {
            path,
            config,
            sha256,
            watch,
            limits,
            permissions,
        })
    }

    pub(super) fn sha256(&mut self, at: &str, sha256: &str) -> Option<String> {
        if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(sha256.to_ascii_lowercase());
        }
        self.error(
            at,
            format!(
                "{sha256:?} is not a sha256: it must be 64 hex digits (`weir plugin check FILE` \
                 prints a plugin's sha256)"
            ),
        );
        None
    }

    pub(super) fn limits(&mut self, at: &str, raw: RawLimits) -> Limits {
        let mut limits = Limits::default();
        let at = |field: &str| format!("{at}.{field}");
        if let Some(v) = &raw.time_budget
            && let Some(d) = self.positive_duration(&at("time_budget"), v)
        {
            if d > MAX_TIME_BUDGET {
                self.error(
                    at("time_budget"),
                    format!(
                        "{} is longer than a call into a plugin may take ({}): the pipeline \
                         waits for every call",
                        shown(v),
                        format_duration(MAX_TIME_BUDGET)
                    ),
                );
            } else {
                limits.time_budget = d;
            }
        }
        if let Some(v) = &raw.max_memory
            && let Some(bytes) = self.size(&at("max_memory"), v)
        {
            if bytes < 64 << 10 {
                self.error(
                    at("max_memory"),
                    format!(
                        "{} is less than one WebAssembly page (64KiB); a plugin needs at least one",
                        shown(v)
                    ),
                );
            } else if bytes > 4 << 30 {
                self.error(
                    at("max_memory"),
                    format!(
                        "{} is more than a 32-bit WebAssembly memory can hold (4GiB)",
                        shown(v)
                    ),
                );
            } else {
                limits.max_memory_bytes = bytes;
            }
        }
        if let Some(n) = raw
            .max_batch_events
            .and_then(|n| self.positive(&at("max_batch_events"), n))
        {
            limits.max_batch_events = n;
        }
        if let Some(n) = raw
            .max_output_events
            .and_then(|n| self.positive(&at("max_output_events"), n))
        {
            limits.max_output_events = n;
        }
        if let Some(n) = raw
            .max_output_bytes
            .and_then(|v| self.size(&at("max_output_bytes"), &v))
            .and_then(|n| self.positive(&at("max_output_bytes"), n))
        {
            limits.max_output_bytes = n;
        }
        if let Some(n) = raw.quarantine_after_failures {
            if n == 0 {
                self.error(at("quarantine_after_failures"), "0 must be at least 1");
            } else {
                limits.quarantine_after_failures = n;
            }
        }
        if let Some(d) = raw
            .quarantine_backoff
            .and_then(|v| self.positive_duration(&at("quarantine_backoff"), &v))
        {
            limits.quarantine_backoff = d;
        }
        if let Some(v) = &raw.quarantine_backoff_max
            && let Some(d) = self.positive_duration(&at("quarantine_backoff_max"), v)
        {
            if d < limits.quarantine_backoff {
                self.error(
                    at("quarantine_backoff_max"),
                    format!(
                        "{} is shorter than quarantine_backoff ({}); the longest quarantine must \
                         be at least the first",
                        shown(v),
                        format_duration(limits.quarantine_backoff)
                    ),
                );
            } else {
                limits.quarantine_backoff_max = d;
            }
        }
        limits
    }

    pub(super) fn permissions(&mut self, at: &str, raw: RawAllow) -> Permissions {
        let mut permissions = Permissions::default();
        for (k, dir) in raw.dirs.into_iter().enumerate() {
            let at = format!("{at}.dirs[{k}]");
            let host = self.dir.join(&dir.host);
            match std::fs::metadata(&host) {
                _ if dir.host.is_empty() => self.error(
                    format!("{at}.host"),
                    "empty; give a directory on the gateway",
                ),
                Ok(m) if m.is_dir() => {}
                Ok(_) => self.error(
                    format!("{at}.host"),
                    format!("{} is not a directory; grant a directory", host.display()),
                ),
                Err(e) => self.error(
                    format!("{at}.host"),
                    format!(
                        "cannot read {}: {e}; grant a directory that exists (a relative path is \
                         relative to the config file's directory)",
                        host.display()
                    ),
                ),
            }
            if !dir.guest.starts_with('/') {
                self.error(
                    format!("{at}.guest"),
                    format!(
                        "{:?} is not an absolute path; it is where the plugin sees the directory, \
                         e.g. \"/tables\"",
                        dir.guest
                    ),
                );
            }
            permissions.dirs.push(DirGrant {
                host,
                guest: dir.guest,
                writable: dir.writable,
            });
        }
        let guests: Vec<&str> = permissions.dirs.iter().map(|d| d.guest.as_str()).collect();
        for (k, first, guest) in duplicates(guests) {
            self.error(
                format!("{at}.dirs[{k}].guest"),
                format!("{guest:?} is also the guest path of dirs[{first}]; give each its own"),
            );
        }
        for (name, value) in raw.env {
            if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
                self.error(
                    format!("{at}.env"),
                    format!(
                        "{name:?} is not an environment variable name: a name is not empty and \
                         holds no '=' or NUL"
                    ),
                );
            } else {
                permissions.env.push((name, value));
            }
        }
        for (k, addr) in raw.connect.iter().enumerate() {
            match addr.parse::<SocketAddr>() {
                Ok(a) => permissions.connect.push(a),
                Err(_) => self.error(
                    format!("{at}.connect[{k}]"),
                    format!(
                        "{addr:?} is not an IP address with a port, e.g. \"127.0.0.1:8086\"; \
                         plugins cannot look up host names"
                    ),
                ),
            }
        }
        permissions
    }
}
