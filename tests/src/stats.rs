//! Latency samples of the benchmarks: nearest-rank percentiles over sorted milliseconds.

use std::time::Duration;

use serde_json::{json, Value};

/// Milliseconds, sorted.
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }

    /// Nearest rank; NaN when there are no samples.
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }

    pub fn to_json(&self) -> Value {
        let mean = self.0.iter().sum::<f64>() / self.0.len().max(1) as f64;
        json!({
            "n": self.0.len(),
            "min_ms": self.0.first(),
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "max_ms": self.0.last(),
            "mean_ms": mean,
        })
    }

    /// One line on stderr: the run's progress for whoever watches it.
    pub fn line(&self, label: &str) {
        eprintln!(
            "{label:<44} p50 {:>9.2} ms  p99 {:>9.2} ms  min {:>9.2} ms  max {:>9.2} ms  (n={})",
            self.pct(0.5),
            self.pct(0.99),
            self.0.first().copied().unwrap_or(f64::NAN),
            self.0.last().copied().unwrap_or(f64::NAN),
            self.0.len()
        );
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The machine's load averages (1, 5, 15 min), printed beside every figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The latencies of `n` calls of `call(i)` (ms), after `warmup` unmeasured ones; `i` counts
/// every call from 0, warm-up included.
pub async fn time_calls<F, Fut>(warmup: usize, n: usize, mut call: F) -> anyhow::Result<Samples>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut v = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let t = std::time::Instant::now();
        call(i as u64).await?;
        if i >= warmup {
            v.push(ms(t.elapsed()));
        }
    }
    Ok(Samples::new(v))
}
