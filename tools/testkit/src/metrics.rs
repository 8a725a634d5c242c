//! A `/metrics` scrape (Prometheus text format) and sums over its samples.

/// The text of one `/metrics` scrape.
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every sample of the family `name`, whatever its labels.
    pub fn sum(&self, name: &str) -> u64 {
        self.samples(name)
            .map(|(_, v)| v)
            .filter_map(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// The sum of the samples of `name` whose label set contains `label` (e.g.
    /// `kind="head_timeout"`); the samples must be integers.
    pub fn sum_where(&self, name: &str, label: &str) -> u64 {
        self.samples(name)
            .filter(|(labels, _)| labels.starts_with('{') && labels.contains(label))
            .map(|(_, v)| v.parse::<u64>().expect("integer sample"))
            .sum()
    }

    /// The lines of the families whose names start with one of `prefixes`, for messages.
    pub fn lines_of(&self, prefixes: &[&str]) -> String {
        self.0
            .lines()
            .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `(labels, value)` of each sample of `name` (`labels` empty when it has none).
    fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(move |l| {
                let rest = l.strip_prefix(name)?;
                if !(rest.starts_with('{') || rest.starts_with(' ')) {
                    return None;
                }
                let (labels, value) = rest.rsplit_once(' ')?;
                Some((labels.trim(), value))
            })
    }
}

/// The sum of every sample of the family `name` in a scrape's text.
pub fn metric_sum(metrics: &str, name: &str) -> u64 {
    Metrics(metrics.to_string()).sum(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_name_and_label() {
        let m = Metrics(
            "# HELP reel_errors_total x\nreel_errors_total{kind=\"a\",thread=\"0\"} 2\n\
             reel_errors_total{kind=\"b\",thread=\"1\"} 5\nreel_errors_totalx 9\n\
             reel_up 1\n"
                .to_string(),
        );
        assert_eq!(m.sum("reel_errors_total"), 7);
        assert_eq!(m.sum_where("reel_errors_total", "kind=\"b\""), 5);
        assert_eq!(m.sum("reel_up"), 1);
        assert_eq!(m.sum_where("reel_up", "kind"), 0);
    }
}
