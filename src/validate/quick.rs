//! The quick twin of a schema, for the yes/no check every validated request makes first.
//!
//! A request body is checked with `is_valid` before anything else (`super::check`); only a body
//! that fails is walked again for its errors. The twin is the same document with the keywords
//! whose library checks cost most per request replaced by exact equivalents written for the
//! values they test:
//!
//! - `"pattern"` with the UUID expression the shipped schemas use for every id: 36 characters,
//!   hyphens at 8, 13, 18 and 23, hex digits elsewhere;
//! - `"pattern"` with the "no control characters" expression of names: not empty, no
//!   U+0000 to U+001F or U+007F;
//! - `"uniqueItems": true`: an array of strings is sorted and compared neighbour to neighbour;
//!   any other array goes to the library's own check.
//!
//! Each stands for exactly what it replaces (the tests compare them with the library on the
//! same values), so a body the twin accepts is a body the schema accepts. Errors are always
//! the library's, from the original schema. Any other keyword is left as it is.

use jsonschema::{Keyword, ValidationError};
use serde_json::{Map, Value};

/// The id pattern of the shipped schemas.
const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// The name pattern of the shipped schemas.
const NO_CONTROL_PATTERN: &str = "^[^\\x00-\\x1F\\x7F]+$";

const UUID_KEYWORD: &str = "x-orion-quick-uuid";
const NO_CONTROL_KEYWORD: &str = "x-orion-quick-no-control";
const UNIQUE_KEYWORD: &str = "x-orion-quick-unique";

/// The twin of `doc`, or `None` when no keyword of it has a quick form.
pub fn twin(doc: &Value) -> Option<jsonschema::Validator> {
    let mut quick = doc.clone();
    if !rewrite_schema(&mut quick) {
        return None;
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .with_keyword(UUID_KEYWORD, |_, _, _| {
            Ok(Box::new(Uuid) as Box<dyn for<'i> Keyword<'i>>)
        })
        .with_keyword(NO_CONTROL_KEYWORD, |_, _, _| {
            Ok(Box::new(NoControl) as Box<dyn for<'i> Keyword<'i>>)
        })
        .with_keyword(UNIQUE_KEYWORD, |_, _, _| {
            Ok(Box::new(Unique) as Box<dyn for<'i> Keyword<'i>>)
        })
        .build(&quick)
        .ok()
}

/// Rewrites the keywords of the schema `v` (an object or a boolean schema) and of its
/// subschemas; `true` when anything changed.
fn rewrite_schema(v: &mut Value) -> bool {
    let Value::Object(map) = v else {
        return false;
    };
    let mut changed = rename(map);
    for (k, sub) in map.iter_mut() {
        changed |= match k.as_str() {
            // Maps from names to subschemas: the names are data.
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                match sub {
                    Value::Object(m) => m.values_mut().fold(false, |c, s| rewrite_schema(s) | c),
                    _ => false,
                }
            }
            // Lists of subschemas.
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => match sub {
                Value::Array(items) => items.iter_mut().fold(false, |c, s| rewrite_schema(s) | c),
                _ => false,
            },
            // One subschema (`items` may be a list in older drafts).
            "items"
            | "additionalItems"
            | "additionalProperties"
            | "unevaluatedItems"
            | "unevaluatedProperties"
            | "contains"
            | "propertyNames"
            | "not"
            | "if"
            | "then"
            | "else" => match sub {
                Value::Array(items) => items.iter_mut().fold(false, |c, s| rewrite_schema(s) | c),
                other => rewrite_schema(other),
            },
            _ => false,
        };
    }
    changed
}

/// Renames this schema object's own keywords that have a quick form.
fn rename(map: &mut Map<String, Value>) -> bool {
    let keyword = match map.get("pattern").and_then(Value::as_str) {
        Some(UUID_PATTERN) => Some(UUID_KEYWORD),
        Some(NO_CONTROL_PATTERN) => Some(NO_CONTROL_KEYWORD),
        _ => None,
    };
    let mut changed = false;
    if let Some(k) = keyword {
        map.remove("pattern");
        map.insert(k.into(), Value::Bool(true));
        changed = true;
    }
    if map.get("uniqueItems") == Some(&Value::Bool(true)) {
        map.remove("uniqueItems");
        map.insert(UNIQUE_KEYWORD.into(), Value::Bool(true));
        changed = true;
    }
    changed
}

/// Where `UUID_PATTERN` wants a hyphen.
const HYPHENS: [bool; 36] = {
    let mut at = [false; 36];
    at[8] = true;
    at[13] = true;
    at[18] = true;
    at[23] = true;
    at
};

/// `UUID_PATTERN` (a pattern applies to strings only). Branch-free over the fixed 36 bytes, so
/// that it compiles to a few vector compares (a byte-by-byte `match` cost about 400
/// instructions an id).
fn is_uuid(s: &str) -> bool {
    let Ok(b) = <&[u8; 36]>::try_from(s.as_bytes()) else {
        return false;
    };
    let mut ok = true;
    for (c, hyphen) in b.iter().zip(HYPHENS) {
        let digit = c.wrapping_sub(b'0') < 10;
        let letter = (c | 0x20).wrapping_sub(b'a') < 6;
        ok &= (hyphen & (*c == b'-')) | (!hyphen & (digit | letter));
    }
    ok
}

/// `NO_CONTROL_PATTERN`: the bytes of other characters in UTF-8 are all 0x80 or above.
fn has_no_control(s: &str) -> bool {
    !s.is_empty()
        && !s
            .bytes()
            .fold(false, |bad, b| bad | (b < 0x20) | (b == 0x7f))
}

/// `uniqueItems: true`.
fn all_unique(items: &[Value]) -> bool {
    if items.len() < 2 {
        return true;
    }
    let mut strings = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(s) => strings.push(s.as_str()),
            _ => return jsonschema_value::unique::is_unique(items),
        }
    }
    strings.sort_unstable();
    strings.windows(2).all(|w| w[0] != w[1])
}

struct Uuid;
struct NoControl;
struct Unique;

fn verdict(ok: bool, what: &str) -> Result<(), ValidationError<'static>> {
    if ok {
        Ok(())
    } else {
        Err(ValidationError::custom(what))
    }
}

impl<'i> Keyword<'i> for Uuid {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        verdict(self.is_valid(instance), "not a UUID")
    }
    fn is_valid(&self, instance: &'i Value) -> bool {
        instance.as_str().is_none_or(is_uuid)
    }
}

impl<'i> Keyword<'i> for NoControl {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        verdict(self.is_valid(instance), "empty or has control characters")
    }
    fn is_valid(&self, instance: &'i Value) -> bool {
        instance.as_str().is_none_or(has_no_control)
    }
}

impl<'i> Keyword<'i> for Unique {
    fn validate(&self, instance: &'i Value) -> Result<(), ValidationError<'i>> {
        verdict(self.is_valid(instance), "items are not unique")
    }
    fn is_valid(&self, instance: &'i Value) -> bool {
        instance.as_array().is_none_or(|a| all_unique(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn library(schema: Value) -> jsonschema::Validator {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&schema)
            .unwrap()
    }

    /// Strings around the edges of both patterns: every length near 36, each position
    /// changed to each kind of character, control characters, non-ASCII text.
    fn strings() -> Vec<String> {
        let uuid = "3b0c2f6e-1111-4222-8333-944455556666";
        let mut out: Vec<String> = vec![
            String::new(),
            uuid.into(),
            uuid.to_uppercase(),
            format!("{uuid}\n"),
            format!("\n{uuid}"),
            format!(" {uuid}"),
            uuid.replace('-', ""),
            "Packer: build".into(),
            "build md5=abc".into(),
            "tab\there".into(),
            "del\u{7f}".into(),
            "\u{1f}".into(),
            "é ✓ 🚀".into(),
            "\u{80}\u{9f}".into(),
            "x".into(),
        ];
        for i in 0..uuid.len() {
            for c in ['-', 'g', 'G', '0', 'f', 'F', 'é', ' ', '\0'] {
                let mut s: Vec<char> = uuid.chars().collect();
                s[i] = c;
                out.push(s.into_iter().collect());
            }
            out.push(format!("{}{}", &uuid[..i], &uuid[i + 1..]));
            out.push(format!("{}a{}", &uuid[..i], &uuid[i..]));
        }
        out
    }

    #[test]
    fn the_quick_patterns_decide_as_the_library_does() {
        let uuid = library(json!({"pattern": UUID_PATTERN}));
        let named = library(json!({"pattern": NO_CONTROL_PATTERN}));
        for s in strings() {
            let v = Value::String(s.clone());
            assert_eq!(is_uuid(&s), uuid.is_valid(&v), "uuid {s:?}");
            assert_eq!(has_no_control(&s), named.is_valid(&v), "name {s:?}");
        }
    }

    #[test]
    fn quick_uniqueness_decides_as_the_library_does() {
        let lib = library(json!({"uniqueItems": true}));
        let cases = [
            json!([]),
            json!(["a"]),
            json!(["a", "b", "c"]),
            json!(["a", "b", "a"]),
            json!(["b", "a", "b"]),
            json!(["", ""]),
            json!([1, 1.0]),
            json!([1, "1"]),
            json!(["a", {"a": 1}, {"a": 1}]),
            json!([{"a": 1, "b": 2}, {"b": 2, "a": 1}]),
            json!([[1, 2], [1, 2.0]]),
            json!([null, false, 0]),
        ];
        for c in cases {
            let items = c.as_array().unwrap();
            assert_eq!(all_unique(items), lib.is_valid(&c), "{c}");
        }
    }

    #[test]
    fn names_of_properties_are_not_keywords() {
        // A property called `uniqueItems` or `pattern` is a name, not a keyword: it stays.
        let doc = json!({
            "properties": {
                "uniqueItems": true,
                "pattern": {"type": "string", "pattern": UUID_PATTERN},
                "tags": {"type": "array", "uniqueItems": true, "items": {"pattern": NO_CONTROL_PATTERN}}
            }
        });
        let mut quick = doc.clone();
        assert!(rewrite_schema(&mut quick));
        let props = &quick["properties"];
        assert_eq!(props["uniqueItems"], json!(true));
        assert_eq!(props["pattern"][UUID_KEYWORD], json!(true));
        assert_eq!(props["tags"][UNIQUE_KEYWORD], json!(true));
        assert_eq!(props["tags"]["items"][NO_CONTROL_KEYWORD], json!(true));
        let exact = library(doc.clone());
        let quick = twin(&doc).unwrap();
        for v in [
            json!({"uniqueItems": 1, "tags": ["a", "a"]}),
            json!({"pattern": "x", "tags": ["a", "b"]}),
            json!({"pattern": "3b0c2f6e-1111-4222-8333-944455556666", "tags": ["a\u{1}"]}),
        ] {
            assert_eq!(quick.is_valid(&v), exact.is_valid(&v), "{v}");
        }
    }

    #[test]
    fn every_shipped_schema_and_its_twin_agree_on_bodies() {
        let mut c = super::super::schema::Compiler::new(None);
        let uuid = "3b0c2f6e-1111-4222-8333-944455556666";
        let other = "3b0c2f6e-1111-4222-8333-944455556667";
        let bodies = [
            json!({}),
            json!({"name": "web-1", "memory": 1024, "disks": [uuid, other]}),
            json!({"name": "web-1", "memory": 1024, "disks": [uuid, uuid]}),
            json!({"name": "", "disks": [uuid]}),
            json!({"name": "a\u{1}b"}),
            json!({"name": "Packer: build", "public_keys": [uuid, other, "not-an-id"]}),
            json!({"disks": []}),
            json!({"disks": [{"id": uuid}, {"id": uuid}]}),
            json!({"public_keys": [uuid.to_uppercase(), uuid]}),
            json!({"availability_group": [uuid, other], "performance_tier": uuid, "region": uuid}),
            json!({"region": "SY3", "performance_tier": "x"}),
            json!({"ip_addresses": [other, uuid, other]}),
        ];
        let mut with_twin = 0;
        for (name, _) in super::super::schema::BUILTIN {
            for strict in [false, true] {
                let s = c.get(name, strict).unwrap();
                let Some(quick) = &s.quick else { continue };
                with_twin += 1;
                for b in &bodies {
                    assert_eq!(
                        quick.is_valid(b),
                        s.validator.is_valid(b),
                        "{name} strict={strict} {b}"
                    );
                }
            }
        }
        assert!(with_twin >= 10, "only {with_twin} schemas have a twin");
    }
}
