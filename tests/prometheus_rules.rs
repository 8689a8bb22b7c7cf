//! contrib/prometheus/alerts.yml: the alerting rules shipped for operators.
//!
//! With promtool (`.cache/prometheus/bin/promtool`, which scripts/test fetches, or
//! `$SSM_COSMOVISOR_TEST_PROMTOOL`): `promtool check rules` and the unit tests in
//! contrib/prometheus/alerts_test.yml. Always, through the project's Python and PyYAML: every
//! rule is an alert with a severity, a summary and a description, every metric an expression
//! names is one the tool exports, and every alert has unit tests where it fires and where it
//! must not.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const RULES: &str = "contrib/prometheus/alerts.yml";
const RULE_TESTS: &str = "contrib/prometheus/alerts_test.yml";
const GROUP: &str = "ssm-cosmovisor";
const PREFIX: &str = "ssm_cosmovisor_";
const SEVERITIES: &[&str] = &["critical", "warning", "info"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Gauge,
    Counter,
    Histogram,
}

/// Every metric the tool exports, without the `ssm_cosmovisor_` prefix.
const METRICS: &[(&str, Kind)] = &[
    ("build_info", Kind::Gauge),
    ("start_time_seconds", Kind::Gauge),
    ("role", Kind::Gauge),
    ("signer_since_timestamp_seconds", Kind::Gauge),
    ("lease_held", Kind::Gauge),
    ("lease_remaining_seconds", Kind::Gauge),
    ("lease_deadline_timestamp_seconds", Kind::Gauge),
    ("lease_renewals_total", Kind::Counter),
    ("lease_renewal_failures_total", Kind::Counter),
    ("lease_losses_total", Kind::Counter),
    ("lease_record_impersonations_total", Kind::Counter),
    ("lease_takeovers_total", Kind::Counter),
    ("sign_state_height", Kind::Gauge),
    ("sign_state_round", Kind::Gauge),
    ("sign_state_step", Kind::Gauge),
    ("sign_state_raises_total", Kind::Counter),
    ("guard_checks_total", Kind::Counter),
    ("guard_endpoints_unusable", Kind::Gauge),
    ("guard_last_check_timestamp_seconds", Kind::Gauge),
    ("key_deliveries_total", Kind::Counter),
    ("key_delivery_duration_seconds", Kind::Histogram),
    ("last_delivery_timestamp_seconds", Kind::Gauge),
    ("seconds_since_last_delivery", Kind::Gauge),
    ("fetch_duration_seconds", Kind::Histogram),
    ("fetch_errors_total", Kind::Counter),
    ("child_starts_total", Kind::Counter),
    ("child_exits_total", Kind::Counter),
    ("slot_state", Kind::Gauge),
    ("metrics_write_errors_total", Kind::Counter),
    ("metrics_endpoint_up", Kind::Gauge),
];

/// `$SSM_COSMOVISOR_TEST_PROMTOOL` (must exist), else `.cache/prometheus/bin/promtool` if it does.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSM_COSMOVISOR_TEST_PROMTOOL").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SSM_COSMOVISOR_TEST_PROMTOOL={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let p = support::repo_dir().join(".cache/prometheus/bin/promtool");
    p.is_file().then_some(p)
}

fn output_text(o: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_promtool(promtool: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(support::repo_dir())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "promtool {} failed\n{text}",
        args.join(" ")
    );
    text
}

/// The YAML files as JSON values, parsed by PyYAML in the project's virtualenv (scripts/test
/// installs it with moto), else by a `python3` on PATH that has PyYAML.
fn load_yaml(rel: &str) -> Value {
    let venv = support::venv_python();
    let python = if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    };
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(support::repo_dir().join(rel))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} to parse {rel} ({e}); scripts/test creates .venv",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "{} could not parse {rel} (PyYAML comes with moto in .venv: run scripts/test once)\n{}",
        python.display(),
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{rel} parsed to invalid JSON: {e}"))
}

/// The rules of the `ssm-cosmovisor` group.
fn rules() -> Vec<Value> {
    let doc = load_yaml(RULES);
    let groups = doc["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("{RULES}: no `groups` list"));
    let group = groups
        .iter()
        .find(|g| g["name"] == GROUP)
        .unwrap_or_else(|| panic!("{RULES}: no group named {GROUP}"));
    let rules = group["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{RULES}: group {GROUP} has no `rules` list"));
    assert!(!rules.is_empty(), "{RULES}: group {GROUP} has no rules");
    rules.clone()
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))?
        .as_str()
        .filter(|s| !s.trim().is_empty())
}

/// Each `ssm_cosmovisor_…` name in `text` (a name starts where no name character precedes).
fn metric_names(text: &str) -> Vec<&str> {
    let is_name_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = text.as_bytes();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(PREFIX).map(|i| from + i) {
        let mut end = i + PREFIX.len();
        while end < bytes.len() && is_name_char(bytes[end]) {
            end += 1;
        }
        if i == 0 || !is_name_char(bytes[i - 1]) {
            names.push(&text[i..end]);
        }
        from = end;
    }
    names
}

/// Whether `sample` is a sample name of an exported metric: the name itself for gauges and
/// counters, `_bucket`, `_sum` and `_count` for histograms.
fn is_exported(sample: &str) -> bool {
    let Some(short) = sample.strip_prefix(PREFIX) else {
        return false;
    };
    METRICS.iter().any(|&(name, kind)| match kind {
        Kind::Gauge | Kind::Counter => short == name,
        Kind::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| short.strip_prefix(name) == Some(suffix)),
    })
}

#[test]
fn alerts_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = promtool() else {
        eprintln!(
            "promtool not available (.cache/prometheus/bin/promtool or SSM_COSMOVISOR_TEST_PROMTOOL; \
             scripts/test fetches it): {RULES} was checked for structure and metric names only, \
             {RULE_TESTS} was not run"
        );
        return;
    };
    let version = Command::new(&promtool)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let version = String::from_utf8_lossy(&version.stdout);
    eprintln!(
        "{}: {}",
        promtool.display(),
        version.lines().next().unwrap_or("no version")
    );
    let check = run_promtool(&promtool, &["check", "rules", RULES]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = run_promtool(&promtool, &["test", "rules", RULE_TESTS]);
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn every_rule_is_an_alert_with_severity_summary_and_description() {
    let mut names = BTreeSet::new();
    for rule in rules() {
        let alert = str_field(&rule, &["alert"]).unwrap_or_else(|| {
            panic!("{RULES}: a rule without `alert` (recording rules belong elsewhere): {rule}")
        });
        assert!(
            names.insert(alert.to_string()),
            "{RULES}: alert {alert} defined twice"
        );
        assert!(
            alert.starts_with("SsmCosmovisor") && alert.chars().all(|c| c.is_ascii_alphanumeric()),
            "{RULES}: alert name {alert} should be SsmCosmovisor<CamelCase>"
        );
        assert!(
            str_field(&rule, &["expr"]).is_some(),
            "{RULES}: {alert} has no expr"
        );
        let severity = str_field(&rule, &["labels", "severity"])
            .unwrap_or_else(|| panic!("{RULES}: {alert} has no labels.severity"));
        assert!(
            SEVERITIES.contains(&severity),
            "{RULES}: {alert} has severity {severity}, not one of {SEVERITIES:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                str_field(&rule, &["annotations", annotation]).is_some(),
                "{RULES}: {alert} has no annotations.{annotation}"
            );
        }
        if let Some(f) = rule.get("for") {
            let f = f.as_str().unwrap_or_default();
            let unit = f.trim_start_matches(|c: char| c.is_ascii_digit());
            assert!(
                unit.len() < f.len() && ["s", "m", "h"].contains(&unit),
                "{RULES}: {alert} has `for: {f}`, expected a number and s, m or h"
            );
        }
    }
}

#[test]
fn alert_expressions_use_only_metrics_the_tool_exports() {
    let mut known = BTreeSet::new();
    for &(name, kind) in METRICS {
        assert!(known.insert(name), "METRICS lists {name} twice");
        assert_eq!(
            name.ends_with("_total"),
            kind == Kind::Counter,
            "{name}: counters, and only counters, end in _total"
        );
    }

    let mut unknown = Vec::new();
    for rule in rules() {
        let alert = rule["alert"].as_str().unwrap_or("?");
        let expr = str_field(&rule, &["expr"]).unwrap_or_else(|| panic!("{alert}: no expr"));
        let used = metric_names(expr);
        assert!(
            !used.is_empty(),
            "{alert}: the expression names no {PREFIX} metric: {expr}"
        );
        // The annotations point the operator at metrics too; those must exist as well.
        let annotations = rule["annotations"].as_object().into_iter().flatten();
        let mentioned = annotations
            .filter_map(|(_, v)| v.as_str())
            .flat_map(metric_names);
        for name in used.into_iter().chain(mentioned) {
            if !is_exported(name) {
                unknown.push(format!("{alert}: {name}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{RULES} uses metrics the tool does not export:\n{}",
        unknown.join("\n")
    );
}

#[test]
fn every_alert_has_unit_tests_that_fire_and_that_stay_quiet() {
    let alerts: BTreeSet<String> = rules()
        .iter()
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect();
    let doc = load_yaml(RULE_TESTS);
    let files: Vec<&str> = doc["rule_files"]
        .as_array()
        .unwrap_or_else(|| panic!("{RULE_TESTS}: no rule_files"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(files, ["alerts.yml"], "{RULE_TESTS}: rule_files");

    // alert -> (cases where it fires, cases where it must not)
    let mut seen: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let tests = doc["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("{RULE_TESTS}: no tests"));
    for test in tests {
        let cases = test["alert_rule_test"].as_array().into_iter().flatten();
        for case in cases {
            let name = case["alertname"].as_str().unwrap_or_default();
            assert!(
                alerts.contains(name),
                "{RULE_TESTS}: test {} checks {name:?}, which {RULES} does not define",
                test["name"]
            );
            let fires = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
            let entry = seen.entry(name).or_default();
            if fires {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }
    let missing: Vec<String> = alerts
        .iter()
        .filter_map(|a| match seen.get(a.as_str()) {
            Some(&(fire, quiet)) if fire > 0 && quiet > 0 => None,
            Some(&(fire, quiet)) => Some(format!("{a}: {fire} firing, {quiet} quiet case(s)")),
            None => Some(format!("{a}: not tested")),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{RULE_TESTS} needs, for every alert, a case where it fires and one where it must not:\n{}",
        missing.join("\n")
    );
}

#[test]
fn metric_names_are_found_with_their_sample_suffixes() {
    assert_eq!(
        metric_names(
            "rate(ssm_cosmovisor_fetch_duration_seconds_bucket[5m]) and on () \
             xssm_cosmovisor_role or ssm_cosmovisor_lease_held{lease=\"a\"} == 1"
        ),
        [
            "ssm_cosmovisor_fetch_duration_seconds_bucket",
            "ssm_cosmovisor_lease_held"
        ]
    );
    assert!(is_exported("ssm_cosmovisor_fetch_duration_seconds_bucket"));
    assert!(is_exported(
        "ssm_cosmovisor_key_delivery_duration_seconds_count"
    ));
    assert!(is_exported("ssm_cosmovisor_key_deliveries_total"));
    assert!(!is_exported("ssm_cosmovisor_fetch_duration_seconds"));
    assert!(!is_exported("ssm_cosmovisor_key_deliveries"));
    assert!(!is_exported("ssm_cosmovisor_lease_held_bucket"));
    assert!(!is_exported("ssm_cosmovisor_fetch_errors"));
}

#[test]
fn the_readme_table_lists_exactly_these_metrics_with_their_types() {
    let mut readme = support::readme_metrics();
    let mut ours: Vec<(String, String)> = METRICS
        .iter()
        .map(|(n, k)| {
            let kind = match k {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
                Kind::Histogram => "histogram",
            };
            (format!("ssm_cosmovisor_{n}"), kind.to_string())
        })
        .collect();
    readme.sort();
    ours.sort();
    assert_eq!(
        readme, ours,
        "README Monitoring table vs the metrics the rules may use"
    );
}
