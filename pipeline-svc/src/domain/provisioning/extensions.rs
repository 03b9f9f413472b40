//! Built-in extensions: ready-made node and relationship types a graph can be provisioned
//! with instead of a custom schema. Several can be combined; they then share one table
//! namespace, so two that define the same table cannot be.
//!
//! Names avoid reserved words like any client's must: hence `PurchaseOrder` (ORDER), and
//! `INCLUDES` and `occurrences` (SQL:2016 reserves CONTAINS and COUNT).

use std::collections::{hash_map::Entry, HashMap};

use super::spec::{
    shown, CustomSchema, NodeType, Property, PropertyType, RelationshipType, TableDef, Violation,
    Violations,
};

/// Bumped whenever a built-in extension's tables change; it is the persisted version of an
/// extensions schema.
pub const CATALOG_VERSION: &str = "1.0.0";

pub fn catalog() -> Vec<(&'static str, CustomSchema)> {
    use PropertyType::*;
    vec![
        (
            "social",
            schema(
                "social",
                vec![
                    node(
                        "Person",
                        "id",
                        &[
                            ("id", String, true),
                            ("name", String, true),
                            ("email", String, false),
                            ("born_on", Date, false),
                            ("created_at", Timestamp, false),
                        ],
                    ),
                    node(
                        "Organization",
                        "id",
                        &[
                            ("id", String, true),
                            ("name", String, true),
                            ("website", String, false),
                            ("founded_on", Date, false),
                        ],
                    ),
                ],
                vec![
                    rel(
                        "FOLLOWS",
                        "Person",
                        "Person",
                        &[("since", Timestamp, false)],
                    ),
                    rel(
                        "WORKS_AT",
                        "Person",
                        "Organization",
                        &[
                            ("title", String, false),
                            ("started_on", Date, false),
                            ("ended_on", Date, false),
                        ],
                    ),
                ],
            ),
        ),
        (
            "commerce",
            schema(
                "commerce",
                vec![
                    node(
                        "Customer",
                        "id",
                        &[
                            ("id", String, true),
                            ("name", String, true),
                            ("email", String, false),
                            ("joined_at", Timestamp, false),
                        ],
                    ),
                    node(
                        "Product",
                        "sku",
                        &[
                            ("sku", String, true),
                            ("title", String, true),
                            ("price", Float64, true),
                            ("active", Bool, true),
                            ("attributes", Json, false),
                        ],
                    ),
                    node(
                        "PurchaseOrder",
                        "id",
                        &[
                            ("id", String, true),
                            ("placed_at", Timestamp, true),
                            ("status", String, true),
                            ("total", Float64, false),
                        ],
                    ),
                ],
                vec![
                    rel(
                        "PLACED",
                        "Customer",
                        "PurchaseOrder",
                        &[("channel", String, false)],
                    ),
                    rel(
                        "INCLUDES",
                        "PurchaseOrder",
                        "Product",
                        &[("quantity", Int64, true), ("unit_price", Float64, true)],
                    ),
                ],
            ),
        ),
        (
            "knowledge",
            schema(
                "knowledge",
                vec![
                    node(
                        "Document",
                        "id",
                        &[
                            ("id", String, true),
                            ("title", String, true),
                            ("uri", String, false),
                            ("published_at", Timestamp, false),
                            ("metadata", Json, false),
                        ],
                    ),
                    node(
                        "Entity",
                        "id",
                        &[
                            ("id", String, true),
                            ("label", String, true),
                            ("kind", String, false),
                        ],
                    ),
                ],
                vec![
                    rel(
                        "MENTIONS",
                        "Document",
                        "Entity",
                        &[("occurrences", Int64, true), ("confidence", Float64, false)],
                    ),
                    rel(
                        "RELATED_TO",
                        "Entity",
                        "Entity",
                        &[("relation", String, true), ("weight", Float64, false)],
                    ),
                ],
            ),
        ),
    ]
}

/// The named extensions merged into one schema, with its tables.
pub(super) fn resolve(names: &[String]) -> Result<(CustomSchema, Vec<TableDef>), Vec<Violation>> {
    resolve_in(names, &catalog())
}

fn resolve_in(
    names: &[String],
    catalog: &[(&'static str, CustomSchema)],
) -> Result<(CustomSchema, Vec<TableDef>), Vec<Violation>> {
    let mut v = Violations::default();
    if names.is_empty() {
        v.push("schema.extensions", "at least one extension is required");
    }
    let mut chosen: Vec<(&str, &CustomSchema)> = Vec::new();
    let mut listed: HashMap<&str, usize> = HashMap::new();
    let mut tables: HashMap<String, (usize, &str)> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let field = format!("schema.extensions[{i}]");
        let Some((ext_name, ext)) = catalog.iter().find(|(n, _)| n == name) else {
            let available: Vec<&str> = catalog.iter().map(|(n, _)| *n).collect();
            v.push(
                field,
                format!(
                    "{} is not a built-in extension; available: {}",
                    shown(name),
                    available.join(", ")
                ),
            );
            continue;
        };
        match listed.entry(ext_name) {
            Entry::Occupied(first) => {
                v.push(
                    field,
                    format!(
                        "\"{ext_name}\" is already listed at schema.extensions[{}]",
                        first.get()
                    ),
                );
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(i);
            }
        }
        let table_names = ext
            .nodes
            .iter()
            .map(|n| &n.name)
            .chain(ext.relationships.iter().map(|r| &r.name));
        for table in table_names {
            match tables.entry(table.to_ascii_lowercase()) {
                Entry::Occupied(other) => {
                    let (j, other_name) = *other.get();
                    v.push(
                        field.clone(),
                        format!(
                            "\"{ext_name}\" defines the table \"{table}\", and so does \"{other_name}\" (schema.extensions[{j}]); they cannot be combined"
                        ),
                    );
                }
                Entry::Vacant(slot) => {
                    slot.insert((i, ext_name));
                }
            }
        }
        chosen.push((ext_name, ext));
    }
    v.finish(())?;

    let merged = CustomSchema {
        name: chosen
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join("+"),
        version: CATALOG_VERSION.to_string(),
        nodes: chosen.iter().flat_map(|(_, e)| e.nodes.clone()).collect(),
        relationships: chosen
            .iter()
            .flat_map(|(_, e)| e.relationships.clone())
            .collect(),
    };
    // The catalog is ours and unit-tested to be valid in every combination; should that ever
    // break, the client still gets a violation rather than a panic.
    let tables = merged.resolve_tables().map_err(|errors| {
        errors
            .into_iter()
            .map(|e| {
                Violation::new(
                    "schema.extensions",
                    format!("the built-in extensions are inconsistent ({e}); please report this"),
                )
            })
            .collect::<Vec<_>>()
    })?;
    Ok((merged, tables))
}

fn schema(name: &str, nodes: Vec<NodeType>, relationships: Vec<RelationshipType>) -> CustomSchema {
    CustomSchema {
        name: name.to_string(),
        version: CATALOG_VERSION.to_string(),
        nodes,
        relationships,
    }
}

fn node(name: &str, primary_key: &str, properties: &[(&str, PropertyType, bool)]) -> NodeType {
    NodeType {
        name: name.to_string(),
        primary_key: primary_key.to_string(),
        properties: props(properties),
    }
}

fn rel(
    name: &str,
    from: &str,
    to: &str,
    properties: &[(&str, PropertyType, bool)],
) -> RelationshipType {
    RelationshipType {
        name: name.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        properties: props(properties),
    }
}

fn props(properties: &[(&str, PropertyType, bool)]) -> Vec<Property> {
    properties
        .iter()
        .map(|&(name, ty, required)| Property {
            name: name.to_string(),
            ty,
            required,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::SchemaSpec;
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_extension_is_a_valid_custom_schema_with_real_tables() {
        for (name, ext) in catalog() {
            assert_eq!(ext.name, name);
            let valid = SchemaSpec::Custom(ext.clone())
                .validate()
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(
                ext.nodes.len() >= 2 && !ext.relationships.is_empty(),
                "{name}"
            );
            assert_eq!(
                valid.tables().len(),
                ext.nodes.len() + ext.relationships.len()
            );
        }
    }

    #[test]
    fn every_combination_resolves() {
        let all: Vec<&str> = catalog().iter().map(|(n, _)| *n).collect();
        for mask in 1u32..(1 << all.len()) {
            let chosen: Vec<&str> = (0..all.len())
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| all[i])
                .collect();
            let spec = SchemaSpec::Extensions {
                extensions: names(&chosen),
            };
            let valid = spec
                .validate()
                .unwrap_or_else(|e| panic!("{chosen:?}: {e:?}"));
            assert_eq!(valid.schema_type(), "extensions");
            assert_eq!(valid.name(), chosen.join("+"));
            assert_eq!(valid.version(), CATALOG_VERSION);
        }
    }

    #[test]
    fn unknown_duplicate_and_empty_lists_are_refused() {
        let errors = resolve(&names(&["social", "sociall", "social"])).expect_err("refused");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["schema.extensions[1]", "schema.extensions[2]"]);
        assert!(errors[0]
            .description
            .contains("available: social, commerce, knowledge"));
        assert!(errors[1]
            .description
            .contains("already listed at schema.extensions[0]"));
        let errors = resolve(&[]).expect_err("refused");
        assert_eq!(errors[0].field, "schema.extensions");
    }

    #[test]
    fn clashing_tables_are_refused() {
        let mut catalog = catalog();
        let mut crm = schema(
            "crm",
            vec![node("PERSON", "id", &[("id", PropertyType::String, true)])],
            vec![],
        );
        crm.nodes.push(node(
            "Prospect",
            "id",
            &[("id", PropertyType::String, true)],
        ));
        catalog.push(("crm", crm));
        let errors = resolve_in(&names(&["social", "crm"]), &catalog).expect_err("refused");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "schema.extensions[1]");
        assert!(errors[0].description.contains(
            "\"crm\" defines the table \"PERSON\", and so does \"social\" (schema.extensions[0])"
        ));
        assert!(resolve_in(&names(&["crm", "commerce"]), &catalog).is_ok());
    }

    #[test]
    fn a_broken_catalog_entry_is_a_violation_not_a_panic() {
        let broken = schema(
            "broken",
            vec![node("Lead", "id", &[("id", PropertyType::String, true)])],
            vec![],
        );
        let errors = resolve_in(&names(&["broken"]), &[("broken", broken)]).expect_err("refused");
        assert_eq!(errors[0].field, "schema.extensions");
        assert!(errors[0]
            .description
            .contains("inconsistent (schema.nodes[0].name: \"Lead\" is a reserved word"));
    }
}
