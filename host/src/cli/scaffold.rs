//! `weir plugin new NAME`: a buildable plugin project with a test and a README.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Lang {
    Rust,
    Python,
    Js,
    C,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Kind {
    Transform,
    Decode,
    Aggregate,
}

#[derive(Debug, clap::Args)]
pub(super) struct NewArgs {
    /// The plugin's name: lowercase letters, digits and `-`, starting with a letter; the project
    /// is made in a directory of that name.
    name: String,
    /// The language.
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// What it does: a transformer (events in, events out), a decoder (messages in, events out)
    /// or an aggregator (a window's events in, its result out).
    #[arg(long, value_enum, default_value = "transform")]
    kind: Kind,
    /// Where to make it (default: the current directory).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The guest SDK (`weir-guest`) to build against: its directory (default: the guest-sdk of
    /// the source tree this weir was built from, if it is there).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

const CARGO: &str = include_str!("templates/rust/Cargo.toml.tmpl");
const README: &str = include_str!("templates/rust/README.md.tmpl");
const GITIGNORE: &str = include_str!("templates/rust/gitignore.tmpl");
const TRANSFORM: &str = include_str!("templates/rust/transform.rs.tmpl");
const DECODE: &str = include_str!("templates/rust/decode.rs.tmpl");
const AGGREGATE: &str = include_str!("templates/rust/aggregate.rs.tmpl");
/// The toolchain weir itself is built with: the generated project builds with the same.
const TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// How a project's README runs its component through the host (`weir plugin run` on a sample
/// input) and names it in a pipeline, for a component at `wasm` called `module`.
fn usage(kind: Kind, wasm: &str, module: &str) -> (String, String) {
    match kind {
        Kind::Transform => (
            format!(
                "echo '{{\"key\":\"s1\",\"ts_ms\":1700000000000,\"fields\":{{\"temp\":21.5}}}}' | \\\n  weir plugin run {wasm} --config '{{ field = \"temp\", factor = 1.8 }}'"
            ),
            format!(
                "[[pipeline.transform]]\nplugin = \"path/to/{module}.wasm\"\nconfig = {{ field = \"temp\", factor = 1.8 }}"
            ),
        ),
        Kind::Decode => (
            format!(
                "echo '{{\"topic\":\"sensors/s1\",\"payload_base64\":\"czEsMTcwMDAwMDAwMDAwMCwyMS41\"}}' | \\\n  weir plugin run {wasm} --config '{{ field = \"temp\" }}'   # s1,1700000000000,21.5"
            ),
            format!(
                "[pipeline.decode]\nplugin = \"path/to/{module}.wasm\"\nconfig = {{ field = \"temp\" }}"
            ),
        ),
        Kind::Aggregate => (
            format!(
                "printf '%s\\n' '{{\"key\":\"s1\",\"ts_ms\":1,\"fields\":{{\"temp\":1.0}}}}' '{{\"key\":\"s1\",\"ts_ms\":2,\"fields\":{{\"temp\":3.0}}}}' | \\\n  weir plugin run {wasm} --config '{{ field = \"temp\" }}'"
            ),
            format!(
                "[pipeline.window]\ntumbling = \"1m\"\n\n[[pipeline.aggregate]]\nplugin = \"path/to/{module}.wasm\"\nconfig = {{ field = \"temp\" }}"
            ),
        ),
    }
}

/// Whether `name` can name a plugin (and its crate): `[a-z][a-z0-9-]*`, at most 64 bytes.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 64
        && !name.ends_with('-')
}

/// `key-stats` → `KeyStats`.
fn struct_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

fn sdk_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.to_owned(),
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
            if !built_from.join("Cargo.toml").is_file() {
                anyhow::bail!(
                    "this weir was not built from a source tree that is still here: name the \
                     guest SDK with --sdk DIR (the guest-sdk directory of weir's repository)"
                );
            }
            built_from
        }
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--sdk {}: no such directory", dir.display()))?;
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    anyhow::ensure!(
        manifest.contains("name = \"weir-guest\""),
        "{} is not the guest SDK (its Cargo.toml does not name weir-guest)",
        dir.display()
    );
    Ok(dir)
}

pub(super) fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        valid_name(&args.name),
        "{:?} cannot name a plugin: use lowercase letters, digits and '-', starting with a letter, \
         e.g. frost-alarm",
        args.name
    );
    let project = args.dir.join(&args.name);
    anyhow::ensure!(
        !project.exists(),
        "{} already exists; choose another name or --dir",
        project.display()
    );
    // JavaScript and C projects find what they build with themselves; the others use the guest
    // SDK's directory.
    match args.lang {
        Lang::Js => return new_js(&args, &project),
        Lang::C => return new_c(&args, &project),
        Lang::Rust | Lang::Python => {}
    }
    let sdk = sdk_dir(args.sdk.as_deref())?;
    if args.lang == Lang::Python {
        return new_python(&args, &sdk, &project);
    }
    let crate_name = args.name.replace('-', "_");
    let (kind, source) = match args.kind {
        Kind::Transform => ("transformer", TRANSFORM),
        Kind::Decode => ("decoder", DECODE),
        Kind::Aggregate => ("aggregator", AGGREGATE),
    };
    let (run, pipeline) = usage(
        args.kind,
        &format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
        &crate_name,
    );
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{Struct}}", &struct_name(&args.name))
            .replace("{{kind}}", kind)
            .replace(
                "{{sdk}}",
                &format!("{{ path = {:?} }}", sdk.display().to_string()),
            )
            .replace("{{run}}", &run)
            .replace("{{pipeline}}", &pipeline)
    };
    write_project(
        &project,
        [
            ("Cargo.toml", fill(CARGO)),
            ("README.md", fill(README)),
            (".gitignore", GITIGNORE.to_owned()),
            ("rust-toolchain.toml", TOOLCHAIN.to_owned()),
            ("src/lib.rs", fill(source)),
        ],
        &[],
        &format!("a {kind} in Rust"),
        "cargo test && cargo build --release --target wasm32-wasip2",
    )
}

/// Writes a project's files (making their directories; `executable` ones get mode 755) and says
/// what was made and what to run next in it.
fn write_project<const N: usize>(
    project: &Path,
    files: [(&str, String); N],
    executable: &[&str],
    made: &str,
    next: &str,
) -> anyhow::Result<ExitCode> {
    for (file, text) in files {
        let path = project.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if executable.contains(&file) {
            make_executable(&path)?;
        }
    }
    println!("{}", project.display());
    eprintln!(
        "weir plugin new: {made} in {}; next: cd {} && {next} (see its README.md)",
        project.display(),
        project.display()
    );
    Ok(ExitCode::SUCCESS)
}

mod python {
    pub(super) const APP: &str = include_str!("templates/python/app.py.tmpl");
    pub(super) const BUILD: &str = include_str!("templates/python/build.tmpl");
    pub(super) const TEST: &str = include_str!("templates/python/test.tmpl");
    pub(super) const README: &str = include_str!("templates/python/README.md.tmpl");
    pub(super) const GITIGNORE: &str = include_str!("templates/python/gitignore.tmpl");
    pub(super) const TRANSFORM: &str = include_str!("templates/python/transform.py.tmpl");
    pub(super) const DECODE: &str = include_str!("templates/python/decode.py.tmpl");
    pub(super) const AGGREGATE: &str = include_str!("templates/python/aggregate.py.tmpl");
    pub(super) const TEST_TRANSFORM: &str = include_str!("templates/python/test_transform.py.tmpl");
    pub(super) const TEST_DECODE: &str = include_str!("templates/python/test_decode.py.tmpl");
    pub(super) const TEST_AGGREGATE: &str = include_str!("templates/python/test_aggregate.py.tmpl");
}

/// Lets a generated script run as `./build`.
fn make_executable(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A Python project on the `weir_guest` helper (`SDK/python`): logic, glue, test, build script.
fn new_python(args: &NewArgs, sdk: &Path, project: &Path) -> anyhow::Result<ExitCode> {
    let helper = sdk.join("python");
    anyhow::ensure!(
        helper.join("weir_guest/__init__.py").is_file(),
        "{} has no Python helper (python/weir_guest): name weir's guest-sdk with --sdk DIR",
        sdk.display()
    );
    let module = args.name.replace('-', "_");
    let wasm = format!("target/{module}.wasm");
    let (kind, export, class, logic, test) = match args.kind {
        Kind::Transform => (
            "transformer",
            "export_transform",
            "Transform",
            python::TRANSFORM,
            python::TEST_TRANSFORM,
        ),
        Kind::Decode => (
            "decoder",
            "export_decode",
            "Decode",
            python::DECODE,
            python::TEST_DECODE,
        ),
        Kind::Aggregate => (
            "aggregator",
            "export_aggregate",
            "Aggregate",
            python::AGGREGATE,
            python::TEST_AGGREGATE,
        ),
    };
    let (run, pipeline) = usage(args.kind, &wasm, &module);
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &module)
            .replace("{{Struct}}", &struct_name(&args.name))
            .replace("{{kind}}", kind)
            .replace("{{export}}", export)
            .replace("{{Export}}", class)
            .replace("{{helper}}", &helper.display().to_string())
            .replace("{{run}}", &run)
            .replace("{{pipeline}}", &pipeline)
    };
    write_project(
        project,
        [
            ("logic.py", fill(logic)),
            ("app.py", fill(python::APP)),
            ("test_logic.py", fill(test)),
            ("build", fill(python::BUILD)),
            ("test", fill(python::TEST)),
            ("README.md", fill(python::README)),
            (".gitignore", python::GITIGNORE.to_owned()),
            ("wit/weir-operator.wit", WIT.to_owned()),
        ],
        &["build", "test"],
        &format!("a {kind} in Python"),
        "./test && ./build",
    )
}

/// `--lang js`: a JavaScript project on the helper package `weir-guest` (`guest-sdk/js`, or
/// `--sdk` naming it or the guest-sdk directory holding it), built with componentize-js.
fn new_js(args: &NewArgs, project: &Path) -> anyhow::Result<ExitCode> {
    const PACKAGE: &str = include_str!("templates/js/package.json.tmpl");
    const README: &str = include_str!("templates/js/README.md.tmpl");
    const GITIGNORE: &str = include_str!("templates/js/gitignore.tmpl");
    const APP: &str = include_str!("templates/js/app.js.tmpl");
    let helper = match args.sdk.as_deref() {
        Some(dir) if dir.join("js/package.json").is_file() => dir.join("js"),
        Some(dir) => dir.to_owned(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk/js"),
    };
    let helper = helper.canonicalize().with_context(|| {
        format!(
            "no weir-guest at {}: name the JavaScript helper with --sdk DIR (guest-sdk/js in \
             weir's repository)",
            helper.display()
        )
    })?;
    let manifest = std::fs::read_to_string(helper.join("package.json")).unwrap_or_default();
    anyhow::ensure!(
        manifest.contains("\"name\": \"weir-guest\""),
        "{} is not the JavaScript helper (its package.json does not name weir-guest)",
        helper.display()
    );
    let crate_name = args.name.replace('-', "_");
    let wasm = format!("dist/{crate_name}.wasm");
    let (world, module, bridge, export, logic, test) = match args.kind {
        Kind::Transform => (
            "transformer",
            "component",
            "exportTransform",
            "transform",
            include_str!("templates/js/transform.js.tmpl"),
            include_str!("templates/js/transform.test.js.tmpl"),
        ),
        Kind::Decode => (
            "decoder",
            "component",
            "exportDecode",
            "decode",
            include_str!("templates/js/decode.js.tmpl"),
            include_str!("templates/js/decode.test.js.tmpl"),
        ),
        Kind::Aggregate => (
            "aggregator",
            "aggregate",
            "exportAggregate",
            "aggregate",
            include_str!("templates/js/aggregate.js.tmpl"),
            include_str!("templates/js/aggregate.test.js.tmpl"),
        ),
    };
    let (run, pipeline) = usage(args.kind, &wasm, &crate_name);
    // The helper's path goes into JSON (package.json) and Markdown: as a JSON string's inside.
    let helper_text = serde_json::to_string(&helper.display().to_string())?;
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{world}}", world)
            .replace("{{module}}", module)
            .replace("{{bridge}}", bridge)
            .replace("{{export}}", export)
            .replace("{{helper}}", &helper_text[1..helper_text.len() - 1])
            .replace("{{run}}", &run)
            .replace("{{pipeline}}", &pipeline)
    };
    write_project(
        project,
        [
            ("package.json", fill(PACKAGE)),
            ("README.md", fill(README)),
            (".gitignore", GITIGNORE.to_owned()),
            ("src/operator.js", fill(logic)),
            ("src/app.js", fill(APP)),
            ("tests/operator.test.js", fill(test)),
        ],
        &[],
        &format!("a {world} in JavaScript"),
        "npm install && npm test && npm run build",
    )
}

const C_BUILD: &str = include_str!("templates/c/build.tmpl");
const C_README: &str = include_str!("templates/c/README.md.tmpl");
const C_GITIGNORE: &str = include_str!("templates/c/gitignore.tmpl");
const C_TRANSFORM: [&str; 4] = [
    include_str!("templates/c/transform_logic.h.tmpl"),
    include_str!("templates/c/transform_logic.c.tmpl"),
    include_str!("templates/c/transform_test.c.tmpl"),
    include_str!("templates/c/transform_plugin.c.tmpl"),
];
const C_DECODE: [&str; 4] = [
    include_str!("templates/c/decode_logic.h.tmpl"),
    include_str!("templates/c/decode_logic.c.tmpl"),
    include_str!("templates/c/decode_test.c.tmpl"),
    include_str!("templates/c/decode_plugin.c.tmpl"),
];
const C_AGGREGATE: [&str; 4] = [
    include_str!("templates/c/aggregate_logic.h.tmpl"),
    include_str!("templates/c/aggregate_logic.c.tmpl"),
    include_str!("templates/c/aggregate_test.c.tmpl"),
    include_str!("templates/c/aggregate_plugin.c.tmpl"),
];
/// The config reader of the example C plugin, and the contract, copied into C projects.
const C_CONFIG_H: &str = include_str!("../../../plugins/c/range-filter/config.h");
const C_CONFIG_C: &str = include_str!("../../../plugins/c/range-filter/config.c");
const WIT: &str = include_str!("../../../wit/weir-operator.wit");

/// A C project: the logic with a native test, the glue to the bindings, and `build`, which makes
/// the component with Debian's clang and wasi-libc and `wasm-c` (tools/wasm-c).
fn new_c(args: &NewArgs, project: &Path) -> anyhow::Result<ExitCode> {
    let crate_name = args.name.replace('-', "_");
    let (world, [logic_h, logic_c, test_c, plugin_c]) = match args.kind {
        Kind::Transform => ("transformer", C_TRANSFORM),
        Kind::Decode => ("decoder", C_DECODE),
        Kind::Aggregate => ("aggregator", C_AGGREGATE),
    };
    let (run, pipeline) = usage(args.kind, &format!("target/{crate_name}.wasm"), &crate_name);
    // The weir source tree this weir was built from, where `build` finds tools/wasm-c.
    let weir_repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let weir_repo = weir_repo.canonicalize().unwrap_or(weir_repo);
    let fill = |template: &str| {
        template
            .replace("{{name}}", &args.name)
            .replace("{{crate}}", &crate_name)
            .replace("{{world}}", world)
            .replace(
                "{{weir_repo}}",
                &format!("{:?}", weir_repo.display().to_string()),
            )
            .replace("{{run}}", &run)
            .replace("{{pipeline}}", &pipeline)
    };
    write_project(
        project,
        [
            ("build", fill(C_BUILD)),
            ("README.md", fill(C_README)),
            (".gitignore", C_GITIGNORE.to_owned()),
            ("wit/weir-operator.wit", WIT.to_owned()),
            ("src/config.h", C_CONFIG_H.to_owned()),
            ("src/config.c", C_CONFIG_C.to_owned()),
            ("src/logic.h", fill(logic_h)),
            ("src/logic.c", fill(logic_c)),
            ("src/test_logic.c", fill(test_c)),
            ("src/plugin.c", fill(plugin_c)),
        ],
        &["build"],
        &format!("a {world} in C"),
        "./build test && ./build",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_a_crate_and_give_a_type_name() {
        assert!(valid_name("frost-alarm") && valid_name("p95") && valid_name("a1-b2"));
        assert!(!valid_name("Frost") && !valid_name("1x") && !valid_name("a_b"));
        assert!(!valid_name("") && !valid_name("a-") && !valid_name("a/b"));
        assert_eq!(struct_name("frost-alarm"), "FrostAlarm");
        assert_eq!(struct_name("p95"), "P95");
    }
}
