//! What every benchmark shares: distributions of samples and the JSON report under
//! `bench-results/`.

use serde::Serialize;
use x0_node::exit::Exit;

/// Summary of a sample of durations, microseconds.
#[derive(Debug, Serialize)]
pub struct Distribution {
    /// Samples.
    pub count: usize,
    /// Median.
    pub median_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Smallest.
    pub min_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// Summarises samples (microseconds).
pub fn distribution(mut samples: Vec<f64>) -> Distribution {
    samples.sort_by(f64::total_cmp);
    let n = samples.len().max(1);
    let pct = |p: f64| {
        samples
            .get(((n as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Distribution {
        count: samples.len(),
        median_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        min_us: samples.first().copied().unwrap_or(0.0),
        max_us: samples.last().copied().unwrap_or(0.0),
        mean_us: samples.iter().sum::<f64>() / n as f64,
    }
}

/// Writes a benchmark report as pretty JSON to `out/name` (creating `out`); returns the text
/// (for `--json`) and the file's path.
pub fn write_report(
    report: &impl serde::Serialize,
    out: &std::path::Path,
    name: &str,
) -> Result<(String, std::path::PathBuf), Exit> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Exit::failure(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|e| Exit::failure(format!("{}: {e}", out.display())))?;
    let file = out.join(name);
    std::fs::write(&file, format!("{text}\n"))
        .map_err(|e| Exit::failure(format!("{}: {e}", file.display())))?;
    Ok((text, file))
}
