//! `weir plugin new`: each kind of project it makes builds, passes its own test, and runs through
//! the host as its README says.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use weir_tests::process::{TempDir, WeirProcess};

/// Runs `cargo ARGS` in `dir` with the shared target directory; panics with its output on
/// failure.
fn cargo(dir: &Path, args: &[&str]) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(dir)
        // The three projects share their dependencies' builds, and later runs reuse them.
        .env(
            "CARGO_TARGET_DIR",
            weir_tests::repo().join("target/plugin-new"),
        )
        // The generated project names its toolchain; the test's own must not override it.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `weir ARGS` with `input` on standard input: its stdout, one JSON value per line.
fn weir_with_input(args: &[&str], input: &str) -> Vec<Json> {
    let dir = TempDir::new("weir-plugin-new-input");
    let file = dir.path().join("input.jsonl");
    std::fs::write(&file, input).unwrap();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--input", file.to_str().unwrap()]);
    let mut p = WeirProcess::spawn(&all, &[]);
    // A guard, not a wait: compiling a Python or JavaScript component (12–18 MB, an interpreter
    // inside) takes seconds, and minutes on a busy 2-core machine.
    assert!(p.wait(Duration::from_secs(600)).success(), "{}", p.stderr());
    p.stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `weir plugin new NAME --lang LANG --kind KIND` in `dir`; checks that it made `files`.
fn new_project(dir: &Path, name: &str, lang: &str, kind: &str, files: &[&str]) -> PathBuf {
    let mut p = WeirProcess::spawn(
        &[
            "plugin",
            "new",
            name,
            "--lang",
            lang,
            "--kind",
            kind,
            "--dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(p.wait(Duration::from_secs(60)).success(), "{}", p.stderr());
    let project = dir.join(name);
    for file in files {
        assert!(project.join(file).is_file(), "{name}: {file} made");
    }
    project
}

/// Runs `component` through the host (`weir plugin run`) on `input` and checks each output
/// record's output and, where named, one field: `want` is (output, field, value) per record.
fn runs_through_the_host(
    name: &str,
    component: &Path,
    config: &str,
    input: &str,
    want: &[(&str, &str, Json)],
) {
    let out = weir_with_input(
        &[
            "plugin",
            "run",
            component.to_str().unwrap(),
            "--config",
            config,
        ],
        input,
    );
    assert_eq!(out.len(), want.len(), "{name}: {out:?}");
    for (got, (output, field, value)) in out.iter().zip(want) {
        assert_eq!(got["output"], *output, "{name}: {got}");
        if !field.is_empty() {
            assert_eq!(got["fields"][field], *value, "{name}: {got}");
        }
    }
}

#[test]
fn each_kind_of_new_rust_plugin_builds_passes_its_test_and_runs_through_the_host() {
    let dir = TempDir::new("weir-plugin-new");
    let wasm = weir_tests::repo().join("target/plugin-new/wasm32-wasip2/release");
    let cases = [
        (
            "frost-scale",
            "transform",
            "{ field = \"temp\", factor = 2.0 }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.5}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"humidity\":80}}\n\
             {\"key\":\"s1\",\"ts_ms\":3,\"fields\":{\"temp\":2.5}}\n",
            // A batch's events come out before its dead letters.
            vec![
                ("main", "scaled", Json::from(3.0)),
                ("main", "scaled", Json::from(5.0)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "csv-reader",
            "decode",
            "{ field = \"temp\" }",
            // "s1,1700000000000,21.5", then "garbage".
            "{\"topic\":\"sensors/s1\",\"payload_base64\":\"czEsMTcwMDAwMDAwMDAwMCwyMS41\"}\n\
             {\"topic\":\"sensors/s1\",\"payload_base64\":\"Z2FyYmFnZQ==\"}\n",
            vec![
                ("main", "temp", Json::from(21.5)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "window-mean",
            "aggregate",
            "{ field = \"temp\" }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.0}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"temp\":3.0}}\n",
            vec![("main", "mean", Json::from(2.0))],
        ),
    ];
    for (name, kind, config, input, want) in cases {
        let project = new_project(
            dir.path(),
            name,
            "rust",
            kind,
            &[
                "Cargo.toml",
                "README.md",
                "src/lib.rs",
                "rust-toolchain.toml",
            ],
        );
        cargo(&project, &["test", "--quiet"]);
        cargo(
            &project,
            &["build", "--quiet", "--release", "--target", "wasm32-wasip2"],
        );
        let component = wasm.join(format!("{}.wasm", name.replace('-', "_")));
        runs_through_the_host(name, &component, config, input, &want);
    }
    // An existing directory is never overwritten, and a name must suit a crate.
    let mut p = WeirProcess::spawn(
        &[
            "plugin",
            "new",
            "frost-scale",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!p.wait(Duration::from_secs(60)).success());
    assert!(p.stderr().contains("already exists"), "{}", p.stderr());
    let mut p = WeirProcess::spawn(&["plugin", "new", "Frost_Scale"], &[]);
    assert!(!p.wait(Duration::from_secs(60)).success());
    assert!(
        p.stderr().contains("cannot name a plugin"),
        "{}",
        p.stderr()
    );
}

/// Runs a generated project's script (`./test`, `./build`) in `dir`; panics with its output on
/// failure.
fn script(dir: &Path, name: &str) {
    let out = Command::new("bash")
        .arg(dir.join(name))
        .current_dir(dir)
        // The component builder comes from the venv plugins/build made (the same pinned
        // componentize-py), not from the user's cache.
        .env(
            "WEIR_COMPONENTIZE_PY_VENV",
            weir_tests::repo().join("plugins/target/py"),
        )
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "./{name} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_kind_of_new_python_plugin_passes_its_test_builds_and_runs_through_the_host() {
    weir_tests::plugins(); // installs componentize-py into plugins/target/py
    let dir = TempDir::new("weir-plugin-new-py");
    let cases = [
        (
            "frost-scale",
            "transform",
            "{ field = \"temp\", factor = 2.0 }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.5}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"humidity\":80}}\n\
             {\"key\":\"s1\",\"ts_ms\":3,\"fields\":{\"temp\":2.5}}\n",
            vec![
                ("main", "scaled", Json::from(3.0)),
                ("main", "count", Json::from(2)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "csv-reader",
            "decode",
            "{ field = \"temp\" }",
            "{\"topic\":\"sensors/s1\",\"payload_base64\":\"czEsMTcwMDAwMDAwMDAwMCwyMS41\"}\n\
             {\"topic\":\"sensors/s1\",\"payload_base64\":\"Z2FyYmFnZQ==\"}\n",
            vec![
                ("main", "temp", Json::from(21.5)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "window-mean",
            "aggregate",
            "{ field = \"temp\" }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.0}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"temp\":3.0}}\n",
            vec![("main", "mean", Json::from(2.0))],
        ),
    ];
    for (name, kind, config, input, want) in cases {
        let project = new_project(
            dir.path(),
            name,
            "python",
            kind,
            &["logic.py", "app.py", "test_logic.py", "README.md"],
        );
        let glue = std::fs::read_to_string(project.join("app.py")).unwrap();
        assert!(glue.lines().count() <= 10, "{name}: glue is short:\n{glue}");
        script(&project, "test");
        script(&project, "build");
        let component = project.join(format!("target/{}.wasm", name.replace('-', "_")));
        runs_through_the_host(name, &component, config, input, &want);
    }
}

/// Runs `npm ARGS` in `dir`; panics with its output on failure. npm's cache is the user's, shared
/// with the repository's JavaScript plugins, so installs after the first come from it.
fn npm(dir: &Path, args: &[&str]) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("npm runs (node 20 or later and npm are needed for JavaScript plugins)");
    assert!(
        out.status.success(),
        "npm {args:?} in {}:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn each_kind_of_new_js_plugin_builds_passes_its_test_and_runs_through_the_host() {
    let dir = TempDir::new("weir-plugin-new-js");
    let cases = [
        (
            "scale-js",
            "transform",
            "{ field = \"temp\", factor = 2.0 }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.5}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"humidity\":80}}\n\
             {\"key\":\"s1\",\"ts_ms\":3,\"fields\":{\"temp\":2.5}}\n",
            // A batch's events come out before its dead letters; the count is keyed state.
            vec![
                ("main", "scaled", Json::from(3.0)),
                ("main", "count", Json::from(2)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "csv-js",
            "decode",
            "{ field = \"temp\" }",
            // "s1,1700000000000,21.5", then "garbage".
            "{\"topic\":\"sensors/s1\",\"payload_base64\":\"czEsMTcwMDAwMDAwMDAwMCwyMS41\"}\n\
             {\"topic\":\"sensors/s1\",\"payload_base64\":\"Z2FyYmFnZQ==\"}\n",
            vec![
                ("main", "temp", Json::from(21.5)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "mean-js",
            "aggregate",
            "{ field = \"temp\" }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.0}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"temp\":3.0}}\n",
            vec![("main", "mean", Json::from(2.0))],
        ),
    ];
    for (name, kind, config, input, want) in cases {
        let project = new_project(
            dir.path(),
            name,
            "js",
            kind,
            &[
                "package.json",
                "README.md",
                "src/operator.js",
                "src/app.js",
                "tests/operator.test.js",
            ],
        );
        npm(
            &project,
            &[
                "install",
                "--prefer-offline",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ],
        );
        npm(&project, &["test"]);
        npm(&project, &["run", "build"]);
        let component = project.join(format!("dist/{}.wasm", name.replace('-', "_")));
        runs_through_the_host(name, &component, config, input, &want);
    }
}

/// Runs a generated C project's `build` with `args` (apt-get installs the toolchain when
/// missing; wasm-c comes from this source tree); panics with its output on failure.
fn c_build(project: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(project.join("build"))
        .args(args)
        .current_dir(project)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "build {args:?} in {}:\n{}{}",
        project.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn each_kind_of_new_c_plugin_builds_passes_its_test_and_runs_through_the_host() {
    let dir = TempDir::new("weir-plugin-new-c");
    let cases = [
        (
            "frost-scale-c",
            "transform",
            "{ field = \"temp\", factor = 2.0 }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.5}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"humidity\":80}}\n\
             {\"key\":\"s1\",\"ts_ms\":3,\"fields\":{\"temp\":2}}\n",
            // A batch's events come out before its dead letters.
            vec![
                ("main", "scaled", Json::from(3.0)),
                ("main", "scaled", Json::from(4.0)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "csv-reader-c",
            "decode",
            "{ field = \"temp\" }",
            // "s1,1700000000000,21.5", then "garbage".
            "{\"topic\":\"sensors/s1\",\"payload_base64\":\"czEsMTcwMDAwMDAwMDAwMCwyMS41\"}\n\
             {\"topic\":\"sensors/s1\",\"payload_base64\":\"Z2FyYmFnZQ==\"}\n",
            vec![
                ("main", "temp", Json::from(21.5)),
                ("dead-letter", "", Json::Null),
            ],
        ),
        (
            "window-mean-c",
            "aggregate",
            "{ field = \"temp\" }",
            "{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{\"temp\":1.0}}\n\
             {\"key\":\"s1\",\"ts_ms\":2,\"fields\":{\"temp\":3}}\n",
            vec![("main", "mean", Json::from(2.0))],
        ),
    ];
    for (name, kind, config, input, want) in cases {
        let project = new_project(
            dir.path(),
            name,
            "c",
            kind,
            &[
                "README.md",
                "build",
                "src/logic.c",
                "src/plugin.c",
                "wit/weir-operator.wit",
            ],
        );
        let tested = c_build(&project, &["test"]);
        assert!(tested.contains("all checks passed"), "{name}: {tested}");
        c_build(&project, &[]);
        let component = project.join(format!("target/{}.wasm", name.replace('-', "_")));
        runs_through_the_host(name, &component, config, input, &want);
    }
}
