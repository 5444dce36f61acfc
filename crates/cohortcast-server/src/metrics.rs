//! Request counts and latencies in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct Route {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters of every route.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<String, Route>>,
}

impl Metrics {
    /// Counts one request.
    pub fn record(&self, route: &str, status: u16, took: Duration) {
        let s = took.as_secs_f64();
        let mut routes = self.routes.lock().expect("poisoned");
        let r = routes.entry(route.to_string()).or_default();
        *r.by_status.entry(status).or_default() += 1;
        for (b, &le) in r.buckets.iter_mut().zip(&BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
        r.count += 1;
        r.sum += s;
    }

    /// The exposition text, with `gauges` (name, help, value) first.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let routes = self.routes.lock().expect("poisoned");
        out.push_str("# HELP cohortcast_http_requests_total Requests answered, by route and status.\n");
        out.push_str("# TYPE cohortcast_http_requests_total counter\n");
        for (route, r) in routes.iter() {
            for (status, n) in &r.by_status {
                let _ = writeln!(out, "cohortcast_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP cohortcast_http_request_duration_seconds Time to answer, by route.\n");
        out.push_str("# TYPE cohortcast_http_request_duration_seconds histogram\n");
        for (route, r) in routes.iter() {
            let name = "cohortcast_http_request_duration_seconds";
            for (b, le) in r.buckets.iter().zip(BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {b}");
            }
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", r.count);
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", r.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", r.count);
        }
        out
    }
}
