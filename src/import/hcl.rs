//! The subset of HCL that Consul agent configurations use, read into JSON values: `key = value`
//! and `key { ... }` / `key "label" { ... }` blocks; strings, numbers, booleans, lists and
//! objects; `#`, `//` and `/* */` comments. Heredocs and interpolation are not read (an error
//! says so).
//!
//! Why not the `hcl-rs` crate: it is not in this build's dependency set and cannot be fetched
//! here, and importing `dns_config`, `recursors` and `domain` needs only this subset, about a
//! hundred lines with line numbers in every error.

use serde_json::{Map, Value};

/// Parse `text` as HCL into a JSON object; `Err((line, message))` on the first error.
pub(super) fn parse(text: &str) -> Result<Value, (usize, String)> {
    let tokens = lex(text)?;
    let mut parser = Parser { tokens, at: 0 };
    let body = parser.body(false)?;
    Ok(Value::Object(body))
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Str(String),
    Num(f64),
    Punct(char),
}

fn lex(text: &str) -> Result<Vec<(Token, usize)>, (usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
                i += 2;
            }
            '<' if chars.get(i + 1) == Some(&'<') => {
                return Err((
                    line,
                    "heredocs are not supported; use a quoted string".into(),
                ));
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => return Err((line, "unterminated string".into())),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            match chars.get(i) {
                                Some('n') => s.push('\n'),
                                Some('t') => s.push('\t'),
                                Some(&other) => s.push(other),
                                None => return Err((line, "unterminated string".into())),
                            }
                        }
                        Some('$') if chars.get(i + 1) == Some(&'{') => {
                            return Err((line, "interpolation `${...}` is not supported".into()));
                        }
                        Some(&other) => s.push(other),
                    }
                    i += 1;
                }
                i += 1;
                tokens.push((Token::Str(s), line));
            }
            '{' | '}' | '[' | ']' | '=' | ',' | ':' => {
                tokens.push((Token::Punct(c), line));
                i += 1;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let n = word
                    .parse()
                    .map_err(|_| (line, format!("`{word}` is not a number")))?;
                tokens.push((Token::Num(n), line));
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    i += 1;
                }
                tokens.push((Token::Word(chars[start..i].iter().collect()), line));
            }
            other => return Err((line, format!("unexpected `{other}`"))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.at)
            .or(self.tokens.last())
            .map_or(1, |(_, l)| *l)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).map(|(t, _)| t.clone());
        self.at += 1;
        t
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, (usize, String)> {
        Err((self.line(), message.into()))
    }

    /// `key = value` and blocks until `}` (nested) or the end (top level).
    fn body(&mut self, nested: bool) -> Result<Map<String, Value>, (usize, String)> {
        let mut map = Map::new();
        loop {
            let key = match self.next() {
                None if !nested => return Ok(map),
                None => return self.error("missing `}`"),
                Some(Token::Punct('}')) if nested => return Ok(map),
                Some(Token::Punct(',')) => continue,
                Some(Token::Word(w) | Token::Str(w)) => w,
                Some(other) => return self.error(format!("expected a key, found {other:?}")),
            };
            let mut labels = Vec::new();
            while let Some(Token::Str(label)) = self.peek() {
                labels.push(label.clone());
                self.at += 1;
            }
            let value = match self.next() {
                Some(Token::Punct('=' | ':')) => self.value()?,
                Some(Token::Punct('{')) => Value::Object(self.body(true)?),
                _ => return self.error(format!("expected `=` or `{{` after `{key}`")),
            };
            let value = labels.into_iter().rev().fold(value, |inner, label| {
                let mut m = Map::new();
                m.insert(label, inner);
                Value::Object(m)
            });
            insert(&mut map, key, value);
        }
    }

    fn value(&mut self) -> Result<Value, (usize, String)> {
        match self.next() {
            Some(Token::Str(s)) => Ok(Value::String(s)),
            Some(Token::Num(n)) => Ok(serde_json::Number::from_f64(n)
                .map(|num| {
                    if n.fract() == 0.0 && n.abs() < 9e15 {
                        Value::from(n as i64)
                    } else {
                        Value::Number(num)
                    }
                })
                .unwrap_or(Value::Null)),
            Some(Token::Word(w)) if w == "true" => Ok(Value::Bool(true)),
            Some(Token::Word(w)) if w == "false" => Ok(Value::Bool(false)),
            Some(Token::Punct('{')) => Ok(Value::Object(self.body(true)?)),
            Some(Token::Punct('[')) => {
                let mut list = Vec::new();
                loop {
                    match self.peek() {
                        Some(Token::Punct(']')) => {
                            self.at += 1;
                            return Ok(Value::Array(list));
                        }
                        Some(Token::Punct(',')) => self.at += 1,
                        None => return self.error("missing `]`"),
                        _ => list.push(self.value()?),
                    }
                }
            }
            other => self.error(format!("expected a value, found {other:?}")),
        }
    }
}

/// A key given twice: two blocks merge (HCL's repeated blocks), anything else is replaced.
fn insert(map: &mut Map<String, Value>, key: String, value: Value) {
    match (map.get_mut(&key), value) {
        (Some(Value::Object(old)), Value::Object(new)) => {
            for (k, v) in new {
                insert(old, k, v);
            }
        }
        (_, value) => {
            map.insert(key, value);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::parse;

    /// The agent config shapes Consul's docs show parse into the JSON they stand for.
    #[test]
    fn consul_agent_config() {
        let text = r#"
            # agent
            datacenter = "dc1"
            recursors = ["10.0.0.2", "10.0.0.3:53"]
            ports { dns = 8600 }
            dns_config {
              node_ttl = "10s"
              service_ttl { "*" = "5s", "web" = "30s" }
              udp_answer_limit = 5
              enable_truncate = true
              /* soa */
              soa { refresh = 3600 }
            }
            service "web" { port = 80 }
        "#;
        let v = parse(text).unwrap();
        assert_eq!(v["recursors"][1], "10.0.0.3:53");
        assert_eq!(v["ports"]["dns"], 8600);
        assert_eq!(v["dns_config"]["service_ttl"]["web"], "30s");
        assert_eq!(v["dns_config"]["udp_answer_limit"], 5);
        assert_eq!(v["dns_config"]["enable_truncate"], true);
        assert_eq!(v["dns_config"]["soa"]["refresh"], 3600);
        assert_eq!(v["service"]["web"]["port"], 80);
        assert_eq!(parse("a = <<EOF\nx\nEOF\n").unwrap_err().0, 1);
        assert_eq!(parse("a = 1\nb = \"x\nc = 2").unwrap_err().0, 2);
    }
}
