//! The Debian package (`tools/deb`), installed on this machine with dpkg: the user and data
//! directory it creates, the installed example config checked by the installed weir, that weir
//! running with the installed plugins and answering `weir plugin list`, and a removal that keeps
//! `/var/lib/weir`. It installs a package, so it needs root; it removes the package (and the user
//! and directory, if it created them) at the end.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use weir_tests::mosquitto::Mosquitto;
use weir_tests::process::{TempDir, WeirProcess, weir_bin};
use weir_tests::repo;

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Removes the package (and what its install created that was not there before) when dropped,
/// so that a failing test leaves the machine as it found it.
struct Installed {
    had_user: bool,
    had_data_dir: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "weir"]);
        if !self.had_data_dir {
            let _ = std::fs::remove_dir_all("/var/lib/weir");
        }
        if !self.had_user {
            let _ = run("deluser", &["--system", "weir"]);
        }
    }
}

#[test]
fn the_package_installs_runs_its_example_and_keeps_the_data_on_removal() {
    // The package depends on adduser (its scripts create the user).
    weir_tests::apt::ensure("adduser", "adduser");
    let (had_package, _) = run("dpkg-query", &["-W", "weir"]);
    assert!(
        !had_package,
        "a weir package is installed on this machine already; the test would replace it"
    );
    // The package of the weir the tests built (tools/deb strips it).
    let out = Command::new("bash")
        .arg(repo().join("tools/deb"))
        .arg("--binary")
        .arg(weir_bin())
        .current_dir(repo())
        .output()
        .expect("tools/deb runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tools/deb: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = repo().join(stdout.lines().last().expect("tools/deb names the package"));
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("_amd64.deb")
            || !cfg!(target_arch = "x86_64"),
        "{}",
        deb.display()
    );
    let (_, info) = run("dpkg-deb", &["--info", deb.to_str().unwrap()]);
    assert!(info.contains("Package: weir"), "{info}");
    let (_, contents) = run("dpkg-deb", &["--contents", deb.to_str().unwrap()]);
    for path in [
        "./usr/bin/weir",
        "./lib/systemd/system/weir.service",
        "./etc/weir/weir.toml",
        "./etc/weir/sensors.csv",
        "./usr/share/weir/plugins/range_filter.wasm",
        "./usr/share/doc/weir/configs.md",
    ] {
        assert!(contents.contains(path), "{path} missing:\n{contents}");
    }

    let installed = Installed {
        had_user: run("getent", &["passwd", "weir"]).0,
        had_data_dir: Path::new("/var/lib/weir").exists(),
    };
    let (ok, text) = run("dpkg", &["--install", deb.to_str().unwrap()]);
    assert!(ok, "dpkg --install (needs root): {text}");
    let (ok, user) = run("getent", &["passwd", "weir"]);
    assert!(ok, "the weir system user exists");
    assert!(user.contains("/var/lib/weir"), "{user}");
    let (_, owner) = run("stat", &["-c", "%U %a", "/var/lib/weir"]);
    assert_eq!(owner.trim(), "weir 750", "/var/lib/weir belongs to weir");
    let unit = std::fs::read_to_string("/lib/systemd/system/weir.service").unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/weir run /etc/weir/weir.toml"));

    // The installed weir checks the installed config: its plugins load from /usr/share/weir.
    let (ok, check) = run("/usr/bin/weir", &["check", "/etc/weir/weir.toml"]);
    assert!(ok, "weir check /etc/weir/weir.toml:\n{check}");
    assert!(
        check.contains("/usr/share/weir/plugins/range_filter.wasm"),
        "{check}"
    );

    // The installed config, live between two brokers of this test.
    let sensors = Mosquitto::start();
    let cloud = Mosquitto::start();
    let dir = TempDir::new("weir-package");
    let config = std::fs::read_to_string("/etc/weir/weir.toml")
        .unwrap()
        .replace(
            "broker = \"127.0.0.1:1883\"",
            &format!("broker = \"127.0.0.1:{}\"", sensors.port()),
        )
        .replace(
            "version = 1\n",
            &format!(
                "version = 1\n\n[upstream]\nbroker = \"127.0.0.1:{}\"\n\n[storage]\ndata_dir = {:?}\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\n",
                cloud.port(),
                dir.path().join("data")
            ),
        );
    let config_path = dir.path().join("weir.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut weir = WeirProcess::spawn_program(
        Path::new("/usr/bin/weir"),
        &["run", config_path.to_str().unwrap()],
        &[("WEIR_LOG", "weir=info")],
    );
    let admin = weir.admin_address(Duration::from_secs(120));
    let (ok, list) = run("/usr/bin/weir", &["plugin", "list", "--admin", &admin]);
    assert!(ok, "weir plugin list: {list}");
    for (step, plugin) in [
        ("farm/transform[0]", "range_filter.wasm"),
        ("farm/transform[2]", "unit_converter.wasm"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(step) && l.contains(plugin) && l.contains("transformer")),
            "{step} runs {plugin}:\n{list}"
        );
    }
    assert!(weir.terminate().success(), "{}", weir.stderr());

    // Removal takes the program and keeps the data directory.
    let (ok, text) = run("dpkg", &["--remove", "weir"]);
    assert!(ok, "dpkg --remove: {text}");
    assert!(!Path::new("/usr/bin/weir").exists(), "the binary is gone");
    assert!(
        Path::new("/var/lib/weir").is_dir(),
        "/var/lib/weir stays: it may hold records owed upstream"
    );
    drop(installed);
}
