//! A plugin's options, checked against the JSON Schema it describes them
//! with, while the Envfile's TOML is read: each error carries the position
//! of the key or value at fault, as a built-in backend's do.
//!
//! The keywords understood: `type` (`object`, `string`, `integer`,
//! `number`, `boolean`, `array`, or a list of them), `properties`,
//! `required`, `additionalProperties` (a boolean or a schema), `items`,
//! `enum`, `minimum`, `maximum`, `minLength`, `maxLength`, `minItems`,
//! `maxItems`. Others (`description`, `default`, `$schema`…) are ignored.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Check `table` (a `[machines.X.NAME]` table) against `schema`.
pub fn check<'de, D: Deserializer<'de>>(schema: &Value, table: D) -> Result<(), D::Error> {
    Seed(schema).deserialize(table)
}

/// A schema as a serde seed: deserializing a value checks it.
#[derive(Clone, Copy)]
struct Seed<'a>(&'a Value);

impl Seed<'_> {
    fn types(&self) -> Vec<&str> {
        match self.0.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    fn allows(&self, ty: &str) -> bool {
        let types = self.types();
        types.is_empty() || types.contains(&ty) || (ty == "integer" && types.contains(&"number"))
    }

    fn expected(&self) -> String {
        let types = self.types();
        match types.as_slice() {
            [] => "a value".into(),
            [one] => a(one),
            many => many.iter().map(|t| a(t)).collect::<Vec<_>>().join(" or "),
        }
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.0.get(key).and_then(Value::as_f64)
    }

    fn check_enum<E: de::Error>(&self, v: &Value) -> Result<(), E> {
        match self.0.get("enum").and_then(Value::as_array) {
            Some(allowed) if !allowed.contains(v) => Err(E::custom(format!(
                "{v} is not one of {}",
                allowed
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Ok(()),
        }
    }

    fn check_number<E: de::Error>(&self, n: f64, shown: &dyn fmt::Display) -> Result<(), E> {
        if let Some(min) = self.num("minimum").filter(|m| n < *m) {
            return Err(E::custom(format!("{shown} is less than {min}")));
        }
        if let Some(max) = self.num("maximum").filter(|m| n > *m) {
            return Err(E::custom(format!("{shown} is more than {max}")));
        }
        Ok(())
    }

    fn wrong<E: de::Error>(&self, got: &str) -> E {
        E::custom(format!("expected {}, found {}", self.expected(), a(got)))
    }

    fn int<E: de::Error>(self, v: i128) -> Result<(), E> {
        if !self.allows("integer") {
            return Err(self.wrong("integer"));
        }
        self.check_number(v as f64, &v)?;
        self.check_enum(&serde_json::json!(v as i64))
    }
}

fn a(ty: &str) -> String {
    match ty {
        "object" => "a table".into(),
        "array" => "an array".into(),
        "integer" => "an integer".into(),
        other => format!("a {other}"),
    }
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expected())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if !self.allows("boolean") {
            return Err(self.wrong("boolean"));
        }
        self.check_enum(&Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.int(v.into())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.int(v.into())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !self.types().is_empty() && !self.types().contains(&"number") {
            return Err(self.wrong("number"));
        }
        self.check_number(v, &v)?;
        self.check_enum(&serde_json::json!(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if !self.allows("string") {
            return Err(self.wrong("string"));
        }
        let chars = v.chars().count() as f64;
        if let Some(min) = self.num("minLength").filter(|m| chars < *m) {
            return Err(E::custom(format!("{v:?} is shorter than {min} characters")));
        }
        if let Some(max) = self.num("maxLength").filter(|m| chars > *m) {
            return Err(E::custom(format!("{v:?} is longer than {max} characters")));
        }
        self.check_enum(&Value::String(v.to_owned()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.allows("array") {
            return Err(self.wrong("array"));
        }
        let any = Value::Bool(true);
        let items = self.0.get("items").unwrap_or(&any);
        let mut n = 0usize;
        while seq.next_element_seed(Seed(items))?.is_some() {
            n += 1;
        }
        if let Some(min) = self.num("minItems").filter(|m| (n as f64) < *m) {
            return Err(de::Error::custom(format!(
                "has {n} items, fewer than {min}"
            )));
        }
        if let Some(max) = self.num("maxItems").filter(|m| (n as f64) > *m) {
            return Err(de::Error::custom(format!("has {n} items, more than {max}")));
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        if !self.allows("object") {
            return Err(self.wrong("table"));
        }
        let empty = serde_json::Map::new();
        let props = self
            .0
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let any = Value::Bool(true);
        let extra = self.0.get("additionalProperties").unwrap_or(&any);
        let mut seen = Vec::new();
        while let Some(key) = map.next_key_seed(Key { props, extra })? {
            let schema = props.get(&key).unwrap_or(extra);
            map.next_value_seed(Seed(schema))?;
            seen.push(key);
        }
        let required = self.0.get("required").and_then(Value::as_array);
        for r in required.into_iter().flatten().filter_map(Value::as_str) {
            if !seen.iter().any(|k| k == r) {
                return Err(de::Error::custom(format!("`{r}` is required")));
            }
        }
        Ok(())
    }
}

/// A table's key: refused here (so the error points at the key) when the
/// schema takes no keys beyond its properties.
struct Key<'a> {
    props: &'a serde_json::Map<String, Value>,
    extra: &'a Value,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let key = String::deserialize(d)?;
        if *self.extra == Value::Bool(false) && !self.props.contains_key(&key) {
            let known: Vec<String> = self.props.keys().map(|k| format!("`{k}`")).collect();
            let known = if known.is_empty() {
                "it takes no keys".to_string()
            } else {
                format!("expected one of {}", known.join(", "))
            };
            return Err(de::Error::custom(format!(
                "unknown key `{}`, {known}",
                crate::ident::printable(&key)
            )));
        }
        Ok(key)
    }
}

use serde::Deserialize;

/// A schema that is not an object is refused where the plugin is
/// described (a schema of `true` takes anything).
pub fn well_formed(schema: &Value) -> bool {
    matches!(schema, Value::Object(_) | Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check an inline table's body; the error's message and what its
    /// span covers.
    fn run(schema: &Value, body: &str) -> Result<(), (String, String)> {
        let text = format!("{{ {body} }}");
        let d = toml::de::ValueDeserializer::parse(&text).unwrap();
        check(schema, d).map_err(|e| {
            let at = e.span().map(|s| text[s].to_owned()).unwrap_or_default();
            (e.message().to_owned(), at)
        })
    }

    fn err(msg: &str, at: &str) -> Result<(), (String, String)> {
        Err((msg.into(), at.into()))
    }

    #[test]
    fn types_ranges_and_keys_located() {
        let schema = serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["uri"],
            "properties": {
                "uri": {"type": "string", "minLength": 3},
                "cpus": {"type": "integer", "minimum": 1, "maximum": 8},
                "mode": {"enum": ["a", "b"]},
                "tags": {"type": "array", "items": {"type": "string"}}
            }
        });
        assert_eq!(run(&schema, r#"uri = "qemu:///system""#), Ok(()));
        assert_eq!(
            run(&schema, r#"uri = "abc", cpus = 9"#),
            err("9 is more than 8", "9")
        );
        assert_eq!(
            run(&schema, r#"uri = "abc", cpu = 1"#),
            err(
                "unknown key `cpu`, expected one of `uri`, `cpus`, `mode`, `tags`",
                "cpu"
            )
        );
        assert_eq!(
            run(&schema, "uri = 3"),
            err("expected a string, found an integer", "3")
        );
        assert_eq!(
            run(&schema, r#"uri = "abc", mode = "c""#),
            err(r#""c" is not one of "a", "b""#, r#""c""#)
        );
        assert_eq!(
            run(&schema, r#"uri = "abc", tags = ["x", 1]"#),
            err("expected a string, found an integer", "1")
        );
        assert_eq!(run(&schema, "cpus = 2").unwrap_err().0, "`uri` is required");
    }
}
