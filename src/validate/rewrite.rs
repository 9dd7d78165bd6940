//! Body rewriting: per-route rules applied to the validated body before it goes upstream.
//! Order: `drop`, `rename`, `set`, `defaults`. Paths are top-level keys or dotted paths into
//! nested objects; a path through something that is not an object is left alone.

use crate::config::model::RewriteConfig;
use serde_json::{Map, Value};

type Path = Vec<String>;

#[derive(Debug, Default)]
pub struct Rewrite {
    drop: Vec<Path>,
    rename: Vec<(Path, Path)>,
    set: Vec<(Path, Value)>,
    defaults: Vec<(Path, Value)>,
}

fn parse_path(s: &str) -> Result<Path, String> {
    let parts: Path = s.split('.').map(str::to_string).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("'{s}' is not a field path (name or a.b.c)"));
    }
    Ok(parts)
}

impl Rewrite {
    /// Validates the rules; errors are relative to the route's `rewrite`.
    pub fn build(c: &RewriteConfig) -> Result<Option<Rewrite>, Vec<String>> {
        let mut errors = Vec::new();
        let mut r = Rewrite::default();
        for (i, d) in c.drop.iter().enumerate() {
            match parse_path(d) {
                Ok(p) => r.drop.push(p),
                Err(e) => errors.push(format!("rewrite.drop[{i}]: {e}")),
            }
        }
        for (from, to) in &c.rename {
            match (parse_path(from), parse_path(to)) {
                (Ok(f), Ok(t)) if f != t => r.rename.push((f, t)),
                (Ok(_), Ok(_)) => errors.push(format!("rewrite.rename.{from}: renamed to itself")),
                (Err(e), _) | (_, Err(e)) => errors.push(format!("rewrite.rename.{from}: {e}")),
            }
        }
        for (what, src, dst) in [
            ("set", &c.set, &mut r.set),
            ("defaults", &c.defaults, &mut r.defaults),
        ] {
            for (k, v) in src {
                match parse_path(k) {
                    Ok(p) => dst.push((p, v.clone())),
                    Err(e) => errors.push(format!("rewrite.{what}.{k}: {e}")),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let empty =
            r.drop.is_empty() && r.rename.is_empty() && r.set.is_empty() && r.defaults.is_empty();
        Ok((!empty).then_some(r))
    }

    /// Applies the rules; true when the body changed. Bodies that are not objects are left alone.
    pub fn apply(&self, body: &mut Value) -> bool {
        let Value::Object(root) = body else {
            return false;
        };
        let mut changed = false;
        for p in &self.drop {
            changed |= take(root, p).is_some();
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(root, from) {
                put(root, to, v);
                changed = true;
            }
        }
        for (p, v) in &self.set {
            if get(root, p) != Some(v) {
                put(root, p, v.clone());
                changed = true;
            }
        }
        for (p, v) in &self.defaults {
            if get(root, p).is_none_or(Value::is_null) {
                changed |= put(root, p, v.clone());
            }
        }
        changed
    }
}

fn parent_mut<'a>(
    root: &'a mut Map<String, Value>,
    path: &[String],
    create: bool,
) -> Option<&'a mut Map<String, Value>> {
    let mut cur = root;
    for seg in path {
        if create && !cur.contains_key(seg) {
            cur.insert(seg.clone(), Value::Object(Map::new()));
        }
        cur = cur.get_mut(seg)?.as_object_mut()?;
    }
    Some(cur)
}

fn take(root: &mut Map<String, Value>, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    parent_mut(root, parents, false)?.remove(last)
}

fn put(root: &mut Map<String, Value>, path: &[String], v: Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    match parent_mut(root, parents, true) {
        Some(obj) => {
            obj.insert(last.clone(), v);
            true
        }
        None => false,
    }
}

fn get<'a>(root: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut cur = root.get(first)?;
    for seg in rest {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(y: &str) -> Rewrite {
        let c: RewriteConfig = serde_yaml::from_str(y).unwrap();
        Rewrite::build(&c).unwrap().unwrap()
    }

    #[test]
    fn drop_rename_set_defaults_in_order() {
        let r = rules(
            "{drop: [note, meta.secret], rename: {start: start_when_ready}, set: {allocate_public_ip: false}, defaults: {hostname: web, meta.tag: x}}",
        );
        let mut b = json!({"name": "a", "note": "n", "start": true, "meta": {"secret": 1}, "hostname": null});
        assert!(r.apply(&mut b));
        assert_eq!(
            b,
            json!({"name": "a", "start_when_ready": true, "meta": {"tag": "x"}, "hostname": "web", "allocate_public_ip": false})
        );
        // Already in shape: nothing changes.
        assert!(!r.apply(&mut b));
        // Not an object: left alone.
        let mut arr = json!([1]);
        assert!(!r.apply(&mut arr));
    }

    #[test]
    fn bad_paths_are_config_errors() {
        let c: RewriteConfig = serde_yaml::from_str("{drop: ['a..b'], rename: {x: x}}").unwrap();
        let errs = Rewrite::build(&c).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
        let empty: RewriteConfig = serde_yaml::from_str("{}").unwrap();
        assert!(Rewrite::build(&empty).unwrap().is_none());
    }
}
