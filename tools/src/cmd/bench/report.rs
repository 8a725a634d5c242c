//! The benchmark report in fio's JSON shape (`--output-format=json`), so `reel bench device
//! --json` output and fio output can be read by the same scripts and compared field by field.
//!
//! Only the fields both tools fill are modelled, with fio's exact key spellings (`"job options"`,
//! `"N"`, percentile keys such as `"99.900000"`); units are fio's: bytes, bytes per second,
//! kibibytes, milliseconds of runtime, nanoseconds of latency. The same types parse fio's output
//! (unknown fields are ignored), which is how `--compare-fio` reads it.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The percentiles fio reports by default, in its order.
pub const PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// fio's spelling of a percentile key: six decimals.
pub fn percentile_key(p: f64) -> String {
    format!("{p:.6}")
}

/// Top level of fio's JSON output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    #[serde(
        rename = "fio version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub fio_version: Option<String>,
    #[serde(
        rename = "reel version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub reel_version: Option<String>,
    pub jobs: Vec<Job>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub jobname: String,
    #[serde(default)]
    pub error: i64,
    #[serde(rename = "job options", default)]
    pub job_options: BTreeMap<String, String>,
    pub read: Direction,
    /// User CPU time of the job, in percent of its runtime.
    #[serde(default)]
    pub usr_cpu: f64,
    /// System CPU time of the job, in percent of its runtime.
    #[serde(default)]
    pub sys_cpu: f64,
    /// Context switches.
    #[serde(default)]
    pub ctx: u64,
}

impl Job {
    /// CPU time (user + system) per completed I/O, in nanoseconds; `None` without CPU figures.
    pub fn cpu_ns_per_io(&self) -> Option<f64> {
        let cpu_ms = (self.usr_cpu + self.sys_cpu) / 100.0 * self.read.runtime as f64;
        (self.read.total_ios > 0 && cpu_ms > 0.0).then(|| cpu_ms * 1e6 / self.read.total_ios as f64)
    }
}

/// One data direction (`read`) of a job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Direction {
    pub io_bytes: u64,
    pub io_kbytes: u64,
    pub bw_bytes: u64,
    /// KiB/s, as fio reports it.
    pub bw: u64,
    pub iops: f64,
    /// Milliseconds.
    pub runtime: u64,
    pub total_ios: u64,
    pub clat_ns: LatencyNs,
}

/// A latency distribution in nanoseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyNs {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub stddev: f64,
    #[serde(rename = "N", default)]
    pub n: u64,
    #[serde(default)]
    pub percentile: Percentiles,
}

impl LatencyNs {
    /// The value at percentile `p` (e.g. 99.0), if the report has it.
    pub fn at(&self, p: f64) -> Option<u64> {
        let key = percentile_key(p);
        self.percentile
            .0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|&(_, v)| v)
    }
}

/// Percentile → nanoseconds, in report order (a JSON object whose keys are fio's spelling).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Percentiles(pub Vec<(String, u64)>);

impl Serialize for Percentiles {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Percentiles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Percentiles;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of percentile to nanoseconds")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Percentiles, A::Error> {
                let mut v = Vec::new();
                while let Some((k, ns)) = a.next_entry::<String, u64>()? {
                    v.push((k, ns));
                }
                Ok(Percentiles(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fio_output_and_keeps_percentile_order() {
        let fio = r#"{
          "fio version" : "fio-3.33",
          "jobs" : [ { "jobname" : "x", "groupid" : 0, "error" : 0,
            "job options" : { "rw" : "read", "bs" : "4k" },
            "read" : { "io_bytes" : 4096, "io_kbytes" : 4, "bw_bytes" : 4096, "bw" : 4,
              "iops" : 1.5, "runtime" : 1000, "total_ios" : 1, "short_ios" : 0,
              "clat_ns" : { "min" : 1, "max" : 9, "mean" : 5.0, "stddev" : 1.0, "N" : 1,
                "percentile" : { "1.000000" : 2, "50.000000" : 5, "99.900000" : 9 } } },
            "write" : {} } ] }"#;
        let r: Report = serde_json::from_str(fio).expect("parses");
        let j = &r.jobs[0];
        assert_eq!(j.read.io_bytes, 4096);
        assert_eq!(j.read.clat_ns.at(50.0), Some(5));
        assert_eq!(j.read.clat_ns.at(99.9), Some(9));
        assert_eq!(j.read.clat_ns.at(99.0), None);
        let out = serde_json::to_string(&j.read.clat_ns.percentile).expect("serializes");
        assert_eq!(out, r#"{"1.000000":2,"50.000000":5,"99.900000":9}"#);
    }

    #[test]
    fn percentile_keys_match_fio() {
        assert_eq!(percentile_key(1.0), "1.000000");
        assert_eq!(percentile_key(99.95), "99.950000");
        assert_eq!(percentile_key(99.99), "99.990000");
    }
}
