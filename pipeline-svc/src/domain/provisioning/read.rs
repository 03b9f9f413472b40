//! Reading a client's JSON spec. serde's derive stops at the first problem and names a line
//! and column; a person fixing a spec needs `schema.nodes[1].properties[0].type`, and every
//! such problem at once. The result is the same `SchemaSpec` serde would build (a property
//! test holds the two together).

use serde_json::{Map, Value};

use super::spec::{
    shown, CustomSchema, NodeType, Property, PropertyType, RelationshipType, SchemaSpec, Violation,
    Violations, MAX_SPEC_BYTES,
};

pub(super) fn schema_spec(text: &str) -> Result<SchemaSpec, Vec<Violation>> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(vec![Violation::new(
            "schema",
            format!(
                "is {} bytes; at most {MAX_SPEC_BYTES} are allowed",
                text.len()
            ),
        )]);
    }
    // serde_json bounds nesting depth (128), so hostile nesting is an error, not a stack overflow.
    let value: Value = serde_json::from_str(text)
        .map_err(|e| vec![Violation::new("schema", format!("is not valid JSON: {e}"))])?;
    let mut reader = Reader::default();
    let spec = reader.spec(&value);
    // Every `None` above pushed a violation, so an empty list comes with a spec.
    reader
        .violations
        .finish(spec)?
        .ok_or_else(|| vec![Violation::new("schema", "could not be read")])
}

type Object = Map<String, Value>;

#[derive(Default)]
struct Reader {
    violations: Violations,
}

impl Reader {
    fn spec(&mut self, value: &Value) -> Option<SchemaSpec> {
        let map = self.object(value, "schema")?;
        let schema_type = self.string(map, "schema", "schema_type")?;
        match schema_type.as_str() {
            "custom" => self.custom(map).map(SchemaSpec::Custom),
            "extensions" => {
                self.only(map, "schema", &["schema_type", "extensions"]);
                let items = self.array(map, "schema", "extensions", true)?;
                let extensions = self.each(items, "schema.extensions", |r, item, path| {
                    r.string_value(item, path)
                })?;
                Some(SchemaSpec::Extensions { extensions })
            }
            other => {
                self.violations.push(
                    "schema.schema_type",
                    format!(
                        "{} is not a schema type; use \"custom\" or \"extensions\"",
                        shown(other)
                    ),
                );
                None
            }
        }
    }

    fn custom(&mut self, map: &Object) -> Option<CustomSchema> {
        self.only(
            map,
            "schema",
            &["schema_type", "name", "version", "nodes", "relationships"],
        );
        let name = self.string(map, "schema", "name");
        let version = self.string(map, "schema", "version");
        let nodes = self
            .array(map, "schema", "nodes", true)
            .and_then(|items| self.each(items, "schema.nodes", Self::node));
        let relationships = self
            .array(map, "schema", "relationships", false)
            .and_then(|items| self.each(items, "schema.relationships", Self::relationship));
        Some(CustomSchema {
            name: name?,
            version: version?,
            nodes: nodes?,
            relationships: relationships?,
        })
    }

    fn node(&mut self, value: &Value, path: &str) -> Option<NodeType> {
        let map = self.object(value, path)?;
        self.only(map, path, &["name", "primary_key", "properties"]);
        let name = self.string(map, path, "name");
        let primary_key = self.string(map, path, "primary_key");
        let properties = self.properties(map, path);
        Some(NodeType {
            name: name?,
            primary_key: primary_key?,
            properties: properties?,
        })
    }

    fn relationship(&mut self, value: &Value, path: &str) -> Option<RelationshipType> {
        let map = self.object(value, path)?;
        self.only(map, path, &["name", "from", "to", "properties"]);
        let name = self.string(map, path, "name");
        let from = self.string(map, path, "from");
        let to = self.string(map, path, "to");
        let properties = self.properties(map, path);
        Some(RelationshipType {
            name: name?,
            from: from?,
            to: to?,
            properties: properties?,
        })
    }

    fn properties(&mut self, map: &Object, path: &str) -> Option<Vec<Property>> {
        let items = self.array(map, path, "properties", false)?;
        self.each(items, &format!("{path}.properties"), Self::property)
    }

    fn property(&mut self, value: &Value, path: &str) -> Option<Property> {
        let map = self.object(value, path)?;
        self.only(map, path, &["name", "type", "required"]);
        let name = self.string(map, path, "name");
        let ty = self
            .string(map, path, "type")
            .and_then(|ty| match PropertyType::parse(&ty) {
                Some(ty) => Some(ty),
                None => {
                    self.violations.push(
                        format!("{path}.type"),
                        format!(
                            "{} is not a property type; use one of {}",
                            shown(&ty),
                            PropertyType::names()
                        ),
                    );
                    None
                }
            });
        let required = match map.get("required") {
            None => Some(false),
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.violations.push(
                    format!("{path}.required"),
                    format!("must be true or false, not {}", kind(other)),
                );
                None
            }
        };
        Some(Property {
            name: name?,
            ty: ty?,
            required: required?,
        })
    }

    /// Reads every item (so all of their problems are reported), or none.
    fn each<T>(
        &mut self,
        items: &[Value],
        path: &str,
        mut read: impl FnMut(&mut Self, &Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let mut out = Vec::with_capacity(items.len());
        let mut complete = true;
        for (i, item) in items.iter().enumerate() {
            match read(self, item, &format!("{path}[{i}]")) {
                Some(x) => out.push(x),
                None => complete = false,
            }
        }
        complete.then_some(out)
    }

    fn object<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Object> {
        match value {
            Value::Object(map) => Some(map),
            other => {
                self.violations
                    .push(path, format!("must be a JSON object, not {}", kind(other)));
                None
            }
        }
    }

    /// Unknown fields are refused: a misspelt optional field would otherwise vanish silently,
    /// and SQL text smuggled in an extra field must not look accepted.
    fn only(&mut self, map: &Object, path: &str, allowed: &[&str]) {
        for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
            self.violations.push(
                path,
                format!(
                    "has an unknown field {}; the fields are {}",
                    shown(key),
                    allowed.join(", ")
                ),
            );
        }
    }

    fn string(&mut self, map: &Object, path: &str, key: &str) -> Option<String> {
        let field = format!("{path}.{key}");
        match map.get(key) {
            Some(value) => self.string_value(value, &field),
            None => {
                self.violations.push(field, "is required");
                None
            }
        }
    }

    fn string_value(&mut self, value: &Value, field: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            other => {
                self.violations
                    .push(field, format!("must be a string, not {}", kind(other)));
                None
            }
        }
    }

    fn array<'v>(
        &mut self,
        map: &'v Object,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'v [Value]> {
        let field = format!("{path}.{key}");
        match map.get(key) {
            Some(Value::Array(items)) => Some(items),
            None if !required => Some(&[]),
            None => {
                self.violations.push(field, "is required");
                None
            }
            Some(other) => {
                self.violations
                    .push(field, format!("must be an array, not {}", kind(other)));
                None
            }
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(text: &str) -> Vec<(String, String)> {
        schema_spec(text)
            .expect_err("must be refused")
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    #[test]
    fn reads_both_schema_types() {
        let custom = r#"{"schema_type":"custom","name":"n","version":"1",
            "nodes":[{"name":"A","primary_key":"id","properties":[{"name":"id","type":"int64","required":true}]}]}"#;
        let spec = schema_spec(custom).expect("reads");
        assert_eq!(
            spec,
            serde_json::from_str::<SchemaSpec>(custom).expect("serde")
        );
        let ext = r#"{"schema_type":"extensions","extensions":["social"]}"#;
        assert_eq!(
            schema_spec(ext).expect("reads"),
            SchemaSpec::Extensions {
                extensions: vec!["social".into()]
            }
        );
    }

    #[test]
    fn every_structural_problem_has_its_path() {
        let text = r#"{"schema_type":"custom","name":7,"ddl":"DROP TABLE x",
            "nodes":[{"name":"A","primary_key":"id","properties":[
                {"name":"id","type":"varchar"},{"name":"x","type":"int64","required":"yes"},{"type":"bool"}]},
                "B"],
            "relationships":{}}"#;
        let got = violations(text);
        let fields: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "schema",
                "schema.name",
                "schema.version",
                "schema.nodes[0].properties[0].type",
                "schema.nodes[0].properties[1].required",
                "schema.nodes[0].properties[2].name",
                "schema.nodes[1]",
                "schema.relationships",
            ],
            "{got:?}"
        );
        assert!(got[0].1.contains("unknown field \"ddl\""));
        assert!(got[3]
            .1
            .contains("\"varchar\" is not a property type; use one of string, int64"));
    }

    #[test]
    fn refuses_non_json_oversized_and_wrong_types() {
        assert!(violations("CREATE TABLE x (a int);")[0]
            .1
            .starts_with("is not valid JSON"));
        let huge = format!("\"{}\"", "a".repeat(MAX_SPEC_BYTES));
        assert_eq!(violations(&huge)[0].0, "schema");
        assert_eq!(violations("[]")[0].1, "must be a JSON object, not an array");
        assert_eq!(violations("{}")[0].0, "schema.schema_type");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(violations(&deep)[0].1.contains("recursion limit"));
        let sql = r#"{"schema_type":"sql"}"#;
        assert_eq!(violations(sql)[0].0, "schema.schema_type");
        let ext = r#"{"schema_type":"extensions","extensions":["social",1,null]}"#;
        let fields: Vec<String> = violations(ext).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["schema.extensions[1]", "schema.extensions[2]"]);
    }
}
