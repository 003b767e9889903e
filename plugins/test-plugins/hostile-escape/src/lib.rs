//! A hostile operator for weir's tests: for every event it tries to leave the sandbox (read a
//! file, open a TCP connection, read the environment) and reports, on the event, what happened.

use std::io::Read;
use std::net::TcpStream;

use weir_guest::prelude::*;

#[operator]
pub struct HostileEscape {
    /// The file to read.
    #[serde(default = "default_file")]
    file: String,
    /// The address to connect to, `host:port`.
    #[serde(default = "default_connect")]
    connect: String,
}

fn default_file() -> String {
    "/etc/hostname".into()
}

fn default_connect() -> String {
    "127.0.0.1:9".into()
}

impl Transform for HostileEscape {
    fn process(&mut self, mut event: Event, ctx: &mut Context) -> Result<(), String> {
        event.set("file", self.read_file());
        event.set("socket", self.open_socket());
        event.set("env", std::env::vars_os().count() as i64);
        ctx.emit(event);
        Ok(())
    }
}

impl HostileEscape {
    fn read_file(&self) -> String {
        let mut bytes = Vec::new();
        match std::fs::File::open(&self.file).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(n) => format!("read {n} bytes"),
            Err(e) => format!("denied: {e}"),
        }
    }

    fn open_socket(&self) -> String {
        match TcpStream::connect(&self.connect) {
            Ok(_) => "connected".into(),
            Err(e) => format!("denied: {e}"),
        }
    }
}

weir_guest::export_transform!(HostileEscape);

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use weir_guest::testing::Harness;

    fn probe(config: &str) -> Event {
        let mut op = Harness::<HostileEscape>::transform(config).unwrap();
        let out = op.run(vec![Event::new("s", 1).with("temp", 2.0)]);
        assert_eq!(out.events.len(), 1);
        out.events.into_iter().next().unwrap()
    }

    #[test]
    fn reports_what_it_could_do_outside_a_sandbox() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = format!(
            "file = \"{}/Cargo.toml\"\nconnect = \"{}\"",
            env!("CARGO_MANIFEST_DIR"),
            listener.local_addr().unwrap()
        );
        let event = probe(&config);
        let size = std::fs::metadata(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .unwrap()
            .len();
        assert_eq!(
            event.text("file"),
            Some(format!("read {size} bytes").as_str())
        );
        assert_eq!(event.text("socket"), Some("connected"));
        assert_eq!(
            event.get("env"),
            Some(&Value::Int(std::env::vars_os().count() as i64))
        );
        assert_eq!(event.f64("temp"), Some(2.0));
    }

    #[test]
    fn reports_failures_without_panicking() {
        let event = probe("file = \"/no/such/file\"\nconnect = \"not an address\"");
        let file = event.text("file").unwrap();
        assert!(
            file.starts_with("denied: ") && file.len() > "denied: ".len(),
            "{file}"
        );
        let socket = event.text("socket").unwrap();
        assert!(
            socket.starts_with("denied: ") && socket.len() > "denied: ".len(),
            "{socket}"
        );
    }
}
