//! `/metrics`: counters and gauges in the Prometheus (OpenMetrics) text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

/// Seconds over which `tinylm_tokens_per_second` averages.
const RATE_WINDOW_S: usize = 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

/// Every metric the server keeps.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    cancelled: Counter,
    queue_depth: Gauge,
    active: Gauge,
    tokens_per_second: Gauge<f64, AtomicU64>,
    time_to_first_token: Histogram,
    /// Tokens made in each of the last RATE_WINDOW_S whole seconds since `t0`:
    /// (second, count) in a ring indexed by second % RATE_WINDOW_S.
    recent: Mutex<[(u64, u64); RATE_WINDOW_S]>,
    t0: Instant,
}

/// Decrements the active-generations gauge when a generation ends, however it ends.
pub struct ActiveGuard<'a>(&'a Gauge);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tinylm");
        let requests = Family::<RequestLabels, Counter>::default();
        let prompt_tokens = Counter::default();
        let completion_tokens = Counter::default();
        let cancelled = Counter::default();
        let queue_depth = Gauge::default();
        let active = Gauge::default();
        let tokens_per_second = Gauge::<f64, AtomicU64>::default();
        // 1 ms .. ~33 s.
        let time_to_first_token = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "requests",
            "HTTP requests answered, by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "prompt_tokens",
            "Prompt tokens of generation requests",
            prompt_tokens.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            completion_tokens.clone(),
        );
        registry.register(
            "cancelled_generations",
            "Generations stopped early because their client went away",
            cancelled.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a generation slot",
            queue_depth.clone(),
        );
        registry.register(
            "active_generations",
            "Requests generating now",
            active.clone(),
        );
        registry.register(
            "tokens_per_second",
            "Tokens generated per second over the last 10 seconds, all requests together",
            tokens_per_second.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From a request's slot being taken to its first generated token",
            time_to_first_token.clone(),
        );
        Self {
            registry,
            requests,
            prompt_tokens,
            completion_tokens,
            cancelled,
            queue_depth,
            active,
            tokens_per_second,
            time_to_first_token,
            recent: Mutex::new([(u64::MAX, 0); RATE_WINDOW_S]),
            t0: Instant::now(),
        }
    }

    pub fn request(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_string(),
                status,
            })
            .inc();
    }

    pub fn prompt(&self, tokens: usize) {
        self.prompt_tokens.inc_by(tokens as u64);
    }

    pub fn token(&self) {
        self.completion_tokens.inc();
        let sec = self.t0.elapsed().as_secs();
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut r[sec as usize % RATE_WINDOW_S];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += 1;
    }

    pub fn first_token(&self, seconds: f64) {
        self.time_to_first_token.observe(seconds);
    }

    pub fn cancelled(&self) {
        self.cancelled.inc();
    }

    pub fn generation_started(&self) -> ActiveGuard<'_> {
        self.active.inc();
        ActiveGuard(&self.active)
    }

    /// The text exposition, with the gauges that are sampled brought up to date.
    pub fn render(&self, queue_depth: usize) -> String {
        self.queue_depth.set(queue_depth as i64);
        let now = self.t0.elapsed().as_secs();
        let tokens: u64 = {
            let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            // The last RATE_WINDOW_S whole seconds, the current partial one excluded.
            r.iter()
                .filter(|(s, _)| *s < now && now - *s <= RATE_WINDOW_S as u64)
                .map(|(_, c)| c)
                .sum()
        };
        self.tokens_per_second
            .set(tokens as f64 / RATE_WINDOW_S as f64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_holds_every_metric() {
        let m = Metrics::new();
        m.request("/v1/completions", 200);
        m.prompt(7);
        for _ in 0..3 {
            m.token();
        }
        m.first_token(0.01);
        {
            let _g = m.generation_started();
            assert!(m.render(2).contains("tinylm_active_generations 1"));
        }
        let text = m.render(2);
        for line in [
            "tinylm_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 1",
            "tinylm_prompt_tokens_total 7",
            "tinylm_generated_tokens_total 3",
            "tinylm_queue_depth 2",
            "tinylm_active_generations 0",
            "tinylm_cancelled_generations_total 0",
            "tinylm_time_to_first_token_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.contains("# TYPE tinylm_tokens_per_second gauge"));
        assert!(text.ends_with("# EOF\n"));
    }
}
