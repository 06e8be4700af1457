//! The published schema of every `-o json` document, and what it finds wrong with one.
//! Shared by the integration tests (support.rs) and the lib's unit tests
//! (src/cli/output_schema.rs includes this file).

use std::sync::OnceLock;

use serde_json::Value;

/// The schema's source.
pub const SCHEMA: &str = include_str!("../../schema/output.v1alpha1.schema.json");

/// What the schema finds wrong with `doc`, judged by the definition of its kind (a failed
/// `oneOf` alone does not say what is wrong); empty when it validates.
pub fn violations(doc: &Value) -> Vec<String> {
    static COMPILED: OnceLock<(Value, jsonschema::Validator)> = OnceLock::new();
    let (schema, validator) = COMPILED.get_or_init(|| {
        let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
        let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
        (schema, validator)
    });
    if validator.is_valid(doc) {
        return Vec::new();
    }
    let mut narrowed = schema.clone();
    if let Some(kind) = doc["kind"]
        .as_str()
        .filter(|k| schema["$defs"][k].is_object())
    {
        narrowed.as_object_mut().unwrap().remove("oneOf");
        narrowed["$ref"] = serde_json::json!(format!("#/$defs/{kind}"));
    }
    let found: Vec<String> = jsonschema::draft202012::new(&narrowed)
        .expect("the schema compiles")
        .iter_errors(doc)
        .map(|e| format!("at {:?}: {e}", e.instance_path().as_str()))
        .collect();
    if found.is_empty() {
        vec!["matches no single kind of the schema's oneOf".to_string()]
    } else {
        found
    }
}
