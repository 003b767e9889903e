//! The systemd unit in `configs/`: systemd accepts it, and it agrees with weir's defaults.

use std::process::Command;

use weir_tests::process::TempDir;
use weir_tests::process::weir_bin;
use weir_tests::repo;

fn unit() -> String {
    std::fs::read_to_string(repo().join("configs/weir.service")).expect("configs/weir.service")
}

/// `systemd-analyze verify` on the unit, with `ExecStart` pointing at the weir just built.
#[test]
fn systemd_accepts_the_unit() {
    let analyze = weir_tests::apt::ensure("systemd-analyze", "systemd");
    let dir = TempDir::new("weir-service");
    let text = unit().replace(
        "ExecStart=/usr/local/bin/weir",
        &format!("ExecStart={}", weir_bin().display()),
    );
    assert!(
        text.contains(&weir_bin().display().to_string()),
        "ExecStart names /usr/local/bin/weir"
    );
    let path = dir.path().join("weir.service");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("weir.service"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

/// The unit's state directory is weir's default data directory, so a config without
/// `[storage] data_dir` keeps its database where systemd gives the `weir` user write access.
#[test]
fn the_unit_and_the_default_data_dir_agree() {
    let text = unit();
    assert!(text.contains("StateDirectory=weir\n"));
    assert!(text.contains("User=weir\n"));
    assert!(text.contains("KillSignal=SIGTERM\n"));
    let out = weir_tests::process::weir_command()
        .args(["check", "configs/farm.toml"])
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let storage = stdout
        .lines()
        .find(|l| l.starts_with("storage"))
        .expect("weir check prints the storage");
    assert!(
        storage.contains(" /var/lib/weir "),
        "the default data_dir is systemd's StateDirectory: {storage}"
    );
}
