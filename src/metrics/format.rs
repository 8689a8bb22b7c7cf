//! The classic Prometheus text format (0.0.4) from the OpenMetrics text the
//! registry encodes.
//!
//! node_exporter's textfile collector (1.5, measured) and older scrapers
//! parse only the classic format: there an OpenMetrics counter (`# TYPE x
//! counter` over samples named `x_total`) loses its type and becomes an
//! untyped `x_total`. The two formats differ, for what we register, only in
//! three things, each handled here: counters' family names carry `_total`,
//! and there are no `# UNIT` and `# EOF` lines. Values and labels are the
//! registry's own, untouched.

/// Rewrites OpenMetrics text (as `prometheus_client` encodes it) into the
/// classic text format.
pub(super) fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A HELP line waits for its TYPE line: a counter's is renamed.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "unknown" => (name.to_string(), "untyped"),
                k => (name.to_string(), k),
            };
            flush_help(&mut out, help.take(), Some(&name));
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), None);
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, None);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, renamed: Option<&str>) {
    if let Some((name, text)) = help {
        let name = renamed.unwrap_or(name);
        out.push_str(&format!("# HELP {name} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_name_and_openmetrics_only_lines_go() {
        let om = "# HELP a_x Things.\n# TYPE a_x counter\na_x_total{k=\"v\"} 1\n\
                  # HELP a_t Time.\n# TYPE a_t gauge\n# UNIT a_t seconds\na_t 2.5\n\
                  # HELP a_h H.\n# TYPE a_h histogram\na_h_sum 0.1\na_h_count 1\na_h_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP a_x_total Things.\n# TYPE a_x_total counter\na_x_total{k=\"v\"} 1\n\
             # HELP a_t Time.\n# TYPE a_t gauge\na_t 2.5\n\
             # HELP a_h H.\n# TYPE a_h histogram\na_h_sum 0.1\na_h_count 1\na_h_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
