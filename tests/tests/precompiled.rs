//! Plugins compiled ahead of time (`weir plugin compile`), the gateway's plugin cache, and a weir
//! built without the compiler: what a gateway that never compiles relies on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use weir_tests::process::{TempDir, weir_bin, weir_bin_without_compiler};
use weir_tests::{plugin_path, repo};

/// A frost-alert pipeline with two plugin steps, its data directory in `dir`.
fn write_config(dir: &Path) -> PathBuf {
    let config = format!(
        r#"version = 1

[storage]
data_dir = {data:?}

[[pipeline]]
name = "cold"
topics = ["farm/+/sensors/#"]

[pipeline.decode]
json = {{ key = "sensor_id", time = "ts", time_format = "ms", values = ["temp"] }}

[[pipeline.transform]]
plugin = {range:?}
config = {{ field = "temp", min = -40.0, max = 85.0 }}

[[pipeline.transform]]
plugin = {frost:?}
config = {{ field = "temp", threshold_c = 0.5, consecutive = 3 }}

[pipeline.output]
topic = "alerts/{{key}}"
"#,
        data = dir.join("data"),
        range = plugin_path("range_filter"),
        frost = plugin_path("frost_detector"),
    );
    let path = dir.join("frost.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Readings of two sensors, one of them cold for a while (and one impossible reading, which
/// the range filter drops).
fn write_input(dir: &Path) -> PathBuf {
    let lines: String = (0..40)
        .flat_map(|i| {
            let ts = 1_700_000_000_000i64 + i * 60_000;
            let cold = if (10..20).contains(&i) { -1.5 } else { 4.0 };
            let odd = if i == 5 { -300.0 } else { cold };
            [
                format!(
                    "{{\"topic\":\"farm/north/sensors/t\",\"payload\":{{\"sensor_id\":\"s1\",\"ts\":{ts},\"temp\":{odd}}}}}\n"
                ),
                format!(
                    "{{\"topic\":\"farm/south/sensors/t\",\"payload\":{{\"sensor_id\":\"s2\",\"ts\":{ts},\"temp\":6.0}}}}\n"
                ),
            ]
        })
        .collect();
    let path = dir.join("input.jsonl");
    std::fs::write(&path, lines).unwrap();
    path
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `weir plugin compile` with the full weir: the paths it wrote.
fn compile(plugins: &[&str], target: Option<&str>, out_dir: &Path) -> Vec<PathBuf> {
    let mut args = vec!["plugin".to_owned(), "compile".to_owned()];
    args.extend(plugins.iter().map(|p| plugin_path(p).display().to_string()));
    if let Some(t) = target {
        args.extend(["--target".to_owned(), t.to_owned()]);
    }
    args.extend(["--out".to_owned(), out_dir.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&weir_bin(), &args);
    assert!(
        out.status.success(),
        "weir plugin compile: {}",
        describe(&out)
    );
    let written: Vec<PathBuf> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" -> ").nth(1))
        .map(|rest| PathBuf::from(rest.split(" (").next().unwrap()))
        .collect();
    assert_eq!(written.len(), plugins.len(), "{}", describe(&out));
    for path in &written {
        assert!(path.is_file(), "{} written", path.display());
    }
    written
}

#[test]
fn a_weir_without_the_compiler_runs_plugins_compiled_ahead_of_time_and_names_what_is_missing() {
    let lean = weir_bin_without_compiler();
    let dir = TempDir::new("weir-precompiled");
    let config = write_config(dir.path());
    let input = write_input(dir.path());
    let cache = dir.path().join("data").join("plugin-cache");
    let config_arg = config.to_str().unwrap();

    // Nothing compiled yet: refused, with the file it looks for and the command that makes it.
    let out = run(&lean, &["check", config_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = text(&out.stderr);
    for needed in [
        "needs compiling, and this weir is built without the compiler",
        &format!(
            "weir plugin compile {} --target",
            plugin_path("range_filter").display()
        ),
        &cache.display().to_string(),
        "there is none",
    ] {
        assert!(err.contains(needed), "`{needed}` in:\n{err}");
    }
    let out = run(
        &lean,
        &[
            "plugin",
            "compile",
            &plugin_path("range_filter").display().to_string(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("built without the compiler"),
        "{}",
        describe(&out)
    );

    // Compiled on another machine (here: by the full weir) into the gateway's cache.
    compile(&["range_filter", "frost_detector"], None, &cache);
    let out = run(&lean, &["check", config_arg]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        text(&out.stdout)
            .matches("compiled ahead (plugin cache)")
            .count(),
        2,
        "{}",
        describe(&out)
    );

    // The lean weir computes what the full one does.
    let replay = |bin: &Path| {
        let out = run(
            bin,
            &["replay", config_arg, "--input", input.to_str().unwrap()],
        );
        assert!(out.status.success(), "{}", describe(&out));
        text(&out.stdout)
    };
    let lean_out = replay(&lean);
    let full_out = replay(&weir_bin());
    assert_eq!(lean_out, full_out);
    assert!(
        lean_out.contains("\"frost\""),
        "the cold spell raised an alert:\n{lean_out}"
    );
}

#[test]
fn an_artifact_for_another_machine_or_where_others_can_write_is_refused_with_the_reason() {
    let dir = TempDir::new("weir-precompiled-refused");
    let config = write_config(dir.path());
    let config_arg = config.to_str().unwrap();
    let cache = dir.path().join("data").join("plugin-cache");
    let staging = dir.path().join("staging");

    // An artifact for the other architecture, under the name this machine's cache looks for.
    let native = compile(&["range_filter", "frost_detector"], None, &staging);
    let (other_arch, other_triple) = if std::env::consts::ARCH == "x86_64" {
        ("aarch64", "aarch64-unknown-linux-gnu")
    } else {
        ("x86_64", "x86_64-unknown-linux-gnu")
    };
    let foreign = compile(&["range_filter"], Some(other_triple), &staging);
    let foreign_name = foreign[0].file_name().unwrap().to_str().unwrap();
    assert!(
        foreign_name.contains(&format!("-{other_arch}-")),
        "{foreign_name} names its architecture"
    );
    std::fs::create_dir_all(&cache).unwrap();
    let native_name = |i: usize| native[i].file_name().unwrap().to_owned();
    std::fs::copy(&foreign[0], cache.join(native_name(0))).unwrap();
    std::fs::copy(&native[1], cache.join(native_name(1))).unwrap();

    // The full weir says why, and compiles the plugin itself.
    let out = run(&weir_bin(), &["check", config_arg]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains(&format!("compiled for architecture '{other_arch}'")),
        "{}",
        describe(&out)
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.matches("compiled by weir on load").count(),
        1,
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("compiled ahead (plugin cache)").count(),
        1,
        "{stdout}"
    );

    // The lean weir cannot: it refuses the step with wasmtime's reason.
    let lean = weir_bin_without_compiler();
    let out = run(&lean, &["check", config_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains(&format!("compiled for architecture '{other_arch}'")),
        "{}",
        describe(&out)
    );

    // A cache directory others can write is not trusted: its code would run as weir.
    std::fs::copy(&native[0], cache.join(native_name(0))).unwrap();
    let out = run(&lean, &["check", config_arg]);
    assert!(out.status.success(), "{}", describe(&out));
    let refused_as_writable_by_others = || {
        let out = run(&lean, &["check", config_arg]);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            text(&out.stderr).contains("can be written by others"),
            "{}",
            describe(&out)
        );
    };
    set_mode(&cache, 0o777);
    refused_as_writable_by_others();
    set_mode(&cache, 0o700);
    // Nor is a file others can write.
    set_mode(&cache.join(native_name(1)), 0o666);
    refused_as_writable_by_others();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
