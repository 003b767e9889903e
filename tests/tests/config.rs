//! Config errors as users see them, pinned by golden files: each `golden/config/<case>.toml` is
//! validated and its messages, one per line, must equal `<case>.expected`. Run with
//! `WEIR_BLESS=1` to rewrite the expected files after a deliberate change (then review the diff).
//!
//! Cases in `golden/config/` go through the pure validation (no plugin is loaded); cases in
//! `golden/config-plugins/` are valid configs whose plugins are then loaded and checked against
//! their steps, started with their config, and whose files are checked, as `weir check` does,
//! with the plugins built from source. Paths in messages are relative (the tests
//! run in `tests/`), so the files do not depend on where the repository is.

use std::path::{Path, PathBuf};

use weir::config::{Config, check_machine};

/// The fewest error cases the golden folder must hold.
const MIN_CASES: usize = 12;

fn bless() -> bool {
    std::env::var_os("WEIR_BLESS").is_some_and(|v| v == "1")
}

/// The cases of a golden folder: each `.toml`, sorted; fails on an `.expected` without its case.
fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut cases = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        match path.extension().and_then(|x| x.to_str()) {
            Some("toml") => cases.push(path),
            Some("expected") => assert!(
                path.with_extension("toml").exists() || bless(),
                "{} has no case {}; remove it",
                path.display(),
                path.with_extension("toml").display()
            ),
            _ => {}
        }
    }
    cases.sort();
    cases
}

/// Compares what each case produces with its `.expected` file (or rewrites it when blessing).
fn run_golden(dir: &Path, messages: impl Fn(&Path) -> String) -> usize {
    let cases = cases(dir);
    let mut failures = Vec::new();
    for case in &cases {
        let got = messages(case);
        let expected_path = case.with_extension("expected");
        if bless() {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with WEIR_BLESS=1 to write it",
                expected_path.display()
            )
        });
        if got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ (WEIR_BLESS=1 rewrites them):\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

fn lines(errors: impl IntoIterator<Item = impl ToString>) -> String {
    errors.into_iter().map(|e| e.to_string() + "\n").collect()
}

#[test]
fn config_errors_match_the_golden_files() {
    let n = run_golden(Path::new("golden/config"), |case| {
        match Config::from_file(case) {
            Ok(_) => panic!("{} is valid: a golden case must be invalid", case.display()),
            Err(errors) => lines(&errors),
        }
    });
    assert!(n >= MIN_CASES, "only {n} golden config cases");
}

#[test]
fn plugin_errors_match_the_golden_files() {
    weir_tests::plugins();
    let runtime = weir_tests::runtime();
    run_golden(Path::new("golden/config-plugins"), |case| {
        let config = Config::from_file(case).unwrap_or_else(|e| panic!("{e}"));
        lines(check_machine(&config, &runtime))
    });
}

#[test]
fn the_example_configs_pass_every_check_with_the_real_plugins() {
    weir_tests::plugins();
    let runtime = weir_tests::runtime();
    for name in ["farm.toml", "frost-alerts.toml"] {
        let path = weir_tests::repo().join("configs").join(name);
        let config = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let errors = check_machine(&config, &runtime);
        assert!(errors.is_empty(), "{name}:\n{}", lines(&errors));
    }
}
