//! Collected figures (every run's value per target) and the number formatting of the report.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::targets::Kind;

#[derive(Debug, Clone)]
pub(crate) struct Metric {
    pub(crate) id: String,
    pub(crate) label: String,
    pub(crate) unit: String,
    pub(crate) higher_better: bool,
    pub(crate) values: BTreeMap<Kind, Vec<f64>>,
}

#[derive(Default)]
pub(crate) struct Results {
    pub(crate) metrics: Vec<Metric>,
    pub(crate) notes: Vec<String>,
    pub(crate) extra: serde_json::Map<String, Value>,
}

impl Results {
    pub(crate) fn add(
        &mut self,
        id: &str,
        label: &str,
        unit: &str,
        higher_better: bool,
        k: Kind,
        v: f64,
    ) {
        if !v.is_finite() {
            return;
        }
        let i = match self.metrics.iter().position(|m| m.id == id) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    id: id.to_owned(),
                    label: label.to_owned(),
                    unit: unit.to_owned(),
                    higher_better,
                    values: BTreeMap::new(),
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[i].values.entry(k).or_default().push(v);
    }

    pub(crate) fn median(&self, id: &str, k: Kind) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.values.get(&k))
            .map(|v| median(v))
    }

    pub(crate) fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  note: {s}");
        self.notes.push(s);
    }
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 1000.0 {
        let s = format!("{v:.0}");
        // thousands separators
        let bytes = s.as_bytes();
        let mut out = String::new();
        for (i, c) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i) % 3 == 0 && *c != b'-' {
                out.push(',');
            }
            out.push(*c as char);
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
