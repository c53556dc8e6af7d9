//! Templates: minijinja over the SRV data document, with a few helpers for proxy configs.
//!
//! A template sees the document's fields at the top level (`datacenter`, `index`, `services`:
//! name → instances) and `domain` (the Consul domain, `consul`). Helpers:
//!
//! | helper | kind | what it gives |
//! |---|---|---|
//! | `instances \| active` | filter | instances with `role == "active"` (what DNS answers) |
//! | `instances \| standby` | filter | instances with `role == "standby"` (filter-tagged, e.g. `nodns`) |
//! | `instances \| tagged("t")` | filter | instances carrying tag `t` (case-insensitive, like Consul) |
//! | `instances \| meta_value("k")` | filter | the first non-empty `meta.k` of the instances, else undefined |
//! | `instance \| addr_port` | filter | `10.0.0.1:8080`, or `[2001:db8::1]:8080` for IPv6 |
//! | `text \| ident` | filter | a name safe for HAProxy proxies and servers: `[A-Za-z0-9_.:-]`, anything else `_` |
//! | `services_tagged("t")` | function | name → instances carrying tag `t`, services with none left out |
//! | `services_with_meta("k")` | function | name → instances with a non-empty `meta.k`, services with none left out |
//!
//! Undefined values are errors when printed or iterated (minijinja `SemiStrict`), but may be
//! tested in `{% if %}`: a typo fails the render (and the old file stays) instead of rendering
//! an empty value into a proxy config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use serde::Serialize;

use super::SrvData;
use crate::config::{TemplateConfig, TemplateMode};

/// Why a template did not render.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template or `*.conf` file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// minijinja refused the template (syntax) or failed while rendering it.
    #[error("{name}:{}: {message}", line.map_or_else(|| "?".to_owned(), |l| l.to_string()))]
    Template {
        /// The template's file name.
        name: String,
        line: Option<usize>,
        message: String,
    },
}

/// What the template sees.
#[derive(Serialize)]
struct Context<'a> {
    #[serde(flatten)]
    data: &'a SrvData,
    domain: &'a str,
}

// === impl RenderError ===

impl RenderError {
    /// The template line the error points at, when minijinja knows it.
    pub fn line(&self) -> Option<usize> {
        match self {
            RenderError::Template { line, .. } => *line,
            RenderError::Read { .. } => None,
        }
    }

    fn template(name: &str, e: &Error) -> RenderError {
        let message = match e.detail() {
            Some(detail) => format!("{}: {detail}", e.kind()),
            None => e.kind().to_string(),
        };
        RenderError::Template {
            name: e.name().unwrap_or(name).to_owned(),
            line: e.line(),
            message,
        }
    }
}

/// Render `template` against `data`: one file, or in [`TemplateMode::Dir`] every `*.tmpl`
/// rendered and every `*.conf` copied, in name order, one after the other.
pub fn render(
    template: &TemplateConfig,
    data: &SrvData,
    domain: &str,
) -> Result<Vec<u8>, RenderError> {
    let parts = match template.mode {
        TemplateMode::File => vec![template.source.clone()],
        TemplateMode::Dir => dir_parts(&template.source)?,
    };
    let mut env = environment();
    let mut sources = Vec::with_capacity(parts.len());
    for path in &parts {
        let text = std::fs::read_to_string(path).map_err(|source| RenderError::Read {
            path: path.clone(),
            source,
        })?;
        sources.push((part_name(path), is_template(path, template.mode), text));
    }
    for (name, templated, text) in &sources {
        if *templated {
            env.add_template_owned(name.clone(), text.clone())
                .map_err(|e| RenderError::template(name, &e))?;
        }
    }
    let ctx = Value::from_serialize(Context { data, domain });
    let mut out = String::new();
    for (name, templated, text) in &sources {
        if *templated {
            let rendered = env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| RenderError::template(name, &e))?;
            out.push_str(&rendered);
        } else {
            out.push_str(text);
        }
    }
    Ok(out.into_bytes())
}

/// The `*.tmpl` and `*.conf` files of `dir`, sorted by name (python-confd: prefix `01-`,
/// `02-` to order them).
fn dir_parts(dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let read_err = |source| RenderError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let wanted = path.extension().is_some_and(|e| e == "tmpl" || e == "conf");
        if wanted && path.is_file() {
            parts.push(path);
        }
    }
    parts.sort();
    Ok(parts)
}

fn part_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A single `source` is always a template; in a directory only `*.tmpl` are.
fn is_template(path: &Path, mode: TemplateMode) -> bool {
    mode == TemplateMode::File || path.extension().is_some_and(|e| e == "tmpl")
}

/// The environment every template renders in.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Config files, not HTML: never escape.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // `{% if %}` lines leave no blank lines behind, as in Ansible and Salt templates.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("active", |v: Value| by_role(v, "active"));
    env.add_filter("standby", |v: Value| by_role(v, "standby"));
    env.add_filter("tagged", tagged);
    env.add_filter("meta_value", meta_value);
    env.add_filter("addr_port", addr_port);
    env.add_filter("ident", ident);
    env.add_function("services_tagged", services_tagged);
    env.add_function("services_with_meta", services_with_meta);
    env
}

fn by_role(instances: Value, role: &str) -> Result<Value, Error> {
    filter_instances(
        instances,
        |i| Ok(i.get_attr("role")?.as_str() == Some(role)),
    )
}

fn tagged(instances: Value, tag: &str) -> Result<Value, Error> {
    filter_instances(instances, |i| has_tag(i, tag))
}

fn filter_instances(
    instances: Value,
    mut keep: impl FnMut(&Value) -> Result<bool, Error>,
) -> Result<Value, Error> {
    let mut out = Vec::new();
    for i in instances.try_iter()? {
        if keep(&i)? {
            out.push(i);
        }
    }
    Ok(Value::from(out))
}

fn has_tag(instance: &Value, tag: &str) -> Result<bool, Error> {
    for t in instance.get_attr("tags")?.try_iter()? {
        if t.as_str().is_some_and(|t| t.eq_ignore_ascii_case(tag)) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn meta_of(instance: &Value, key: &str) -> Result<Option<String>, Error> {
    let value = instance.get_attr("meta")?.get_attr(key)?;
    Ok(value
        .as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned))
}

fn meta_value(instances: Value, key: &str) -> Result<Value, Error> {
    for i in instances.try_iter()? {
        if let Some(v) = meta_of(&i, key)? {
            return Ok(Value::from(v));
        }
    }
    Ok(Value::UNDEFINED)
}

fn addr_port(instance: Value) -> Result<String, Error> {
    let address = instance.get_attr("address")?;
    let port = instance.get_attr("port")?;
    let (Some(address), false) = (address.as_str(), port.is_undefined()) else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "addr_port needs an instance (with address and port)",
        ));
    };
    Ok(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

/// HAProxy accepts letters, digits, `-`, `_`, `.` and `:` in proxy and server names.
pub fn ident(text: &str) -> String {
    let out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() { "_".to_owned() } else { out }
}

fn services_tagged(state: &State, tag: &str) -> Result<Value, Error> {
    select_services(state, |i| has_tag(i, tag))
}

fn services_with_meta(state: &State, key: &str) -> Result<Value, Error> {
    select_services(state, |i| Ok(meta_of(i, key)?.is_some()))
}

/// `services` narrowed to the instances `keep` wants; services left empty are dropped.
fn select_services(
    state: &State,
    mut keep: impl FnMut(&Value) -> Result<bool, Error>,
) -> Result<Value, Error> {
    let services = state.lookup("services").unwrap_or_default();
    let mut out = BTreeMap::new();
    for name in services.try_iter()? {
        let instances = filter_instances(services.get_item(&name)?, &mut keep)?;
        if instances.len().unwrap_or(0) > 0 {
            out.insert(name.to_string(), instances);
        }
    }
    Ok(Value::from(out))
}
