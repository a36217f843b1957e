//! A Helm-template renderer for the subset WireHub's chart keeps to, so
//! the lab installs the chart's own templates without a helm binary:
//! `{{ PATH }}` (`.Values.…`, `.Release.Name`, `.Release.Namespace`,
//! `.Chart.Name`, `.Chart.AppVersion`), `.Files.Get "PATH"`, pipelines
//! through `quote`, `toYaml`, `nindent N`, `indent N`, `if PATH` / `else` /
//! `end`, comments, and the `{{-` / `-}}` whitespace trimming, all with
//! helm's semantics. Anything else is an error naming the expression, never
//! a silent blank. No I/O but reading the chart's files.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

enum Node {
    Text(String),
    Action(String),
    If(String, Vec<Node>, Vec<Node>),
}

fn tokens(src: &str) -> Result<Vec<(bool, String)>> {
    // (is_action, text) with trimming applied.
    let mut out: Vec<(bool, String)> = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| anyhow!("unclosed {{{{"))?;
        let mut inner = &after[..close];
        if let Some(i) = inner.strip_prefix('-') {
            text = text.trim_end().to_string();
            inner = i;
        }
        trim_next = false;
        if let Some(i) = inner.strip_suffix('-') {
            trim_next = true;
            inner = i;
        }
        out.push((false, text));
        out.push((true, inner.trim().to_string()));
        rest = &after[close + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    out.push((false, text));
    Ok(out)
}

fn parse(
    tokens: &mut std::vec::IntoIter<(bool, String)>,
    until_end: bool,
) -> Result<(Vec<Node>, Vec<Node>)> {
    let mut then = Vec::new();
    let mut els = Vec::new();
    let mut in_else = false;
    while let Some((is_action, text)) = tokens.next() {
        let target = if in_else { &mut els } else { &mut then };
        if !is_action {
            target.push(Node::Text(text));
            continue;
        }
        if let Some(cond) = text.strip_prefix("if ") {
            let (t, e) = parse(tokens, true)?;
            target.push(Node::If(cond.trim().to_string(), t, e));
        } else if text == "else" {
            in_else = true;
        } else if text == "end" {
            if !until_end {
                bail!("'end' without 'if'");
            }
            return Ok((then, els));
        } else if text.starts_with("/*") {
            // comment
        } else {
            target.push(Node::Action(text));
        }
    }
    if until_end {
        bail!("'if' without 'end'");
    }
    Ok((then, els))
}

fn lookup(ctx: &Value, path: &str) -> Result<Value> {
    let path = path
        .strip_prefix('.')
        .ok_or_else(|| anyhow!("unsupported expression '{path}'"))?;
    let mut v = ctx;
    for part in path.split('.') {
        v = v.get(part).unwrap_or(&Value::Null);
    }
    Ok(v.clone())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn to_yaml(v: &Value) -> Result<String> {
    let y = serde_yaml::to_string(v)?;
    Ok(y.trim_end_matches('\n').to_string())
}

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn eval(ctx: &Value, pipeline: &str) -> Result<String> {
    let mut stages = pipeline.split('|').map(str::trim);
    let first = stages.next().unwrap_or_default();
    let mut words = first.split_whitespace();
    let head = words.next().unwrap_or_default();
    // A value, as text or as data (for toYaml).
    let mut data: Option<Value> = None;
    let mut text = match head {
        ".Files.Get" => {
            let arg = words
                .next()
                .ok_or_else(|| anyhow!(".Files.Get needs a path"))?;
            let dir = ctx["ChartDir"].as_str().unwrap_or(".");
            let path = Path::new(dir).join(arg.trim_matches('"'));
            std::fs::read_to_string(&path)
                .with_context(|| format!(".Files.Get {}", path.display()))?
        }
        "toYaml" => {
            let arg = words
                .next()
                .ok_or_else(|| anyhow!("toYaml needs an argument"))?;
            to_yaml(&lookup(ctx, arg)?)?
        }
        "quote" => {
            let arg = words
                .next()
                .ok_or_else(|| anyhow!("quote needs an argument"))?;
            format!("{:?}", text_of(&lookup(ctx, arg)?))
        }
        p => {
            let v = lookup(ctx, p)?;
            let t = text_of(&v);
            data = Some(v);
            t
        }
    };
    for stage in stages {
        let mut w = stage.split_whitespace();
        match (w.next(), w.next()) {
            (Some("quote"), None) => text = serde_json::to_string(&text)?,
            (Some("toYaml"), None) => {
                text = to_yaml(data.as_ref().unwrap_or(&Value::String(text.clone())))?
            }
            (Some("nindent"), Some(n)) => text = format!("\n{}", indent(&text, n.parse()?)),
            (Some("indent"), Some(n)) => text = indent(&text, n.parse()?),
            _ => bail!("unsupported pipeline stage '{stage}'"),
        }
        data = None;
    }
    Ok(text)
}

fn render_nodes(ctx: &Value, nodes: &[Node], out: &mut String) -> Result<()> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(a) => out.push_str(&eval(ctx, a)?),
            Node::If(cond, then, els) => {
                let v = lookup(ctx, cond)?;
                render_nodes(ctx, if truthy(&v) { then } else { els }, out)?;
            }
        }
    }
    Ok(())
}

pub fn render(template: &str, ctx: &Value) -> Result<String> {
    let toks = tokens(template)?;
    let (nodes, _) = parse(&mut toks.into_iter(), false)?;
    let mut out = String::new();
    render_nodes(ctx, &nodes, &mut out)?;
    Ok(out)
}

pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Renders every template of the chart with its values.yaml merged
/// with `overrides`; returns the manifests (NOTES.txt and partials
/// left out) and the CRD files of crds/.
pub fn render_chart(
    dir: &Path,
    overrides: &Value,
    namespace: &str,
) -> Result<(String, Vec<PathBuf>)> {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml"))?)?;
    let mut values: Value = serde_json::to_value(values)?;
    merge(&mut values, overrides);
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("Chart.yaml"))?)?;
    let chart: Value = serde_json::to_value(chart)?;
    let ctx = json!({
        "Values": values,
        "Release": {"Name": "wirehub", "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        // Not helm's: where `.Files.Get` reads.
        "ChartDir": dir.to_string_lossy(),
    });
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    names.sort();
    let mut out = String::new();
    for p in names {
        let text = render(&std::fs::read_to_string(&p)?, &ctx)
            .with_context(|| format!("rendering {}", p.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        out.push_str(&format!("---\n# Source: {}\n", p.display()));
        out.push_str(&text);
        out.push('\n');
    }
    let mut crds: Vec<PathBuf> = std::fs::read_dir(dir.join("crds"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    crds.sort();
    Ok((out, crds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(values: Value) -> Value {
        json!({"Values": values, "Release": {"Name": "rel", "Namespace": "ns"}, "Chart": {"Name": "c", "AppVersion": "1.2"}})
    }

    #[test]
    fn trimming_markers_eat_the_whitespace_on_their_side_only() {
        let t = "a: {{ .Values.x }}\nb:   {{- .Values.x }}\nc: {{ .Values.x -}}   \nd\n";
        assert_eq!(
            render(t, &ctx(json!({"x": "v"}))).unwrap(),
            "a: v\nb:v\nc: vd\n"
        );
    }

    #[test]
    fn if_else_end_picks_a_branch_by_truthiness() {
        let t = "a:\n  {{- if .Values.on }}\n  b: {{ .Values.x | quote }}\n  {{- else }}\n  c: 1\n  {{- end }}\n";
        assert_eq!(
            render(t, &ctx(json!({"on": true, "x": "y"}))).unwrap(),
            "a:\n  b: \"y\"\n"
        );
        // Empty strings, lists, maps, zero and missing values are false.
        for off in [json!(false), json!(""), json!([]), json!({}), json!(0)] {
            assert_eq!(
                render(t, &ctx(json!({"on": off}))).unwrap(),
                "a:\n  c: 1\n",
                "{off}"
            );
        }
        assert_eq!(render(t, &ctx(json!({}))).unwrap(), "a:\n  c: 1\n");
    }

    #[test]
    fn to_yaml_with_nindent_and_indent_as_helm_prints_them() {
        let t = "l: {{- toYaml .Values.l | nindent 2 }}\nm:\n{{ toYaml .Values.m | indent 4 }}\nn: {{ .Release.Namespace }}/{{ .Release.Name }}/{{ .Chart.AppVersion }}\n";
        let out = render(t, &ctx(json!({"l": [{"k": "v"}], "m": {"a": 1, "b": "x"}}))).unwrap();
        assert_eq!(out, "l:\n  - k: v\nm:\n    a: 1\n    b: x\nn: ns/rel/1.2\n");
        assert_eq!(
            render(t, &ctx(json!({"l": [], "m": {}}))).unwrap(),
            "l:\n  []\nm:\n    {}\nn: ns/rel/1.2\n"
        );
    }

    #[test]
    fn comments_vanish_and_quote_escapes() {
        let t = "{{/* a comment */}}a: {{ quote .Values.s }}\n";
        assert_eq!(
            render(t, &ctx(json!({"s": "say \"hi\""}))).unwrap(),
            "a: \"say \\\"hi\\\"\"\n"
        );
    }

    #[test]
    fn what_it_cannot_render_is_an_error_naming_it() {
        for (t, says) in [
            ("{{ .Values.x | upper }}", "upper"),
            ("{{ include \"x\" . }}", "include"),
            ("{{ if .Values.x }}a", "'if' without 'end'"),
            ("a {{ end }}", "'end' without 'if'"),
            ("{{ .Values.x", "unclosed"),
        ] {
            let e = format!("{:#}", render(t, &ctx(json!({"x": 1}))).unwrap_err());
            assert!(e.contains(says), "{t}: {e}");
        }
    }

    #[test]
    fn a_small_chart_renders_with_its_values_merged_files_read_and_crds_listed() {
        let dir = std::env::temp_dir().join(format!("wh-chart-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in [
            (
                "Chart.yaml",
                "name: tiny\nversion: 0.1.0\nappVersion: \"9\"\n",
            ),
            ("values.yaml", "image: {tag: old, repo: r}\nextra: false\n"),
            (
                "templates/cm.yaml",
                "kind: ConfigMap\nmetadata: {name: {{ .Release.Name }}-{{ .Chart.Name }}}\ndata:\n  image: {{ .Values.image.repo }}:{{ .Values.image.tag }}\n  file: {{ .Files.Get \"files/x.txt\" | quote }}\n",
            ),
            (
                "templates/off.yaml",
                "{{- if .Values.extra }}\nkind: Secret\n{{- end }}\n",
            ),
            (
                "templates/NOTES.txt",
                "not a manifest {{ .Values.nothing.here }}\n",
            ),
            ("files/x.txt", "hello"),
            ("crds/b.yaml", "kind: CustomResourceDefinition\n"),
            ("crds/a.yaml", "kind: CustomResourceDefinition\n"),
        ] {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let (text, crds) = render_chart(&dir, &json!({"image": {"tag": "new"}}), "ns").unwrap();
        let cm = dir.join("templates/cm.yaml");
        assert_eq!(
            text,
            format!(
                "---\n# Source: {}\nkind: ConfigMap\nmetadata: {{name: wirehub-tiny}}\ndata:\n  image: r:new\n  file: \"hello\"\n\n",
                cm.display()
            )
        );
        let names: Vec<_> = crds
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yaml"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
