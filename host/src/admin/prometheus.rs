//! Prometheus metrics in the text exposition format: the families a scrape shows, built from
//! counters and gauges read at that moment.

/// A Prometheus text-format builder (exposition format 0.0.4): counters and gauges with labels;
/// HELP and TYPE once per family (samples of a family are kept together, in the order families
/// first appear); label values and HELP text escaped.
#[derive(Debug, Default)]
pub struct Prometheus {
    families: Vec<(String, String, &'static str, Vec<String>)>,
}

impl Prometheus {
    /// The content type of what [`Prometheus::render`] writes.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4";

    pub fn new() -> Self {
        Prometheus::default()
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, "counter", labels, value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, "gauge", labels, value);
    }

    fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = if labels.is_empty() {
            String::new()
        } else {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| {
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    format!("{k}=\"{v}\"")
                })
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let value = match value {
            v if v.is_nan() => "NaN".to_owned(),
            v if v == f64::INFINITY => "+Inf".to_owned(),
            v if v == f64::NEG_INFINITY => "-Inf".to_owned(),
            v => v.to_string(),
        };
        let sample = format!("{name}{labels} {value}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(sample),
            None => self
                .families
                .push((name.to_owned(), help.to_owned(), kind, vec![sample])),
        }
    }

    pub fn render(self) -> String {
        let mut out = String::new();
        for (name, help, kind, samples) in self.families {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in samples {
                out.push_str(&s);
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_help_and_type_once_per_family_and_escapes_labels() {
        let mut p = Prometheus::new();
        p.counter("weir_x_total", "Xs", &[("step", "a\"b")], 1.0);
        p.counter("weir_x_total", "Xs", &[("step", "c")], 2.5);
        p.gauge("weir_y", "Y", &[], 3.0);
        assert_eq!(
            p.render(),
            "# HELP weir_x_total Xs\n# TYPE weir_x_total counter\nweir_x_total{step=\"a\\\"b\"} 1\n\
             weir_x_total{step=\"c\"} 2.5\n# HELP weir_y Y\n# TYPE weir_y gauge\nweir_y 3\n"
        );
    }

    #[test]
    fn prometheus_escapes_help_and_backslashes_and_writes_special_values() {
        let mut p = Prometheus::new();
        p.gauge("g", "a\\b\nc", &[("path", "C:\\x\ny")], f64::NAN);
        p.gauge("g", "ignored: the first HELP stays", &[], f64::INFINITY);
        p.counter("c", "C", &[("a", "1"), ("b", "2")], f64::NEG_INFINITY);
        p.gauge("g", "", &[("k", "v")], -0.5);
        assert_eq!(
            p.render(),
            "# HELP g a\\\\b\\nc\n# TYPE g gauge\ng{path=\"C:\\\\x\\ny\"} NaN\ng +Inf\n\
             g{k=\"v\"} -0.5\n# HELP c C\n# TYPE c counter\nc{a=\"1\",b=\"2\"} -Inf\n"
        );
        assert_eq!(Prometheus::new().render(), "");
    }
}
