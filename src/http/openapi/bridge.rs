//! schemars' JSON Schemas (the job payloads `GET /jobs` serves) carried into
//! utoipa's schema types, so the document and `GET /jobs` share one source.
//!
//! utoipa's [`Schema`] deserializes as an untagged enum whose `Object` takes
//! any map, silently dropping `oneOf`, `const` or a `null` default; so each
//! keyword is carried over here, and one this bridge does not know is an
//! error naming it rather than a schema that quietly says less. A
//! schema's `$defs` become components; `$ref`s are rewritten to them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use utoipa::openapi::{
    Components, Ref, RefOr,
    schema::{
        AdditionalProperties, AllOf, AnyOf, Array, ArrayItems, Object, OneOf, Schema, SchemaType,
    },
};

/// A schema the bridge cannot carry.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A keyword utoipa's types cannot hold.
    #[error(
        "the schema of job `{job}` uses `{keyword}` at `{at}`, which the OpenAPI bridge does not carry: extend src/http/openapi/bridge.rs or change the type"
    )]
    Unsupported {
        /// The job.
        job: String,
        /// The keyword.
        keyword: String,
        /// Where, as a JSON pointer into the job's schema.
        at: String,
    },
    /// A keyword with a value of the wrong kind.
    #[error("the schema of job `{job}` has a bad `{keyword}` at `{at}`: {message}")]
    BadValue {
        /// The job.
        job: String,
        /// The keyword.
        keyword: String,
        /// Where.
        at: String,
        /// What is wrong.
        message: String,
    },
}

/// Keywords that annotate and go on whatever node carries them.
const ANNOTATIONS: [&str; 5] = ["title", "description", "default", "examples", "deprecated"];

/// Keywords of an `Object` node that serde carries into utoipa faithfully.
const OBJECT_SCALARS: [&str; 21] = [
    "type",
    "title",
    "format",
    "description",
    "enum",
    "required",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
    "multipleOf",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxProperties",
    "minProperties",
    "contentEncoding",
];

/// Keywords of an `Array` node that serde carries faithfully.
const ARRAY_SCALARS: [&str; 8] = [
    "type",
    "title",
    "description",
    "examples",
    "deprecated",
    "maxItems",
    "minItems",
    "uniqueItems",
];

/// Keywords with no meaning in a component (the root's dialect and its
/// definitions, which become components of their own).
const DROPPED: [&str; 3] = ["$schema", "$defs", "definitions"];

/// Converts one job's schemas.
struct Bridge<'a> {
    job: &'a str,
    /// `$defs` name → component name.
    names: BTreeMap<String, String>,
    /// The root's component name (for `#` references).
    root: String,
}

impl Bridge<'_> {
    fn unsupported(&self, keyword: &str, at: &str) -> BridgeError {
        BridgeError::Unsupported {
            job: self.job.to_owned(),
            keyword: keyword.to_owned(),
            at: at.to_owned(),
        }
    }

    fn bad(&self, keyword: &str, at: &str, message: impl std::fmt::Display) -> BridgeError {
        BridgeError::BadValue {
            job: self.job.to_owned(),
            keyword: keyword.to_owned(),
            at: at.to_owned(),
            message: message.to_string(),
        }
    }

    /// The component a `$ref` of the job's schema points at.
    fn reference(&self, target: &str, at: &str) -> Result<String, BridgeError> {
        if target == "#" {
            return Ok(self.root.clone());
        }
        let name = target
            .strip_prefix("#/$defs/")
            .or_else(|| target.strip_prefix("#/definitions/"))
            .and_then(|name| self.names.get(name))
            .ok_or_else(|| self.bad("$ref", at, format!("`{target}` is not one of its $defs")))?;
        Ok(name.clone())
    }

    fn schema(&self, value: &Value, at: &str) -> Result<RefOr<Schema>, BridgeError> {
        match value {
            Value::Bool(true) => Ok(RefOr::T(Schema::Object(any_value()))),
            Value::Object(map) => self.map(map, at),
            _ => Err(self.bad("schema", at, "a schema is an object or `true`")),
        }
    }

    fn map(&self, map: &Map<String, Value>, at: &str) -> Result<RefOr<Schema>, BridgeError> {
        let mut map = map.clone();
        for key in DROPPED {
            map.remove(key);
        }
        if let Some(target) = map.remove("$ref") {
            let target = target
                .as_str()
                .ok_or_else(|| self.bad("$ref", at, "not a string"))?;
            let reference = Ref::from_schema_name(self.reference(target, at)?);
            return self.reference_with(reference, map, at);
        }
        let composite = ["oneOf", "anyOf", "allOf"]
            .into_iter()
            .filter(|k| map.contains_key(*k))
            .collect::<Vec<_>>();
        if !composite.is_empty() {
            return self.composite(&composite, map, at);
        }
        let is_array = match map.get("type") {
            Some(Value::String(t)) => t == "array",
            Some(Value::Array(types)) => types.iter().any(|t| t == "array"),
            _ => false,
        };
        if is_array {
            self.array(map, at)
        } else {
            self.object(map, at)
        }
    }

    /// A `$ref` with siblings: a description rides on the reference; any
    /// other keyword makes it `allOf: [ref]` with them.
    fn reference_with(
        &self,
        mut reference: Ref,
        mut rest: Map<String, Value>,
        at: &str,
    ) -> Result<RefOr<Schema>, BridgeError> {
        if rest.keys().all(|k| k == "description") {
            if let Some(d) = rest.remove("description") {
                reference.description = self.text(&d, "description", at)?;
            }
            return Ok(RefOr::Ref(reference));
        }
        let mut all = AllOf::new();
        all.items.push(RefOr::Ref(reference));
        self.annotate_all(&mut all, &mut rest, at)?;
        self.expect_empty(&rest, at)?;
        Ok(RefOr::T(Schema::AllOf(all)))
    }

    fn text(&self, value: &Value, keyword: &str, at: &str) -> Result<String, BridgeError> {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.bad(keyword, at, "not a string"))
    }

    fn items(
        &self,
        value: &Value,
        keyword: &str,
        at: &str,
    ) -> Result<Vec<RefOr<Schema>>, BridgeError> {
        let items = value
            .as_array()
            .ok_or_else(|| self.bad(keyword, at, "not an array"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| self.schema(item, &format!("{at}/{keyword}/{i}")))
            .collect()
    }

    /// `oneOf` / `anyOf` / `allOf`. With sibling keywords other than
    /// annotations (an object's `properties` beside its variants), the node
    /// is the `allOf` of those keywords and each composite.
    fn composite(
        &self,
        keys: &[&str],
        mut map: Map<String, Value>,
        at: &str,
    ) -> Result<RefOr<Schema>, BridgeError> {
        let mut parts: Vec<(String, Value)> = keys
            .iter()
            .filter_map(|k| map.remove(*k).map(|v| ((*k).to_owned(), v)))
            .collect();
        let plain = map
            .keys()
            .all(|k| ANNOTATIONS.contains(&k.as_str()) || k == "type");
        if parts.len() == 1 && plain {
            let (key, items) = parts.remove(0);
            let items = self.items(&items, &key, at)?;
            let schema_type = match map.remove("type") {
                Some(t) => self.schema_type(&t, at)?,
                None => SchemaType::AnyValue,
            };
            let schema = match key.as_str() {
                "oneOf" => {
                    let mut one = OneOf::new();
                    one.items = items;
                    one.schema_type = schema_type;
                    self.annotate(
                        &mut map,
                        at,
                        &mut one.title,
                        &mut one.description,
                        &mut one.default,
                        &mut one.examples,
                    )?;
                    Schema::OneOf(one)
                }
                "anyOf" => {
                    let mut any = AnyOf::new();
                    any.items = items;
                    any.schema_type = schema_type;
                    let mut title = None;
                    self.annotate(
                        &mut map,
                        at,
                        &mut title,
                        &mut any.description,
                        &mut any.default,
                        &mut any.examples,
                    )?;
                    if title.is_some() {
                        return Err(self.unsupported("title (beside anyOf)", at));
                    }
                    Schema::AnyOf(any)
                }
                _ => {
                    let mut all = AllOf::new();
                    all.items = items;
                    all.schema_type = schema_type;
                    self.annotate_all(&mut all, &mut map, at)?;
                    Schema::AllOf(all)
                }
            };
            self.expect_empty(&map, at)?;
            return Ok(RefOr::T(schema));
        }
        let mut all = AllOf::new();
        self.annotate_all(&mut all, &mut map, at)?;
        if !map.is_empty() {
            all.items.push(self.map(&map, at)?);
        }
        for (key, items) in parts {
            let mut one = Map::new();
            one.insert(key, items);
            all.items.push(self.map(&one, at)?);
        }
        Ok(RefOr::T(Schema::AllOf(all)))
    }

    fn annotate_all(
        &self,
        all: &mut AllOf,
        map: &mut Map<String, Value>,
        at: &str,
    ) -> Result<(), BridgeError> {
        self.annotate(
            map,
            at,
            &mut all.title,
            &mut all.description,
            &mut all.default,
            &mut all.examples,
        )
    }

    /// Moves the annotations out of `map` onto a composite's fields.
    fn annotate(
        &self,
        map: &mut Map<String, Value>,
        at: &str,
        title: &mut Option<String>,
        description: &mut Option<String>,
        default: &mut Option<Value>,
        examples: &mut Vec<Value>,
    ) -> Result<(), BridgeError> {
        if let Some(t) = map.remove("title") {
            *title = Some(self.text(&t, "title", at)?);
        }
        if let Some(d) = map.remove("description") {
            *description = Some(self.text(&d, "description", at)?);
        }
        if let Some(d) = map.remove("default") {
            *default = Some(d);
        }
        if let Some(e) = map.remove("examples") {
            *examples = e
                .as_array()
                .cloned()
                .ok_or_else(|| self.bad("examples", at, "not an array"))?;
        }
        if map.contains_key("deprecated") {
            return Err(self.unsupported("deprecated (beside oneOf, anyOf or allOf)", at));
        }
        Ok(())
    }

    fn expect_empty(&self, map: &Map<String, Value>, at: &str) -> Result<(), BridgeError> {
        match map.keys().next() {
            Some(key) => Err(self.unsupported(key, at)),
            None => Ok(()),
        }
    }

    fn schema_type(&self, value: &Value, at: &str) -> Result<SchemaType, BridgeError> {
        serde_json::from_value(value.clone()).map_err(|e| self.bad("type", at, e))
    }

    /// Takes the keys serde carries faithfully out of `map`, with `type`
    /// set (utoipa requires it; a node without one is fixed up by the
    /// caller).
    fn scalars(&self, map: &mut Map<String, Value>, keys: &[&str]) -> Map<String, Value> {
        let mut scalars = Map::new();
        for key in keys {
            if let Some(v) = map.remove(*key) {
                scalars.insert((*key).to_owned(), v);
            }
        }
        scalars
    }

    fn array(&self, mut map: Map<String, Value>, at: &str) -> Result<RefOr<Schema>, BridgeError> {
        let items = match map.remove("items") {
            Some(Value::Bool(false)) => ArrayItems::False,
            Some(items) => {
                ArrayItems::RefOrSchema(Box::new(self.schema(&items, &format!("{at}/items"))?))
            }
            None => ArrayItems::RefOrSchema(Box::new(RefOr::T(Schema::Object(any_value())))),
        };
        let default = map.remove("default");
        let mut scalars = self.scalars(&mut map, &ARRAY_SCALARS);
        // A placeholder serde accepts; the real items are set below.
        scalars.insert("items".to_owned(), serde_json::json!({ "type": "object" }));
        let mut array: Array =
            serde_json::from_value(Value::Object(scalars)).map_err(|e| self.bad("array", at, e))?;
        array.items = items;
        array.default = default;
        self.expect_empty(&map, at)?;
        Ok(RefOr::T(Schema::Array(array)))
    }

    fn object(&self, mut map: Map<String, Value>, at: &str) -> Result<RefOr<Schema>, BridgeError> {
        let properties = match map.remove("properties") {
            Some(Value::Object(properties)) => properties
                .iter()
                .map(|(name, schema)| {
                    let at = format!("{at}/properties/{}", pointer_escape(name));
                    Ok((name.clone(), self.schema(schema, &at)?))
                })
                .collect::<Result<Vec<_>, BridgeError>>()?,
            Some(_) => return Err(self.bad("properties", at, "not an object")),
            None => Vec::new(),
        };
        let additional = match map.remove("additionalProperties") {
            Some(Value::Bool(b)) => Some(AdditionalProperties::FreeForm(b)),
            Some(schema) => Some(AdditionalProperties::RefOr(
                self.schema(&schema, &format!("{at}/additionalProperties"))?,
            )),
            None => None,
        };
        let property_names = match map.remove("propertyNames") {
            Some(schema) => match self.schema(&schema, &format!("{at}/propertyNames"))? {
                RefOr::T(schema) => Some(schema),
                RefOr::Ref(_) => return Err(self.unsupported("propertyNames ($ref)", at)),
            },
            None => None,
        };
        let default = map.remove("default");
        let constant = map.remove("const");
        let media_type = map.remove("contentMediaType");
        let mut scalars = self.scalars(&mut map, &OBJECT_SCALARS);
        let typed = scalars.contains_key("type");
        if !typed {
            scalars.insert("type".to_owned(), Value::from("object"));
        }
        if let Some(c) = &constant {
            if scalars.contains_key("enum") {
                return Err(self.unsupported("const (beside enum)", at));
            }
            scalars.insert("enum".to_owned(), Value::Array(vec![c.clone()]));
        }
        let mut object: Object = serde_json::from_value(Value::Object(scalars))
            .map_err(|e| self.bad("schema", at, e))?;
        if !typed {
            object.schema_type = SchemaType::AnyValue;
        }
        object.properties.extend(properties);
        object.additional_properties = additional.map(Box::new);
        object.property_names = property_names.map(Box::new);
        object.default = default;
        if let Some(m) = media_type {
            object.content_media_type = self.text(&m, "contentMediaType", at)?;
        }
        self.expect_empty(&map, at)?;
        Ok(RefOr::T(Schema::Object(object)))
    }
}

/// A schema that admits any value (`{}`).
fn any_value() -> Object {
    let mut object = Object::new();
    object.schema_type = SchemaType::AnyValue;
    object
}

/// Escapes a key for a JSON pointer.
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A component name: letters, digits, `.`, `-` and `_` only (the document's
/// rule for component keys).
fn component_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Adds `schema` (a job's payload or output schema, as schemars makes it)
/// and its `$defs` to `components`, and answers the reference to it.
///
/// Components are named as schemars titles them. A name already taken by
/// a different schema (two jobs each with a `Customer`) is prefixed with the
/// job's name (`order.Customer`); an identical one is shared.
pub fn add_schema(
    components: &mut Components,
    job: &str,
    fallback_name: &str,
    schema: &Value,
) -> Result<RefOr<Schema>, BridgeError> {
    let defs: Vec<(String, Value)> = ["$defs", "definitions"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_object))
        .flat_map(|defs| defs.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let root = schema
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or(fallback_name);
    let mut bridge = Bridge {
        job,
        names: defs
            .iter()
            .map(|(k, _)| (k.clone(), component_name(k)))
            .collect(),
        root: component_name(root),
    };
    // Once with the names as titled, to find the clashes; then with the
    // clashing ones prefixed.
    let clashes = |bridge: &Bridge<'_>| -> Result<Vec<String>, BridgeError> {
        let mut clashing = Vec::new();
        for (key, def) in &defs {
            let converted = bridge.schema(def, &format!("/$defs/{}", pointer_escape(key)))?;
            if components
                .schemas
                .get(&bridge.names[key])
                .is_some_and(|existing| *existing != converted)
            {
                clashing.push(key.clone());
            }
        }
        Ok(clashing)
    };
    for key in clashes(&bridge)? {
        let prefixed = component_name(&format!("{job}.{key}"));
        bridge.names.insert(key, prefixed);
    }
    let converted_root = bridge.schema(schema, "")?;
    if components
        .schemas
        .get(&bridge.root)
        .is_some_and(|existing| *existing != converted_root)
    {
        bridge.root = component_name(&format!("{job}.{root}"));
    }
    // Converted again: a self-reference (`#`) names the root's final name.
    let converted_root = bridge.schema(schema, "")?;
    for (key, def) in &defs {
        let converted = bridge.schema(def, &format!("/$defs/{}", pointer_escape(key)))?;
        components
            .schemas
            .insert(bridge.names[key].clone(), converted);
    }
    components
        .schemas
        .insert(bridge.root.clone(), converted_root);
    Ok(RefOr::Ref(Ref::from_schema_name(bridge.root)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The JSON a component serializes to.
    fn component(components: &Components, name: &str) -> Value {
        serde_json::to_value(&components.schemas[name]).unwrap()
    }

    /// Every keyword of every built-in job's payload and output survives the
    /// bridge: the component is the schema itself, less `$schema` and
    /// `$defs`, with `const` as a one-value `enum` and references to
    /// components.
    #[test]
    fn the_builtin_schemas_cross_unchanged() {
        let jobs = crate::jobs::JobRegistry::builtin(&crate::jobs::JobDeps {
            http: reqwest::Client::new(),
            webhook: crate::jobs::webhook::WebhookConfig::new(Vec::<String>::new(), 1024).unwrap(),
        })
        .unwrap();
        for job in jobs.list() {
            let schemas = std::iter::once(&job.payload_schema).chain(job.output_schema.as_ref());
            for schema in schemas {
                let mut components = Components::new();
                let root = add_schema(&mut components, job.name, "Payload", schema).unwrap();
                let RefOr::Ref(root) = root else {
                    panic!("the root is a reference")
                };
                let name = root
                    .ref_location
                    .trim_start_matches("#/components/schemas/");
                let expected = normalized(schema);
                assert_eq!(component(&components, name), expected, "{}", job.name);
                for (key, def) in schema
                    .get("$defs")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    assert_eq!(
                        component(&components, key),
                        normalized(def),
                        "{} {key}",
                        job.name
                    );
                }
            }
        }
    }

    /// What the bridge should make of a schemars schema.
    fn normalized(schema: &Value) -> Value {
        match schema {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map {
                    match k.as_str() {
                        "$schema" | "$defs" => {}
                        "const" => {
                            out.insert("enum".to_owned(), json!([v]));
                        }
                        "$ref" => {
                            let name = v.as_str().unwrap().trim_start_matches("#/$defs/");
                            out.insert(k.clone(), json!(format!("#/components/schemas/{name}")));
                        }
                        "properties" => {
                            let props = v
                                .as_object()
                                .unwrap()
                                .iter()
                                .map(|(name, s)| (name.clone(), normalized(s)))
                                .collect();
                            out.insert(k.clone(), Value::Object(props));
                        }
                        "default" | "enum" | "examples" | "required" | "type" => {
                            out.insert(k.clone(), v.clone());
                        }
                        _ => {
                            out.insert(k.clone(), normalized(v));
                        }
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn clashing_names_are_prefixed_and_identical_ones_shared() {
        let a = json!({"title": "Order", "type": "object", "properties": {"c": {"$ref": "#/$defs/Customer"}},
            "$defs": {"Customer": {"type": "object", "properties": {"email": {"type": "string"}}}}});
        let b = json!({"title": "Order", "type": "object", "properties": {"c": {"$ref": "#/$defs/Customer"}},
            "$defs": {"Customer": {"type": "object", "properties": {"id": {"type": "integer"}}}}});
        let mut components = Components::new();
        add_schema(&mut components, "shop", "P", &a).unwrap();
        let again = add_schema(&mut components, "shop-copy", "P", &a).unwrap();
        assert_eq!(
            serde_json::to_value(&again).unwrap(),
            json!({"$ref": "#/components/schemas/Order"})
        );
        let other = add_schema(&mut components, "crm", "P", &b).unwrap();
        assert_eq!(
            serde_json::to_value(&other).unwrap(),
            json!({"$ref": "#/components/schemas/crm.Order"})
        );
        assert_eq!(
            component(&components, "crm.Order")["properties"]["c"],
            json!({"$ref": "#/components/schemas/crm.Customer"})
        );
        assert_eq!(
            component(&components, "crm.Customer")["properties"]["id"]["type"],
            "integer"
        );
        assert_eq!(
            component(&components, "Customer")["properties"]["email"]["type"],
            "string"
        );
    }

    #[test]
    fn an_unknown_keyword_is_named() {
        let schema = json!({"title": "P", "type": "object", "properties": {"x": {"type": "array", "prefixItems": [{"type": "string"}]}}});
        let Err(err) = add_schema(&mut Components::new(), "tuple", "P", &schema) else {
            panic!("prefixItems is refused")
        };
        assert_eq!(
            err.to_string(),
            "the schema of job `tuple` uses `prefixItems` at `/properties/x`, which the OpenAPI bridge does not carry: extend src/http/openapi/bridge.rs or change the type"
        );
    }

    #[test]
    fn any_value_and_self_references() {
        let schema = json!({"title": "Tree", "type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#"}}, "data": true, "note": {"default": null}}});
        let mut components = Components::new();
        add_schema(&mut components, "tree", "P", &schema).unwrap();
        assert_eq!(
            component(&components, "Tree"),
            json!({"title": "Tree", "type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/components/schemas/Tree"}},
                "data": {}, "note": {"default": null}}})
        );
    }
}
