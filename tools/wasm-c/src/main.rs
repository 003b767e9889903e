//! wasm-c: the two steps of building a weir operator in C that a C toolchain cannot do itself.
//!
//! `bindgen` writes the C bindings of a WIT world (wit-bindgen's C generator); clang compiles
//! them, with the object file that carries the world's types, into a wasm32-wasi (preview1) core
//! module; `componentize` wraps that module into a component with the WASI preview1 adapter of
//! the wasmtime weir runs (a reactor: no `main`, the world's exports are the entry points).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::ComponentEncoder;
use wit_parser::{Resolve, WorldId};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes `<world>.h` and `<world>.c`, the C bindings of a world, into a folder.
    Bindgen {
        /// The WIT contract: a .wit file or a folder of them.
        #[arg(long)]
        wit: PathBuf,
        /// The world to bind (`transformer`, `decoder`, `aggregator`, ...).
        #[arg(long)]
        world: String,
        /// The folder to write the bindings into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Makes a component from a core module compiled for wasm32-wasi with the bindings (and
    /// linked with the `<world>_component_type.o` they come with: it names the world).
    Componentize {
        /// The core module (clang --target=wasm32-wasi -mexec-model=reactor).
        module: PathBuf,
        /// Where to write the component.
        #[arg(short, long)]
        output: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bindgen { wit, world, out } => bindgen(&wit, &world, &out),
        Command::Componentize { module, output } => componentize(&module, &output),
    }
}

fn load(wit: &Path, world: &str) -> Result<(Resolve, WorldId)> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot read the WIT contract at {}", wit.display()))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world `{world}` in {}", wit.display()))?;
    Ok((resolve, world))
}

fn bindgen(wit: &Path, world: &str, out: &Path) -> Result<()> {
    let (resolve, world) = load(wit, world)?;
    let opts = wit_bindgen_c::Opts::default();
    let mut files = wit_bindgen_core::Files::default();
    opts.build()
        .generate(&resolve, world, &mut files)
        .context("wit-bindgen's C generator failed")?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        // Unchanged bindings keep their time stamp, so that a build tool does not recompile them.
        if std::fs::read(&path).is_ok_and(|old| old == contents) {
            continue;
        }
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn componentize(module: &Path, output: &Path) -> Result<()> {
    let bytes =
        std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    if !bytes.starts_with(b"\0asm\x01\0\0\0") {
        bail!(
            "{} is not a core WebAssembly module: compile it with clang --target=wasm32-wasi",
            module.display()
        );
    }
    let component = ComponentEncoder::default()
        .module(&bytes)
        .with_context(|| {
            format!(
                "{} does not carry its world: link it with the <world>_component_type.o that \
                 `wasm-c bindgen` wrote",
                module.display()
            )
        })?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .with_context(|| format!("cannot make a component of {}", module.display()))?;
    std::fs::write(output, component)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
