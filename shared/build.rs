//! Build-time inputs of the library: the migrations (embedded by the CLI and the tests) and the
//! OpenAPI document, turned from `openapi.yaml` into the JSON that `GET /openapi.json` serves.
//! A document that is not YAML, or not a mapping, fails the build rather than the route.

use serde_json::{Map, Number, Value};
use std::{env, fs, path::Path};
use yaml_rust2::{Yaml, YamlLoader};

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
    println!("cargo:rerun-if-changed=../openapi.yaml");
    let source = fs::read_to_string("../openapi.yaml").expect("read openapi.yaml");
    let documents = YamlLoader::load_from_str(&source)
        .unwrap_or_else(|e| panic!("openapi.yaml is not YAML: {e}"));
    let [document] = documents.as_slice() else {
        panic!("openapi.yaml must hold exactly one YAML document");
    };
    let json = to_json(document, "");
    assert!(json.is_object(), "openapi.yaml must be a mapping");
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).to_owned();
    fs::write(out.join("openapi.json"), json.to_string()).expect("write openapi.json");
    // The `servers` member as it appears in openapi.json, which a deployment replaces.
    let servers = format!("\"servers\":{}", json["servers"]);
    assert!(
        json["servers"].is_array(),
        "openapi.yaml must list its servers"
    );
    fs::write(out.join("servers.json"), servers).expect("write servers.json");
    fs::write(out.join("routes.rs"), routes(&json)).expect("write routes.rs");
}

/// `&[(path, allow)]`: each documented path and its methods as an `Allow` header lists them.
fn routes(document: &Value) -> String {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let paths = document["paths"]
        .as_object()
        .expect("openapi.yaml must have paths");
    let mut rows = String::from("&[\n");
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is a mapping");
        let allow: Vec<String> = item
            .keys()
            .filter(|key| METHODS.contains(&key.as_str()))
            .map(|method| method.to_uppercase())
            .collect();
        assert!(!allow.is_empty(), "openapi.yaml: {path} has no operation");
        rows.push_str(&format!("    ({path:?}, {:?}),\n", allow.join(", ")));
    }
    rows.push(']');
    rows
}

/// The JSON value of a YAML node. Mapping keys become strings (`200:` is a status code, not a
/// number); an alias or a value YAML could not type stops the build with its path.
fn to_json(node: &Yaml, at: &str) -> Value {
    match node {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| panic!("openapi.yaml{at}: {text} is not a finite number")),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| to_json(item, &format!("{at}/{i}")))
                .collect(),
        ),
        Yaml::Hash(entries) => {
            let mut object = Map::new();
            for (key, value) in entries {
                let key = match key {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("openapi.yaml{at}: unsupported mapping key {other:?}"),
                };
                let value = to_json(value, &format!("{at}/{key}"));
                object.insert(key, value);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => {
            panic!("openapi.yaml{at}: use $ref, not YAML anchors and aliases")
        }
    }
}
