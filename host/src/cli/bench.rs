pub(super) fn run(_: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    todo!()
}
#[derive(Debug, clap::Args)]
pub(super) struct BenchArgs {}
