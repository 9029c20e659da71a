//! Field-level diff of a conflict's two versions (pure): which fields differ, with both
//! values; long text also gets a line diff (text with line breaks) or a word diff.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;
use similar::{ChangeTag, TextDiff};

use crate::store::conflict_log::Conflict;

/// Text longer than this (in characters, on either side) gets a text diff.
pub const LONG_TEXT_CHARS: usize = 200;

/// One field that differs between main's and cloud's version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldDiff {
    /// Column name.
    pub field: String,
    /// Main's value (`null` when main's row is deleted or lacks the field).
    pub main: Value,
    /// Cloud's value (`null` when cloud's row is deleted or lacks the field).
    pub cloud: Value,
    /// For long text: a unified line diff, or a word diff marking `[-removed-]` and
    /// `{+added+}`, from main's text to cloud's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_diff: Option<String>,
}

/// The fields that differ between `main` and `cloud` (row versions as JSON objects; `None`
/// for a deleted row), in field-name order.
pub fn diff(main: Option<&Value>, cloud: Option<&Value>) -> Vec<FieldDiff> {
    let fields = |v: Option<&Value>| -> BTreeSet<String> {
        v.and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let names: BTreeSet<String> = fields(main).union(&fields(cloud)).cloned().collect();
    let get = |v: Option<&Value>, f: &str| v.and_then(|o| o.get(f)).cloned();
    names
        .into_iter()
        .filter_map(|field| {
            let (m, c) = (get(main, &field), get(cloud, &field));
            if m == c {
                return None;
            }
            let (m, c) = (m.unwrap_or(Value::Null), c.unwrap_or(Value::Null));
            let text_diff = match (&m, &c) {
                (Value::String(a), Value::String(b))
                    if a.chars().count() > LONG_TEXT_CHARS
                        || b.chars().count() > LONG_TEXT_CHARS =>
                {
                    Some(text_diff(a, b))
                }
                _ => None,
            };
            Some(FieldDiff {
                field,
                main: m,
                cloud: c,
                text_diff,
            })
        })
        .collect()
}

/// A unified line diff when either text has line breaks, else a word diff.
pub fn text_diff(main: &str, cloud: &str) -> String {
    if main.contains('\n') || cloud.contains('\n') {
        return TextDiff::from_lines(main, cloud)
            .unified_diff()
            .context_radius(2)
            .header("main", "cloud")
            .to_string();
    }
    let mut out = String::new();
    for change in TextDiff::from_words(main, cloud).iter_all_changes() {
        let v = change.value();
        match change.tag() {
            ChangeTag::Equal => out.push_str(v),
            ChangeTag::Delete => {
                out.push_str("[-");
                out.push_str(v);
                out.push_str("-]");
            }
            ChangeTag::Insert => {
                out.push_str("{+");
                out.push_str(v);
                out.push_str("+}");
            }
        }
    }
    out
}

/// The entry as JSON with its field-level diff under `fields`.
pub fn entry_json(c: &Conflict) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    let fields = diff(c.main_version.as_ref(), c.cloud_version.as_ref());
    v["fields"] = serde_json::to_value(fields).unwrap_or(Value::Null);
    v
}

/// Human-readable lines, one block per field.
pub fn render(diffs: &[FieldDiff]) -> String {
    let mut out = String::new();
    for d in diffs {
        match &d.text_diff {
            Some(t) => {
                out.push_str(&format!("  {}: (long text, main -> cloud)\n", d.field));
                for line in t.lines() {
                    out.push_str(&format!("      {line}\n"));
                }
            }
            None => out.push_str(&format!(
                "  {}: main {} | cloud {}\n",
                d.field, d.main, d.cloud
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_fields_are_listed_with_both_values() {
        let m = json!({"id": "u1", "name": "Ann", "age": 3});
        let c = json!({"id": "u1", "name": "Anna", "age": 3});
        let d = diff(Some(&m), Some(&c));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "name");
        assert_eq!(d[0].main, json!("Ann"));
        assert_eq!(d[0].cloud, json!("Anna"));
        assert_eq!(d[0].text_diff, None);
    }

    #[test]
    fn a_deleted_side_shows_every_field_as_null() {
        let m = json!({"id": "u1", "name": "Ann"});
        let d = diff(Some(&m), None);
        assert_eq!(
            d.iter().map(|f| f.field.as_str()).collect::<Vec<_>>(),
            ["id", "name"]
        );
        assert!(d.iter().all(|f| f.cloud.is_null()));
        assert!(diff(None, None).is_empty());
    }

    #[test]
    fn long_text_gets_a_word_diff() {
        let base = "word ".repeat(50);
        let m = json!({ "bio": format!("{base}alpha end") });
        let c = json!({ "bio": format!("{base}beta end") });
        let d = diff(Some(&m), Some(&c));
        let t = d[0].text_diff.as_deref().unwrap_or_default();
        assert!(t.contains("[-alpha-]{+beta+}"), "{t}");
        assert!(t.ends_with(" end"), "{t}");
    }

    #[test]
    fn long_multiline_text_gets_a_unified_line_diff() {
        let mut a: Vec<String> = (0..40).map(|i| format!("line {i}")).collect();
        let m = a.join("\n");
        a[20] = "changed".into();
        let c = a.join("\n");
        let t = text_diff(&m, &c);
        assert!(t.contains("--- main"), "{t}");
        assert!(t.contains("-line 20\n+changed\n"), "{t}");
        assert!(
            !t.contains("line 5\n"),
            "only context around the change: {t}"
        );
    }

    #[test]
    fn short_text_has_no_text_diff_and_render_names_fields() {
        let d = diff(Some(&json!({"n": 1})), Some(&json!({"n": 2})));
        assert_eq!(render(&d), "  n: main 1 | cloud 2\n");
    }
}
