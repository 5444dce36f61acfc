//! Request counts and latencies, and the model's size, in the OpenMetrics
//! text format (the `prometheus-client` crate).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: String,
}

/// The gauges the server sets before each scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelGauges {
    /// Seconds since the model was loaded.
    pub age_seconds: f64,
    /// Users served: the model's and those whose plays were posted since.
    pub users: i64,
    /// Cohorts in the model.
    pub cohorts: i64,
}

/// Every metric the server exposes.
pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    durations: Family<Route, Histogram, fn() -> Histogram>,
    age: Gauge<f64, AtomicU64>,
    users: Gauge,
    cohorts: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RouteStatus, Counter>::default();
        let durations: Family<Route, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let (age, users, cohorts) = (Gauge::<f64, AtomicU64>::default(), Gauge::default(), Gauge::default());
        registry.register("cohortcast_model_age_seconds", "Seconds since the model was loaded", age.clone());
        registry.register(
            "cohortcast_users",
            "Users served: the model's and those whose plays were posted since",
            users.clone(),
        );
        registry.register("cohortcast_cohorts", "Cohorts in the model", cohorts.clone());
        // A counter's exposed name gains `_total`.
        registry.register("cohortcast_http_requests", "Requests answered, by route and status", requests.clone());
        registry.register("cohortcast_http_request_duration_seconds", "Time to answer, by route", durations.clone());
        Metrics { registry, requests, durations, age, users, cohorts }
    }
}

impl Metrics {
    /// Counts one request.
    pub fn record(&self, route: &str, status: u16, took: Duration) {
        self.requests.get_or_create(&RouteStatus { route: route.to_string(), status }).inc();
        self.durations.get_or_create(&Route { route: route.to_string() }).observe(took.as_secs_f64());
    }

    /// The exposition text, with the model's gauges as given.
    pub fn render(&self, model: ModelGauges) -> String {
        self.age.set(model.age_seconds);
        self.users.set(model.users);
        self.cohorts.set(model.cohorts);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_gauges_are_exposed() {
        let m = Metrics::default();
        m.record("/healthz", 200, Duration::from_millis(2));
        m.record("/healthz", 200, Duration::from_millis(20));
        m.record("/v1/releases", 401, Duration::from_micros(100));
        let text = m.render(ModelGauges { age_seconds: 1.5, users: 201, cohorts: 4 });
        assert!(text.contains(r#"cohortcast_http_requests_total{route="/healthz",status="200"} 2"#), "{text}");
        assert!(text.contains(r#"cohortcast_http_request_duration_seconds_count{route="/healthz"} 2"#), "{text}");
        assert!(
            text.contains(r#"cohortcast_http_request_duration_seconds_bucket{le="0.0025",route="/healthz"} 1"#)
                || text.contains(r#"cohortcast_http_request_duration_seconds_bucket{route="/healthz",le="0.0025"} 1"#),
            "{text}"
        );
        assert!(text.contains("cohortcast_users 201") && text.contains("cohortcast_cohorts 4"), "{text}");
        assert!(text.contains("cohortcast_model_age_seconds 1.5"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
