//! Prometheus metrics: the families a scrape shows, gathered from counters and gauges read at
//! that moment, and written by `prometheus-client` (the Prometheus project's Rust client) in the
//! OpenMetrics text format, which Prometheus prefers: `# HELP` and `# TYPE` once per family (a
//! counter's family is named without its `_total`, which its samples carry), label values
//! escaped, `# EOF` at the end.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The families of one scrape, in the order they first appear; samples of a family are kept
/// together.
#[derive(Debug, Default)]
pub struct Prometheus {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    /// As samples are named (a counter's ends in `_total`).
    name: String,
    help: String,
    counter: bool,
    samples: Vec<(Vec<(String, String)>, f64)>,
}

impl Prometheus {
    /// The content type of what [`Prometheus::render`] writes.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    pub fn new() -> Self {
        Prometheus::default()
    }

    /// A counter sample; `name` ends in `_total`.
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, true, labels, value);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.add(name, help, false, labels, value);
    }

    fn add(&mut self, name: &str, help: &str, counter: bool, labels: &[(&str, &str)], value: f64) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(f) => f.samples.push((labels, value)),
            None => self.families.push(Family {
                name: name.to_owned(),
                help: help.to_owned(),
                counter,
                samples: vec![(labels, value)],
            }),
        }
    }

    /// The text of every family.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(self.families)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String does not fail");
        out
    }
}

/// The families, for the registry to encode.
#[derive(Debug)]
struct Scrape(Vec<Family>);

/// A value as an integer when it is one (counters and gauges mostly count things), so that it
/// reads `7`, not `7.0`.
fn whole(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() < 9.0e15).then_some(v as i64)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let (name, kind) = if f.counter {
                let name = f.name.strip_suffix("_total").unwrap_or(&f.name);
                (name, MetricType::Counter)
            } else {
                (f.name.as_str(), MetricType::Gauge)
            };
            // HELP is written as given: escape what would break its line.
            let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            let mut family = encoder.encode_descriptor(name, &help, None, kind)?;
            for (labels, value) in &f.samples {
                let sample = family.encode_family(labels)?;
                match (f.counter, whole(*value)) {
                    (true, Some(n)) if n >= 0 => ConstCounter::new(n as u64).encode(sample)?,
                    (true, _) => ConstCounter::new(*value).encode(sample)?,
                    (false, Some(n)) => ConstGauge::new(n).encode(sample)?,
                    (false, None) => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_once_and_labels_are_escaped() {
        let mut p = Prometheus::new();
        p.counter("weir_x_total", "Xs", &[("step", "a\"b")], 1.0);
        p.gauge("weir_y", "Y", &[], 3.0);
        p.counter("weir_x_total", "Xs", &[("step", "c\\d\ne")], 2.5);
        p.gauge(
            "weir_y",
            "ignored: the first HELP stays",
            &[("k", "v")],
            -0.5,
        );
        assert_eq!(
            p.render(),
            "# HELP weir_x Xs\n# TYPE weir_x counter\nweir_x_total{step=\"a\\\"b\"} 1\n\
             weir_x_total{step=\"c\\\\d\\ne\"} 2.5\n\
             # HELP weir_y Y\n# TYPE weir_y gauge\nweir_y 3\nweir_y{k=\"v\"} -0.5\n# EOF\n"
        );
    }

    #[test]
    fn help_is_escaped_and_values_keep_their_precision() {
        let mut p = Prometheus::new();
        p.gauge("g", "a\\b\nc", &[("a", "1"), ("b", "2")], f64::NAN);
        p.gauge("g", "", &[], 1e20);
        p.counter("c_total", "C", &[], 0.000_25);
        assert_eq!(
            p.render(),
            "# HELP g a\\\\b\\nc\n# TYPE g gauge\ng{a=\"1\",b=\"2\"} NaN\ng 100000000000000000000.0\n\
             # HELP c C\n# TYPE c counter\nc_total 0.00025\n# EOF\n"
        );
        assert_eq!(Prometheus::new().render(), "# EOF\n");
    }
}
