//! The operator-facing files in `dashboards/` agree with the code and with Prometheus:
//!
//! - every `herald_` metric a dashboard or rule uses is declared in `herald_jobs::metrics::ALL`, and
//!   every `herald:` recording rule a dashboard uses is defined in `alerts.yml`;
//! - no dashboard or rule selects, groups or labels by a high-cardinality id;
//! - `promtool check rules` and `promtool test rules` pass, and every dashboard expression parses
//!   as PromQL (checked by promtool as a recording rule of a throwaway rules file);
//! - the dashboards have the shape Grafana and the operators expect, and every alert has a runbook
//!   section.
//!
//! promtool comes from the Debian package `prometheus`. A missing promtool fails these tests; it is
//! never a skip. Set `PROMTOOL` to use a binary that is not on `PATH`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herald_jobs::metrics::{ALL, Kind};
use serde_json::Value;

const DASHBOARDS: &[&str] = &["herald-overview.json", "herald-platform.json"];
const PLATFORM_DASHBOARD: &str = "herald-platform.json";
const OVERVIEW_DASHBOARD: &str = "herald-overview.json";
const RULES: &str = "alerts.yml";
const RULE_TESTS: &str = "alerts.test.yml";
const RUNBOOK: &str = "RUNBOOK.md";

/// Label names that would put an id (or a person) into a time series. None may appear in a
/// selector, a grouping, a legend, a variable or an alert label.
const FORBIDDEN_LABELS: &[&str] = &[
    "connection_id",
    "connection",
    "share_id",
    "job_id",
    "tenant",
    "tenant_id",
    "user",
    "user_id",
    "account_id",
];

const PROMTOOL_MISSING: &str =
    "promtool not found: install the Debian package `prometheus` (apt-get install -y prometheus)";

// ------------------------------------------------------------------------------------------- tests

#[test]
fn every_herald_metric_in_dashboards_and_rules_is_declared_in_the_metrics_module() {
    let rules_text = read(RULES);
    let recorded = recording_rule_names(&rules_text);
    let mut problems = Vec::new();

    let mut check = |place: &str, text: &str| {
        for name in metric_names(text) {
            if let Err(why) = check_metric_name(&name, &recorded) {
                problems.push(format!("{place}: `{name}` {why}"));
            }
        }
    };

    for file in DASHBOARDS {
        let dashboard = dashboard(file);
        for (place, expr) in dashboard_queries(file, &dashboard) {
            check(&place, &expr);
        }
    }
    // The rules files, comment lines aside: expressions, annotations and test series alike.
    for file in [RULES, RULE_TESTS] {
        for (number, line) in read(file).lines().enumerate() {
            if !line.trim_start().starts_with('#') {
                check(&format!("{file}:{}", number + 1), line);
            }
        }
    }

    assert!(
        problems.is_empty(),
        "names not declared in herald_jobs::metrics::ALL (or recording rules not defined in {RULES}):\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_dashboard_or_rule_selects_or_groups_by_a_high_cardinality_label() {
    let mut problems = Vec::new();

    for file in DASHBOARDS {
        let dashboard = dashboard(file);
        for (place, expr) in dashboard_queries(file, &dashboard) {
            for label in forbidden(label_names(&expr)) {
                problems.push(format!("{place}: label `{label}` in `{expr}`"));
            }
        }
        for panel in panels(&dashboard) {
            for target in targets(panel) {
                let legend = target
                    .get("legendFormat")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                for label in forbidden(legend_labels(legend)) {
                    problems.push(format!(
                        "{file} panel {:?}: legend shows label `{label}`",
                        title(panel)
                    ));
                }
            }
        }
    }

    for rule in parse_rules(&read(RULES)) {
        let place = format!("{RULES} {}", rule.name);
        for label in forbidden(label_names(&rule.expr)) {
            problems.push(format!("{place}: label `{label}` in its expression"));
        }
        for (key, _) in &rule.labels {
            for label in forbidden(vec![key.clone()]) {
                problems.push(format!("{place}: sets label `{label}`"));
            }
        }
        for (key, value) in &rule.annotations {
            for label in FORBIDDEN_LABELS {
                if value.contains(&format!("$labels.{label}")) {
                    problems.push(format!("{place}: annotation {key} shows label `{label}`"));
                }
            }
        }
    }

    assert!(
        problems.is_empty(),
        "high-cardinality labels:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_label_check_catches_ids_in_groupings_selectors_and_label_functions() {
    let expr = r#"sum by (platform, connection_id) (rate(herald_jobs_total{share_id="1", queue!~"x"}[5m]))
        / on (job_id) group_left (tenant) label_replace(up, "user", "$1", "instance", "(.*)")"#;
    let found = forbidden(label_names(expr));
    for label in ["connection_id", "share_id", "job_id", "tenant", "user"] {
        assert!(
            found.contains(&label.to_string()),
            "{label} not caught in {found:?}"
        );
    }
    let clean =
        label_names(r#"sum without (instance) (herald_queue_depth{state="dead"}) > on (queue) x"#);
    assert!(forbidden(clean).is_empty());
}

#[test]
fn promtool_check_rules_accepts_the_alert_rules() {
    let path = dashboards_dir().join(RULES);
    let output = promtool(&["check", "rules", path_str(&path)]);
    assert_success("promtool check rules", &output);
}

#[test]
fn promtool_test_rules_passes_the_alert_unit_tests() {
    let path = dashboards_dir().join(RULE_TESTS);
    let output = promtool(&["test", "rules", path_str(&path)]);
    assert_success("promtool test rules", &output);
}

#[test]
fn every_dashboard_expression_is_non_empty_and_parses_as_promql() {
    let mut exprs = Vec::new();
    let mut problems = Vec::new();
    for file in DASHBOARDS {
        let dashboard = dashboard(file);
        for panel in panels(&dashboard) {
            for target in targets(panel) {
                let place = format!(
                    "{file} panel {:?} refId {}",
                    title(panel),
                    target.get("refId").and_then(Value::as_str).unwrap_or("?")
                );
                match target.get("expr").and_then(Value::as_str).map(str::trim) {
                    Some(expr) if !expr.is_empty() => {
                        exprs.push((place, substitute_variables(expr)))
                    }
                    _ => problems.push(format!("{place}: empty or missing expr")),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        exprs.len() > 10,
        "suspiciously few dashboard expressions: {}",
        exprs.len()
    );

    let errors = promql_parse_errors(&exprs);
    assert!(
        errors.is_empty(),
        "dashboard expressions that do not parse:\n{}",
        errors.join("\n")
    );
}

#[test]
fn the_promql_parse_check_rejects_a_broken_expression() {
    let exprs = vec![
        (
            "good".to_string(),
            "sum(rate(herald_jobs_total[5m]))".to_string(),
        ),
        (
            "bad".to_string(),
            "sum(rate(herald_jobs_total[5m])".to_string(),
        ),
    ];
    let errors = promql_parse_errors(&exprs);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("bad:"), "{errors:?}");
}

#[test]
fn dashboards_have_the_variables_and_panel_shape_grafana_and_operators_expect() {
    let mut problems = Vec::new();
    for file in DASHBOARDS {
        let dashboard = dashboard(file);
        let schema = dashboard
            .get("schemaVersion")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if schema < 39 {
            problems.push(format!("{file}: schemaVersion {schema} < 39"));
        }
        if dashboard
            .get("uid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            problems.push(format!("{file}: no uid"));
        }
        match variable(&dashboard, "datasource") {
            Some(v)
                if v.get("type").and_then(Value::as_str) == Some("datasource")
                    && v.get("query").and_then(Value::as_str) == Some("prometheus") => {}
            _ => problems.push(format!(
                "{file}: no `datasource` variable of type prometheus"
            )),
        }

        for panel in panels(&dashboard) {
            let name = title(panel);
            let place = format!("{file} panel {name:?}");
            if name.trim().is_empty() {
                problems.push(format!("{file}: a panel has no title"));
            }
            if panel
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                problems.push(format!("{place}: no description"));
            }
            let uid = panel.pointer("/datasource/uid").and_then(Value::as_str);
            if uid != Some("${datasource}") {
                problems.push(format!("{place}: datasource is not ${{datasource}}"));
            }
            let targets = targets(panel);
            if targets.is_empty() {
                problems.push(format!("{place}: no targets"));
            }
            let mut ref_ids = BTreeSet::new();
            for target in targets {
                let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("");
                if ref_id.is_empty() || !ref_ids.insert(ref_id.to_string()) {
                    problems.push(format!("{place}: missing or repeated refId {ref_id:?}"));
                }
                let expr = target.get("expr").and_then(Value::as_str).unwrap_or("");
                for problem in rate_window_problems(expr) {
                    problems.push(format!("{place} refId {ref_id}: {problem}"));
                }
                if expr.contains("histogram_quantile") && !expr.contains("_bucket") {
                    problems.push(format!(
                        "{place} refId {ref_id}: histogram_quantile without _bucket"
                    ));
                }
            }
        }
    }

    let platform = dashboard(PLATFORM_DASHBOARD);
    match variable(&platform, "platform").map(variable_query) {
        Some(query) if query.replace(' ', "") == "label_values(herald_jobs_total,platform)" => {}
        other => problems.push(format!(
            "{PLATFORM_DASHBOARD}: `platform` variable must query label_values(herald_jobs_total, platform), got {other:?}"
        )),
    }
    for (place, expr) in dashboard_queries(PLATFORM_DASHBOARD, &platform) {
        if place.contains(" panel ") && !expr.contains("$platform") {
            problems.push(format!("{place}: does not filter by $platform: `{expr}`"));
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_seed_recording_rule_is_on_a_dashboard_and_refresh_failing_links_to_the_api() {
    let rules = read(RULES);
    let overview = dashboard(OVERVIEW_DASHBOARD);
    let platform = dashboard(PLATFORM_DASHBOARD);
    let mut problems = Vec::new();

    for name in recording_rule_names(&rules) {
        if name.contains("_by_platform") {
            let used = dashboard_queries(PLATFORM_DASHBOARD, &platform)
                .iter()
                .any(|(_, expr)| metric_names(expr).contains(&name));
            if !used {
                problems.push(format!("{name} is not on {PLATFORM_DASHBOARD}"));
            }
        } else {
            let stat = panels(&overview).into_iter().any(|panel| {
                panel.get("type").and_then(Value::as_str) == Some("stat")
                    && targets(panel).iter().any(|t| {
                        t.get("expr").and_then(Value::as_str).map(str::trim) == Some(name.as_str())
                    })
            });
            if !stat {
                problems.push(format!("{name} has no stat panel on {OVERVIEW_DASHBOARD}"));
            }
        }
    }

    for file in DASHBOARDS {
        let dashboard = dashboard(file);
        for panel in panels(&dashboard) {
            let uses_gauge = targets(panel).iter().any(|t| {
                t.get("expr")
                    .and_then(Value::as_str)
                    .is_some_and(|e| e.contains("herald_connections_refresh_failing"))
            });
            let links_api = panel
                .get("links")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|link| link.get("url").and_then(Value::as_str))
                .any(|url| url.contains("/v1/ops/connections?refresh_failing=true"));
            if uses_gauge && !links_api {
                problems.push(format!(
                    "{file} panel {:?} shows refresh failures without a link to GET /v1/ops/connections?refresh_failing=true",
                    title(panel)
                ));
            }
        }
    }

    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let rules = parse_rules(&read(RULES));
    let runbook_anchors = markdown_anchors(&read(RUNBOOK));
    let tests = read(RULE_TESTS);
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert).collect();
    assert!(
        alerts.len() >= 5,
        "expected at least 5 alerts, found {}",
        alerts.len()
    );

    let mut problems = Vec::new();
    for alert in alerts {
        let name = &alert.name;
        let label = |key: &str| {
            alert
                .labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let annotation = |key: &str| {
            alert
                .annotations
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };

        if !matches!(label("severity"), Some("critical" | "warning" | "info")) {
            problems.push(format!(
                "{name}: severity label missing or not critical/warning/info"
            ));
        }
        for key in ["summary", "description"] {
            if annotation(key).unwrap_or("").trim().is_empty() {
                problems.push(format!("{name}: no {key} annotation"));
            }
        }
        match annotation("runbook_url").and_then(|url| url.split_once("RUNBOOK.md#")) {
            Some((_, anchor)) if runbook_anchors.contains(anchor) => {}
            Some((_, anchor)) => {
                problems.push(format!("{name}: {RUNBOOK} has no section #{anchor}"))
            }
            None => problems.push(format!(
                "{name}: runbook_url does not point to {RUNBOOK}#<anchor>"
            )),
        }
        if !tests.contains(&format!("alertname: {name}")) {
            problems.push(format!("{name}: no case in {RULE_TESTS}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ----------------------------------------------------------------------------------------- files

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

fn read(file: &str) -> String {
    let path = dashboards_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard(file: &str) -> Value {
    serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"))
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("dashboards path is UTF-8")
}

// ------------------------------------------------------------------------------------ dashboards

/// Every panel, including those nested in rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for panel in list.and_then(Value::as_array).into_iter().flatten() {
            if panel.get("type").and_then(Value::as_str) == Some("row") {
                walk(panel.get("panels"), out);
            } else {
                out.push(panel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn targets(panel: &Value) -> Vec<&Value> {
    panel
        .get("targets")
        .and_then(Value::as_array)
        .map(|t| t.iter().collect())
        .unwrap_or_default()
}

fn title(panel: &Value) -> &str {
    panel.get("title").and_then(Value::as_str).unwrap_or("")
}

fn variable<'a>(dashboard: &'a Value, name: &str) -> Option<&'a Value> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

/// A query variable's query: a string, or an object with a `query` string (newer Grafana).
fn variable_query(variable: &Value) -> String {
    match variable.get("query") {
        Some(Value::String(query)) => query.clone(),
        Some(object) => object
            .get("query")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        None => String::new(),
    }
}

/// Every PromQL-ish text of a dashboard, with where it comes from: panel target expressions and
/// the queries of query variables.
fn dashboard_queries(file: &str, dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        for target in targets(panel) {
            let expr = target.get("expr").and_then(Value::as_str).unwrap_or("");
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
            out.push((
                format!("{file} panel {:?} refId {ref_id}", title(panel)),
                expr.to_string(),
            ));
        }
    }
    for var in dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if var.get("type").and_then(Value::as_str) == Some("query") {
            let name = var.get("name").and_then(Value::as_str).unwrap_or("?");
            out.push((format!("{file} variable {name}"), variable_query(var)));
        }
    }
    out
}

/// Grafana variables replaced by values that keep the expression valid PromQL.
fn substitute_variables(expr: &str) -> String {
    fn value(name: &str) -> &'static str {
        match name {
            "__rate_interval" => "5m",
            "__range" => "1h",
            "__interval" => "1m",
            "__range_s" => "3600",
            "__range_ms" => "3600000",
            "__interval_ms" => "60000",
            "platform" => "mastodon",
            "queue" => "share",
            "datasource" => "prometheus",
            _ => "x",
        }
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let braced = chars.get(i + 1) == Some(&'{');
        let start = if braced { i + 2 } else { i + 1 };
        let mut end = start;
        while end < chars.len() && is_ident(chars[end]) {
            end += 1;
        }
        let name: String = chars[start..end].iter().collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
            continue;
        }
        out.push_str(value(&name));
        i = end;
        if braced {
            // Skip a `:format` and the closing brace.
            while i < chars.len() && chars[i] != '}' {
                i += 1;
            }
            i += 1;
        }
    }
    out
}

/// Every `rate(...)`/`irate(...)` must take its window from `$__rate_interval`.
fn rate_window_problems(expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut from = 0;
    while let Some(found) = expr[from..].find("rate(") {
        let open = from + found + "rate".len();
        let before = expr[..from + found].chars().next_back();
        from = open + 1;
        if before.is_some_and(|c| is_ident(c) && c != 'i') {
            continue; // some other function ending in "rate"
        }
        let Some(close) = matching_paren(expr, open) else {
            problems.push("unbalanced parentheses".to_string());
            break;
        };
        let argument = &expr[open..=close];
        let windows: Vec<&str> = argument
            .match_indices('[')
            .filter_map(|(at, _)| argument[at..].find(']').map(|len| &argument[at..=at + len]))
            .collect();
        if windows.is_empty() || windows.iter().any(|w| *w != "[$__rate_interval]") {
            problems.push(format!(
                "rate() window is not [$__rate_interval]: `{argument}`"
            ));
        }
    }
    problems
}

fn matching_paren(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (at, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + at);
                }
            }
            _ => {}
        }
    }
    None
}

/// Label names shown by a legend format such as `{{queue}} {{ platform }}`.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

// ----------------------------------------------------------------------------------------- rules

/// One rule of a Prometheus rules file.
#[derive(Debug, Default)]
struct Rule {
    alert: bool,
    name: String,
    expr: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
}

/// Reads the rules of a Prometheus rules file. Not a YAML parser: it knows the shape of a rules
/// file (`- record:`/`- alert:` items with `expr`, `labels` and `annotations`) and the scalar
/// styles used there (plain, quoted, `|` and `>` blocks), which is what `alerts.yml` uses.
fn parse_rules(text: &str) -> Vec<Rule> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let (indent, content) = split_indent(lines[i]);
        let key_line = content.strip_prefix("- ").unwrap_or(content);
        let key_indent = indent + (content.len() - key_line.len());
        i += 1;
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = key_line.split_once(':') else {
            continue;
        };
        match key.trim() {
            "record" | "alert" => rules.push(Rule {
                alert: key.trim() == "alert",
                name: scalar(rest, &lines, &mut i, key_indent),
                ..Rule::default()
            }),
            "expr" => {
                let expr = scalar(rest, &lines, &mut i, key_indent);
                if let Some(rule) = rules.last_mut() {
                    rule.expr = expr;
                }
            }
            "labels" | "annotations" => {
                let mut map = Vec::new();
                while i < lines.len() {
                    let (child_indent, child) = split_indent(lines[i]);
                    if child.is_empty() || child.starts_with('#') {
                        i += 1;
                        continue;
                    }
                    if child_indent <= key_indent {
                        break;
                    }
                    i += 1;
                    if let Some((k, v)) = child.split_once(':') {
                        map.push((
                            k.trim().to_string(),
                            scalar(v, &lines, &mut i, child_indent),
                        ));
                    }
                }
                if let Some(rule) = rules.last_mut() {
                    if key.trim() == "labels" {
                        rule.labels = map;
                    } else {
                        rule.annotations = map;
                    }
                }
            }
            _ => {}
        }
    }
    rules
}

/// The value after `key:`; a block scalar takes the following lines indented more than the key.
fn scalar(rest: &str, lines: &[&str], i: &mut usize, key_indent: usize) -> String {
    let rest = rest.trim();
    if let Some(style) = rest.chars().next().filter(|c| *c == '|' || *c == '>') {
        let mut block = Vec::new();
        while *i < lines.len() {
            let (indent, content) = split_indent(lines[*i]);
            if !content.is_empty() && indent <= key_indent {
                break;
            }
            block.push(content);
            *i += 1;
        }
        while block.last().is_some_and(|l| l.is_empty()) {
            block.pop();
        }
        return block.join(if style == '|' { "\n" } else { " " });
    }
    if let Some(inner) = rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        return inner.replace("\\\"", "\"").replace("\\\\", "\\");
    }
    if let Some(inner) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return inner.replace("''", "'");
    }
    rest.to_string()
}

fn split_indent(line: &str) -> (usize, &str) {
    let content = line.trim_start();
    (line.len() - content.len(), content.trim_end())
}

fn recording_rule_names(rules_text: &str) -> BTreeSet<String> {
    parse_rules(rules_text)
        .into_iter()
        .filter(|r| !r.alert)
        .map(|r| r.name)
        .collect()
}

/// Anchors of a Markdown file: GitHub's slugs of its headings and explicit `<a id="...">` tags.
fn markdown_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    for line in markdown.lines() {
        if let Some(heading) = line.strip_prefix('#') {
            let text = heading.trim_start_matches('#').trim();
            let slug: String = text
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            anchors.insert(slug);
        }
        let mut rest = line;
        while let Some(at) = rest.find("<a id=\"") {
            rest = &rest[at + "<a id=\"".len()..];
            if let Some(end) = rest.find('"') {
                anchors.insert(rest[..end].to_string());
            }
        }
    }
    anchors
}

// ---------------------------------------------------------------------------------------- PromQL

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Names in `text` that start with `herald_` or `herald:` at a token boundary.
fn metric_names(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let token: String = chars[start..i].iter().collect();
        if token.starts_with("herald_") || token.starts_with("herald:") {
            names.insert(token);
        }
    }
    names
}

fn check_metric_name(name: &str, recorded: &BTreeSet<String>) -> Result<(), String> {
    if name.starts_with("herald:") {
        return if recorded.contains(name) {
            Ok(())
        } else {
            Err(format!("is not a recording rule defined in {RULES}"))
        };
    }
    if ALL.iter().any(|m| m.name == name) {
        return Ok(());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(metric) = ALL.iter().find(|m| m.name == base)
        {
            return if metric.kind == Kind::Histogram {
                Ok(())
            } else {
                Err(format!(
                    "uses {suffix} of `{base}`, which is not a histogram"
                ))
            };
        }
    }
    Err("is not declared".to_string())
}

/// Label names an expression selects on, groups by, matches on or writes with label functions:
/// names before a matcher operator inside `{}`, names inside `by`/`without`/`on`/`ignoring`/
/// `group_left`/`group_right` lists, and every string literal (label_replace/label_join/
/// count_values take label names as strings).
fn label_names(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut brace_depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            let mut literal = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    literal.push(ch);
                }
                i += 1;
            }
            i += 1;
            names.push(literal);
            continue;
        }
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '{' {
            brace_depth += 1;
        } else if c == '}' {
            brace_depth = brace_depth.saturating_sub(1);
        }
        if !(c.is_ascii_alphabetic() || c == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        if brace_depth > 0 {
            let op: String = chars[next..chars.len().min(next + 2)].iter().collect();
            if op.starts_with('=') || op == "!=" || op == "!~" {
                names.push(word);
            }
        } else if GROUPING.contains(&word.as_str()) && chars.get(next) == Some(&'(') {
            let close = chars[next..]
                .iter()
                .position(|&c| c == ')')
                .map_or(chars.len(), |p| next + p);
            let list: String = chars[next + 1..close].iter().collect();
            names.extend(
                list.split(',')
                    .map(|n| n.trim().to_string())
                    .filter(|n| !n.is_empty()),
            );
            i = close;
        }
    }
    names
}

fn forbidden(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| FORBIDDEN_LABELS.contains(&n.as_str()))
        .collect()
}

/// Runs each expression through `promtool check rules` as a recording rule of a throwaway rules
/// file, and returns `"<place>: <promtool output>"` for each one that does not parse.
fn promql_parse_errors(exprs: &[(String, String)]) -> Vec<String> {
    let check = |batch: &[(String, String)]| -> Output {
        let mut yaml = String::from("groups:\n  - name: dashboard-expressions\n    rules:\n");
        for (n, (place, expr)) in batch.iter().enumerate() {
            yaml.push_str(&format!("      # {}\n", place.replace('\n', " ")));
            yaml.push_str(&format!(
                "      - record: dashboard_check:expr_{n}\n        expr: |-\n"
            ));
            for line in expr.lines() {
                yaml.push_str(&format!("          {line}\n"));
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "herald-dashboard-exprs-{}-{nanos}.yml",
            std::process::id()
        ));
        std::fs::write(&path, yaml).expect("write temporary rules file");
        let output = promtool(&["check", "rules", path_str(&path)]);
        let _ = std::fs::remove_file(&path);
        output
    };

    // One promtool run for all; on failure, one per expression to name the culprits.
    if check(exprs).status.success() {
        return Vec::new();
    }
    exprs
        .iter()
        .filter_map(|one| {
            let output = check(std::slice::from_ref(one));
            (!output.status.success())
                .then(|| format!("{}: `{}`\n{}", one.0, one.1, combined(&output).trim()))
        })
        .collect()
}

// -------------------------------------------------------------------------------------- promtool

fn promtool(args: &[&str]) -> Output {
    let program = std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into());
    match Command::new(&program).args(args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{PROMTOOL_MISSING}"),
        Err(e) => panic!("running {program:?} {args:?}: {e}"),
    }
}

fn combined(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        combined(output)
    );
}
