//! containerd's filter syntax for List, as far as snapshots use it:
//! `FIELD`, `FIELD==VALUE`, `FIELD!=VALUE`, clauses joined by ',' (all must
//! hold); several filters: any may match. Fields are `name`, `parent`,
//! `kind` and `labels.KEY`; a KEY or VALUE may be quoted ("...", with \"
//! and \\ escapes), as `labels."containerd.io/gc.root"==x`.

use crate::Error;

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Clause {
    path: Vec<String>,
    op: Op,
}

/// One parsed filter: clauses that must all hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Filter(Vec<Clause>);

fn bad(f: &str, why: &str) -> Error {
    Error::Invalid(format!("filter '{f}': {why}"))
}

/// A quoted string at the start of `s` (which starts with '"'): its text
/// and what follows it.
fn quoted<'a>(f: &str, s: &'a str) -> Result<(String, &'a str), Error> {
    let mut out = String::new();
    let mut chars = s[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &s[i + 2..])),
            '\\' => match chars.next() {
                Some((_, c)) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(bad(f, "unterminated quote"))
}

/// A field name or unquoted value: up to one of `stops`.
fn word<'a>(s: &'a str, stops: &[char]) -> (String, &'a str) {
    let end = s.find(|c| stops.contains(&c)).unwrap_or(s.len());
    (s[..end].to_string(), &s[end..])
}

impl Filter {
    pub fn parse(f: &str) -> Result<Filter, Error> {
        let mut clauses = Vec::new();
        let mut s = f.trim();
        while !s.is_empty() {
            let mut path = Vec::new();
            loop {
                let (field, rest) = if s.starts_with('"') {
                    quoted(f, s)?
                } else {
                    word(s, &['.', '=', '!', '~', ','])
                };
                if field.is_empty() {
                    return Err(bad(f, "a field name is missing"));
                }
                path.push(field);
                s = rest;
                match s.strip_prefix('.') {
                    Some(rest) => s = rest,
                    None => break,
                }
            }
            let op = if let Some(rest) = s.strip_prefix("==").or_else(|| s.strip_prefix("!=")) {
                let equal = s.starts_with("==");
                let (value, rest) = if rest.starts_with('"') {
                    quoted(f, rest)?
                } else {
                    word(rest, &[','])
                };
                s = rest;
                if equal {
                    Op::Equal(value)
                } else {
                    Op::NotEqual(value)
                }
            } else if s.starts_with("~=") {
                return Err(bad(f, "regular expressions (~=) are not supported"));
            } else {
                Op::Present
            };
            clauses.push(Clause { path, op });
            s = match s.strip_prefix(',') {
                Some(rest) => rest.trim_start(),
                None if s.is_empty() => s,
                None => return Err(bad(f, &format!("unexpected '{s}'"))),
            };
        }
        Ok(Filter(clauses))
    }

    /// Does it hold for a snapshot, whose fields `field` answers?
    pub fn matches(&self, field: &dyn Fn(&[String]) -> Option<String>) -> bool {
        self.0.iter().all(|c| {
            let v = field(&c.path);
            match &c.op {
                Op::Present => v.is_some(),
                Op::Equal(want) => v.as_deref() == Some(want),
                Op::NotEqual(want) => v.as_deref() != Some(want),
            }
        })
    }
}

/// Every filter of a List request; none means all.
pub fn parse_all(filters: &[String]) -> Result<Vec<Filter>, Error> {
    filters
        .iter()
        .filter(|f| !f.trim().is_empty())
        .map(|f| Filter::parse(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(path: &[String]) -> Option<String> {
        match path.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["name"] => Some("default/1/a".into()),
            ["kind"] => Some("active".into()),
            ["parent"] => Some(String::new()),
            ["labels", "containerd.io/gc.root"] => Some("check-walk".into()),
            _ => None,
        }
    }

    #[test]
    fn containerd_filters_parse_and_match() {
        let m = |f: &str| Filter::parse(f).unwrap().matches(&fields);
        assert!(m(r#"labels."containerd.io/gc.root"==check-walk"#));
        assert!(m(
            r#"kind==active,labels."containerd.io/gc.root"==check-walk"#
        ));
        assert!(!m(
            r#"kind==view,labels."containerd.io/gc.root"==check-walk"#
        ));
        assert!(m(r#"name=="default/1/a""#));
        assert!(m("name!=other"));
        assert!(m(r#"labels."containerd.io/gc.root""#));
        assert!(!m("labels.missing"));
        assert!(m(r#"parent=="""#));
        assert!(!m(r#"parent=="x""#));
    }

    #[test]
    fn bad_filters_are_refused() {
        for f in [r#"labels."open"#, "name~=a.*", "==x", "name==a b,,x"] {
            assert!(
                matches!(Filter::parse(f), Err(Error::Invalid(_))),
                "{f} was accepted"
            );
        }
    }
}
