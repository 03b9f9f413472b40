//! Schema specs as clients send them, and their validation into a `ValidSchema`: the only
//! thing DDL is generated from.

use std::collections::{hash_map::Entry, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{extensions, ident, read};

/// A spec is a few KiB; this leaves room for the largest one the limits below allow.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
pub const MAX_NODES: usize = 64;
pub const MAX_RELATIONSHIPS: usize = 64;
pub const MAX_PROPERTIES: usize = 128;
pub const MAX_SCHEMA_NAME_CHARS: usize = 128;
pub const MAX_VERSION_CHARS: usize = 32;
/// Violations travel in one gRPC status (trailers are small): past this many the list is cut.
pub const MAX_VIOLATIONS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "schema_type", rename_all = "snake_case")]
pub enum SchemaSpec {
    Custom(CustomSchema),
    Extensions { extensions: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomSchema {
    pub name: String,
    pub version: String,
    pub nodes: Vec<NodeType>,
    #[serde(default)]
    pub relationships: Vec<RelationshipType>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeType {
    pub name: String,
    pub primary_key: String,
    #[serde(default)]
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipType {
    pub name: String,
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Property {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: PropertyType,
    #[serde(default)]
    pub required: bool,
}

/// The fixed list of property types; `ddl` maps each to a column type per dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PropertyType {
    String,
    Int64,
    Float64,
    Bool,
    Timestamp,
    Date,
    Json,
}

impl PropertyType {
    pub const ALL: [PropertyType; 7] = [
        Self::String,
        Self::Int64,
        Self::Float64,
        Self::Bool,
        Self::Timestamp,
        Self::Date,
        Self::Json,
    ];

    /// The wire name (`"int64"`), as serde spells it too.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int64 => "int64",
            Self::Float64 => "float64",
            Self::Bool => "bool",
            Self::Timestamp => "timestamp",
            Self::Date => "date",
            Self::Json => "json",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|ty| ty.as_str() == name)
    }

    /// Floats and JSON have no exact equality that both dialects agree on (SQLite keeps JSON
    /// as text, so key order and spacing would make the "same" key differ).
    pub fn can_be_key(self) -> bool {
        !matches!(self, Self::Float64 | Self::Json)
    }

    pub(super) fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for PropertyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One offending field of the spec and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Path from the request's `schema` field, e.g. `schema.nodes[2].properties[0].name`.
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// A table as the DDL generator sees it; only `ValidSchema` produces these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDef {
    pub name: String,
    /// (name, type, NOT NULL), in declaration order.
    pub columns: Vec<(String, PropertyType, bool)>,
    pub primary_key: Vec<String>,
    /// (column, referenced table, referenced column).
    pub foreign_keys: Vec<(String, String, String)>,
}

/// A spec that passed every check, with its tables resolved (extensions expanded). Private
/// fields: `SchemaSpec::validate` is the only way to get one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSchema {
    schema_type: &'static str,
    name: String,
    version: String,
    tables: Vec<TableDef>,
    spec_json: String,
}

impl ValidSchema {
    /// Node tables in declaration order, then relationship tables: dependency order.
    pub fn tables(&self) -> Vec<TableDef> {
        self.tables.clone()
    }
    /// The spec as canonical JSON, for persisting next to the generated DDL.
    pub fn spec_json(&self) -> String {
        self.spec_json.clone()
    }
    /// The custom schema's name; for extensions, their names joined with `+`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The custom schema's version; for extensions, `extensions::CATALOG_VERSION`.
    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn schema_type(&self) -> &'static str {
        self.schema_type
    }
}

impl SchemaSpec {
    /// Reads a client's JSON spec, reporting every structural problem with its field path.
    pub fn from_json(text: &str) -> Result<SchemaSpec, Vec<Violation>> {
        read::schema_spec(text)
    }

    /// Every rule at once: all violations come back together, not the first one.
    pub fn validate(&self) -> Result<ValidSchema, Vec<Violation>> {
        let (name, version, tables) = match self {
            SchemaSpec::Custom(custom) => (
                custom.name.clone(),
                custom.version.clone(),
                custom.resolve_tables()?,
            ),
            SchemaSpec::Extensions { extensions } => {
                let (merged, tables) = extensions::resolve(extensions)?;
                (merged.name, merged.version, tables)
            }
        };
        let spec_json = serde_json::to_string(self).map_err(|e| {
            vec![Violation::new(
                "schema",
                format!("cannot be stored as JSON: {e}"),
            )]
        })?;
        Ok(ValidSchema {
            schema_type: self.schema_type(),
            name,
            version,
            tables,
            spec_json,
        })
    }

    pub fn schema_type(&self) -> &'static str {
        match self {
            SchemaSpec::Custom(_) => "custom",
            SchemaSpec::Extensions { .. } => "extensions",
        }
    }
}

impl CustomSchema {
    /// The tables this schema defines, or every reason it can't be provisioned.
    pub(super) fn resolve_tables(&self) -> Result<Vec<TableDef>, Vec<Violation>> {
        let mut v = Violations::default();
        if let Err(e) = check_schema_name(&self.name) {
            v.push("schema.name", e);
        }
        if let Err(e) = check_version(&self.version) {
            v.push("schema.version", e);
        }
        if self.nodes.is_empty() {
            v.push("schema.nodes", "at least one node type is required");
        }
        if self.nodes.len() > MAX_NODES {
            v.push(
                "schema.nodes",
                format!(
                    "has {} node types; at most {MAX_NODES} are allowed",
                    self.nodes.len()
                ),
            );
        }
        if self.relationships.len() > MAX_RELATIONSHIPS {
            v.push(
                "schema.relationships",
                format!(
                    "has {} relationship types; at most {MAX_RELATIONSHIPS} are allowed",
                    self.relationships.len()
                ),
            );
        }

        let mut table_names = TableNames::default();
        let mut tables = Vec::with_capacity(self.nodes.len() + self.relationships.len());
        for (i, node) in self.nodes.iter().enumerate() {
            let path = format!("schema.nodes[{i}]");
            table_names.claim(&node.name, &path, &mut v);
            let mut columns = columns(&node.properties, &path, &[], &mut v);
            let key_field = format!("{path}.primary_key");
            match node
                .properties
                .iter()
                .position(|p| p.name == node.primary_key)
            {
                Some(k) if node.properties[k].ty.can_be_key() => columns[k].2 = true,
                Some(k) => v.push(
                    key_field,
                    format!(
                        "{} is a {} property; a primary key must be one of string, int64, bool, date, timestamp",
                        shown(&node.primary_key),
                        node.properties[k].ty
                    ),
                ),
                None if node.primary_key.is_empty() => v.push(
                    key_field,
                    "must name one of this node type's properties",
                ),
                None => v.push(
                    key_field,
                    format!(
                        "{} is not one of this node type's properties",
                        shown(&node.primary_key)
                    ),
                ),
            }
            tables.push(TableDef {
                name: node.name.clone(),
                columns,
                primary_key: vec![node.primary_key.clone()],
                foreign_keys: Vec::new(),
            });
        }

        for (i, rel) in self.relationships.iter().enumerate() {
            let path = format!("schema.relationships[{i}]");
            table_names.claim(&rel.name, &path, &mut v);
            let ends = [
                self.endpoint(&rel.from, "from", &path, &mut v),
                self.endpoint(&rel.to, "to", &path, &mut v),
            ];
            let mut table = TableDef {
                name: rel.name.clone(),
                columns: Vec::new(),
                primary_key: Vec::new(),
                foreign_keys: Vec::new(),
            };
            for end in ends.into_iter().flatten() {
                table.columns.push((end.column.clone(), end.ty, true));
                table.primary_key.push(end.column.clone());
                table.foreign_keys.push((end.column, end.node, end.key));
            }
            let generated: Vec<String> = table.primary_key.clone();
            table
                .columns
                .extend(columns(&rel.properties, &path, &generated, &mut v));
            tables.push(table);
        }
        v.finish(tables)
    }

    /// The column a relationship table gets for one end: `from_<pk>` / `to_<pk>`, typed like
    /// the referenced primary key.
    fn endpoint(
        &self,
        node_name: &str,
        end: &str,
        path: &str,
        v: &mut Violations,
    ) -> Option<Endpoint> {
        let field = format!("{path}.{end}");
        let Some(node) = self.nodes.iter().find(|n| n.name == node_name) else {
            let what = if node_name.is_empty() {
                "must name one of the schema's node types".to_string()
            } else {
                format!("{} is not one of the schema's node types", shown(node_name))
            };
            v.push(field, what);
            return None;
        };
        // A missing key is reported on the node itself.
        let key = node
            .properties
            .iter()
            .find(|p| p.name == node.primary_key)?;
        let column = format!("{end}_{}", key.name);
        if let Err(e) = ident::check(&column) {
            v.push(
                field,
                format!(
                    "the generated column {} {e}; shorten the primary key of \"{}\"",
                    shown(&column),
                    node.name
                ),
            );
            return None;
        }
        Some(Endpoint {
            column,
            ty: key.ty,
            node: node.name.clone(),
            key: key.name.clone(),
        })
    }
}

struct Endpoint {
    column: String,
    ty: PropertyType,
    node: String,
    key: String,
}

/// Property columns; each property's name checked and unique (ignoring case) within its
/// type and against the `generated` columns. One column per property, in order.
fn columns(
    properties: &[Property],
    path: &str,
    generated: &[String],
    v: &mut Violations,
) -> Vec<(String, PropertyType, bool)> {
    if properties.len() > MAX_PROPERTIES {
        v.push(
            format!("{path}.properties"),
            format!(
                "has {} properties; at most {MAX_PROPERTIES} are allowed",
                properties.len()
            ),
        );
    }
    let mut seen: HashMap<String, String> = generated
        .iter()
        .map(|c| {
            (
                c.to_ascii_lowercase(),
                format!("the generated column \"{c}\""),
            )
        })
        .collect();
    for (j, p) in properties.iter().enumerate() {
        let field = format!("{path}.properties[{j}].name");
        if let Err(e) = ident::check(&p.name) {
            v.push(field, e);
            continue;
        }
        match seen.entry(p.name.to_ascii_lowercase()) {
            Entry::Occupied(first) => v.push(
                field,
                format!(
                    "\"{}\" clashes with {} (names are compared ignoring case)",
                    p.name,
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(format!("{path}.properties[{j}]"));
            }
        }
    }
    properties
        .iter()
        .map(|p| (p.name.clone(), p.ty, p.required))
        .collect()
}

/// Node and relationship types become tables in one namespace, where SQLite ignores case.
#[derive(Default)]
struct TableNames(HashMap<String, String>);

impl TableNames {
    fn claim(&mut self, name: &str, path: &str, v: &mut Violations) {
        let field = format!("{path}.name");
        if let Err(e) = ident::check_table(name) {
            v.push(field, e);
            return;
        }
        match self.0.entry(name.to_ascii_lowercase()) {
            Entry::Occupied(first) => v.push(
                field,
                format!(
                    "\"{name}\" clashes with {}: node and relationship types share one table namespace, compared ignoring case",
                    first.get()
                ),
            ),
            Entry::Vacant(slot) => {
                slot.insert(path.to_string());
            }
        }
    }
}

fn check_schema_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let len = name.chars().count();
    if len > MAX_SCHEMA_NAME_CHARS {
        return Err(format!(
            "is {len} characters long; at most {MAX_SCHEMA_NAME_CHARS} are allowed"
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!(
            "must not contain control characters; found {}",
            ident::describe_char(c)
        ));
    }
    if name.trim() != name {
        return Err("must not start or end with whitespace".into());
    }
    Ok(())
}

/// `^[0-9]+(\.[0-9]+){0,2}$`, bounded in length.
fn check_version(version: &str) -> Result<(), String> {
    const SHAPE: &str = "must look like 1, 1.2 or 1.2.3 (up to three dot-separated numbers)";
    if version.is_empty() {
        return Err(format!("must not be empty; it {SHAPE}"));
    }
    if version.len() > MAX_VERSION_CHARS {
        return Err(format!(
            "is longer than {MAX_VERSION_CHARS} characters; it {SHAPE}"
        ));
    }
    let parts: Vec<&str> = version.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if parts.len() > 3 || !parts.iter().all(numeric) {
        return Err(format!("{} {SHAPE}", shown(version)));
    }
    Ok(())
}

/// A client's value quoted for a message: escaped, and cut so that a 10,000-character
/// name does not come back in full.
pub(super) fn shown(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    let head: String = value.chars().take(MAX_CHARS).collect();
    let more = if head.len() < value.len() { "…" } else { "" };
    format!("\"{}{more}\"", head.escape_debug())
}

/// Collects violations; `finish` hands them back capped at `MAX_VIOLATIONS`.
#[derive(Default)]
pub(super) struct Violations(Vec<Violation>);

impl Violations {
    pub(super) fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation::new(field, description));
    }

    pub(super) fn finish<T>(self, value: T) -> Result<T, Vec<Violation>> {
        let mut all = self.0;
        if all.is_empty() {
            return Ok(value);
        }
        if all.len() > MAX_VIOLATIONS {
            let hidden = all.len() - (MAX_VIOLATIONS - 1);
            all.truncate(MAX_VIOLATIONS - 1);
            all.push(Violation::new(
                "schema",
                format!("{hidden} more violations are not shown; fix these first"),
            ));
        }
        Err(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(name: &str, ty: PropertyType) -> Property {
        Property {
            name: name.into(),
            ty,
            required: false,
        }
    }

    fn person() -> NodeType {
        NodeType {
            name: "Person".into(),
            primary_key: "id".into(),
            properties: vec![
                prop("id", PropertyType::String),
                prop("name", PropertyType::String),
            ],
        }
    }

    fn custom(nodes: Vec<NodeType>, relationships: Vec<RelationshipType>) -> SchemaSpec {
        SchemaSpec::Custom(CustomSchema {
            name: "people".into(),
            version: "1.0".into(),
            nodes,
            relationships,
        })
    }

    fn fields(spec: &SchemaSpec) -> Vec<String> {
        spec.validate()
            .expect_err("must be refused")
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn property_type_names_match_serde() {
        for ty in PropertyType::ALL {
            let json = serde_json::to_string(&ty).expect("serializes");
            assert_eq!(json, format!("\"{}\"", ty.as_str()));
            assert_eq!(PropertyType::parse(ty.as_str()), Some(ty));
        }
        assert_eq!(PropertyType::parse("String"), None);
        assert_eq!(PropertyType::parse("varchar"), None);
    }

    #[test]
    fn resolves_nodes_then_relationships_with_key_columns() {
        let follows = RelationshipType {
            name: "FOLLOWS".into(),
            from: "Person".into(),
            to: "Person".into(),
            properties: vec![prop("since", PropertyType::Date)],
        };
        let valid = custom(vec![person()], vec![follows])
            .validate()
            .expect("valid");
        assert_eq!(valid.schema_type(), "custom");
        assert_eq!((valid.name(), valid.version()), ("people", "1.0"));
        let tables = valid.tables();
        assert_eq!(tables.len(), 2);
        assert_eq!(
            tables[0].columns,
            vec![
                ("id".into(), PropertyType::String, true),
                ("name".into(), PropertyType::String, false),
            ]
        );
        assert_eq!(
            tables[1],
            TableDef {
                name: "FOLLOWS".into(),
                columns: vec![
                    ("from_id".into(), PropertyType::String, true),
                    ("to_id".into(), PropertyType::String, true),
                    ("since".into(), PropertyType::Date, false),
                ],
                primary_key: vec!["from_id".into(), "to_id".into()],
                foreign_keys: vec![
                    ("from_id".into(), "Person".into(), "id".into()),
                    ("to_id".into(), "Person".into(), "id".into()),
                ],
            }
        );
        let back: SchemaSpec = serde_json::from_str(&valid.spec_json()).expect("spec json");
        assert_eq!(back.validate().expect("still valid"), valid);
    }

    #[test]
    fn reports_every_violation_at_once() {
        let mut bad = person();
        bad.name = "select".into();
        bad.primary_key = "nope".into();
        bad.properties.push(prop("NAME", PropertyType::Int64));
        let rel = RelationshipType {
            name: "person".into(),
            from: "Ghost".into(),
            to: "Person".into(),
            properties: vec![],
        };
        let spec = custom(vec![person(), bad], vec![rel]);
        assert_eq!(
            fields(&spec),
            [
                "schema.nodes[1].name",
                "schema.nodes[1].properties[2].name",
                "schema.nodes[1].primary_key",
                "schema.relationships[0].name",
                "schema.relationships[0].from",
            ]
        );
    }

    #[test]
    fn key_columns_must_stay_identifiers() {
        let mut node = person();
        let long_key = format!("k{}", "x".repeat(60));
        node.primary_key = long_key.clone();
        node.properties.push(prop(&long_key, PropertyType::Int64));
        let rel = RelationshipType {
            name: "KNOWS".into(),
            from: "Person".into(),
            to: "Person".into(),
            properties: vec![prop("TO_id", PropertyType::Bool)],
        };
        let errors = custom(vec![node], vec![rel])
            .validate()
            .expect_err("refused");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.description.contains("generated column")));
        assert_eq!(errors[0].field, "schema.relationships[0].from");
        assert_eq!(errors[1].field, "schema.relationships[0].to");
    }

    #[test]
    fn relationship_properties_cannot_shadow_generated_columns() {
        let rel = RelationshipType {
            name: "KNOWS".into(),
            from: "Person".into(),
            to: "Person".into(),
            properties: vec![prop("TO_ID", PropertyType::Bool)],
        };
        let errors = custom(vec![person()], vec![rel])
            .validate()
            .expect_err("refused");
        assert_eq!(
            errors[0].field,
            "schema.relationships[0].properties[0].name"
        );
        assert!(errors[0].description.contains("generated column \"to_id\""));
    }

    #[test]
    fn float_and_json_keys_are_refused() {
        for ty in [PropertyType::Float64, PropertyType::Json] {
            let mut node = person();
            node.properties[0].ty = ty;
            assert_eq!(
                fields(&custom(vec![node], vec![])),
                ["schema.nodes[0].primary_key"]
            );
        }
    }

    #[test]
    fn limits_are_enforced_and_the_list_is_capped() {
        let many: Vec<NodeType> = (0..=MAX_NODES)
            .map(|i| NodeType {
                name: format!("select{i}"),
                ..person()
            })
            .collect();
        assert_eq!(fields(&custom(many, vec![])), ["schema.nodes"]);
        let hostile: Vec<NodeType> = (0..100)
            .map(|_| NodeType {
                name: "select".into(),
                ..person()
            })
            .collect();
        let errors = custom(hostile, vec![]).validate().expect_err("refused");
        assert_eq!(errors.len(), MAX_VIOLATIONS);
        assert!(errors[MAX_VIOLATIONS - 1]
            .description
            .contains("more violations"));
    }

    #[test]
    fn shown_escapes_and_truncates() {
        assert_eq!(shown("a\"b"), "\"a\\\"b\"");
        assert_eq!(shown("Per\u{200d}son"), "\"Per\\u{200d}son\"");
        let long = shown(&"x".repeat(10_000));
        assert!(long.chars().count() < 50, "{long}");
    }

    #[test]
    fn versions() {
        for ok in ["1", "1.2", "1.2.3", "10.0.20"] {
            assert_eq!(check_version(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "v1",
            "1.",
            ".1",
            "1.2.3.4",
            "1..2",
            "1.a",
            "１",
            &"1".repeat(33),
        ] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }
}
