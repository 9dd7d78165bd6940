//! The schema registry: the JSON Schemas (draft 2020-12) that route bodies must match, compiled
//! once per config build (and so once per reload), never on the hot path.
//!
//! A route names its schema with `schema:`: a shipped name (`instances.assemble`, the files in
//! `schemas/`, embedded in the binary), a `NAME` found as `NAME.json` in `validation.schema_dir`
//! (which takes precedence, so a shipped schema can be replaced), or a path ending in `.json`
//! (relative paths resolve against `validation.schema_dir`, else the working directory).
//!
//! Strict routes compile a variant of the schema in which every object schema that lists
//! `properties` and says nothing about other properties refuses unknown ones.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The schemas shipped in `schemas/`.
pub const BUILTIN: &[(&str, &str)] = &[
    (
        "disks.clone",
        include_str!("../../schemas/disks.clone.json"),
    ),
    (
        "disks.create",
        include_str!("../../schemas/disks.create.json"),
    ),
    (
        "disks.resize",
        include_str!("../../schemas/disks.resize.json"),
    ),
    (
        "disks.update",
        include_str!("../../schemas/disks.update.json"),
    ),
    (
        "facade.instance.create",
        include_str!("../../schemas/facade.instance.create.json"),
    ),
    (
        "facade.instance.patch",
        include_str!("../../schemas/facade.instance.patch.json"),
    ),
    (
        "instances.assemble",
        include_str!("../../schemas/instances.assemble.json"),
    ),
    (
        "instances.context",
        include_str!("../../schemas/instances.context.json"),
    ),
    (
        "instances.create",
        include_str!("../../schemas/instances.create.json"),
    ),
    (
        "instances.remote_access",
        include_str!("../../schemas/instances.remote_access.json"),
    ),
    (
        "instances.set_availability_group",
        include_str!("../../schemas/instances.set_availability_group.json"),
    ),
    (
        "instances.set_disks",
        include_str!("../../schemas/instances.set_disks.json"),
    ),
    (
        "instances.set_network_adapters",
        include_str!("../../schemas/instances.set_network_adapters.json"),
    ),
    (
        "instances.set_public_keys",
        include_str!("../../schemas/instances.set_public_keys.json"),
    ),
    (
        "instances.update",
        include_str!("../../schemas/instances.update.json"),
    ),
    (
        "ip_addresses.create",
        include_str!("../../schemas/ip_addresses.create.json"),
    ),
    (
        "networks.create",
        include_str!("../../schemas/networks.create.json"),
    ),
    (
        "public_keys.create",
        include_str!("../../schemas/public_keys.create.json"),
    ),
];

/// A compiled schema.
pub struct Schema {
    /// The name the route gave (`instances.assemble`, `custom/x.json`).
    pub name: Arc<str>,
    pub strict: bool,
    pub validator: jsonschema::Validator,
    /// The same schema with quick forms of its costliest keywords, for the yes/no check
    /// (`super::quick`); `None` when it has none of them.
    pub quick: Option<jsonschema::Validator>,
    /// The document it was compiled from (error messages read `description`s from it).
    pub doc: Value,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema")
            .field("name", &self.name)
            .field("strict", &self.strict)
            .finish()
    }
}

/// Compiles schemas, each (source, strictness) once per build.
pub struct Compiler<'a> {
    schema_dir: Option<&'a Path>,
    compiled: HashMap<(String, bool), Arc<Schema>>,
}

impl<'a> Compiler<'a> {
    pub fn new(schema_dir: Option<&'a Path>) -> Self {
        Compiler {
            schema_dir,
            compiled: HashMap::new(),
        }
    }

    /// The compiled schema a route names, or why it cannot be had.
    pub fn get(&mut self, name: &str, strict: bool) -> Result<Arc<Schema>, String> {
        let (key, text) = self.source(name)?;
        if let Some(s) = self.compiled.get(&(key.clone(), strict)) {
            return Ok(s.clone());
        }
        let mut doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("schema '{name}' ({key}) is not valid JSON: {e}"))?;
        if strict {
            make_strict(&mut doc);
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&doc)
            .map_err(|e| format!("schema '{name}' ({key}) does not compile: {e}"))?;
        let schema = Arc::new(Schema {
            name: name.into(),
            strict,
            validator,
            quick: super::quick::twin(&doc),
            doc,
        });
        self.compiled.insert((key, strict), schema.clone());
        Ok(schema)
    }

    /// A stable key for the source and its text.
    fn source(&self, name: &str) -> Result<(String, String), String> {
        let is_file = name.ends_with(".json") || name.contains('/');
        if is_file {
            let p = PathBuf::from(name);
            let p = match (p.is_relative(), self.schema_dir) {
                (true, Some(dir)) => dir.join(p),
                _ => p,
            };
            return read(&p);
        }
        if let Some(dir) = self.schema_dir {
            let p = dir.join(format!("{name}.json"));
            if p.is_file() {
                return read(&p);
            }
        }
        match BUILTIN.iter().find(|(n, _)| *n == name) {
            Some((n, text)) => Ok((format!("builtin:{n}"), (*text).to_string())),
            None => Err(format!(
                "unknown schema '{name}' (shipped: {}; or give a .json file)",
                BUILTIN
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

fn read(p: &Path) -> Result<(String, String), String> {
    std::fs::read_to_string(p)
        .map(|t| (p.display().to_string(), t))
        .map_err(|e| format!("cannot read schema file {}: {e}", p.display()))
}

/// Every object schema with `properties` and no word on other properties refuses unknown ones.
pub fn make_strict(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !map.contains_key("unevaluatedProperties")
                && !map.contains_key("patternProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (k, v) in map.iter_mut() {
                match k.as_str() {
                    // Values that are data, not subschemas.
                    "enum" | "const" | "default" | "examples" | "required" => {}
                    _ => make_strict(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(make_strict),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_schema_compiles_both_ways() {
        let mut c = Compiler::new(None);
        for (name, _) in BUILTIN {
            c.get(name, false).unwrap();
            c.get(name, true).unwrap();
        }
        assert!(c.get("nope", false).is_err());
        // Compiled once per (source, strictness).
        let a = c.get("instances.assemble", false).unwrap();
        let b = c.get("instances.assemble", false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn strict_refuses_unknown_fields() {
        let mut c = Compiler::new(None);
        let body = serde_json::json!({"size": 20, "colour": "blue"});
        assert!(
            c.get("disks.resize", false)
                .unwrap()
                .validator
                .is_valid(&body)
        );
        assert!(
            !c.get("disks.resize", true)
                .unwrap()
                .validator
                .is_valid(&body)
        );
    }
}
