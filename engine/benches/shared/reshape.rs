//! The reshape-transform plugin's work written natively (serde_json), shared by the `plugin`
//! and `e2e` benches as the baseline a plugin chain is compared with.

use serde_json::{Map, Value, json};

/// What the plugin does for `{"redact": ["password"], "shape": "flat"}`, natively.
pub fn native_reshape(body: &[u8]) -> Option<Vec<u8>> {
    fn redact(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, member) in map.iter_mut() {
                    if key == "password" {
                        *member = Value::String("[REDACTED]".into());
                    } else {
                        redact(member);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    redact(&mut doc);
    let data = doc.get("data").cloned().unwrap_or(Value::Null);
    let mut flat = Map::new();
    flat.insert("client_id".into(), json!("bench"));
    flat.insert("message_id".into(), json!("evt_2a9f0c1e6b"));
    flat.insert(
        "from".into(),
        data.get("from").cloned().unwrap_or(Value::Null),
    );
    flat.insert("to".into(), data.get("to").cloned().unwrap_or(Value::Null));
    flat.insert("timestamp".into(), json!(1_735_689_600_000u64));
    flat.insert("type".into(), json!("order.created"));
    flat.insert(
        "content".into(),
        data.get("content").cloned().unwrap_or(Value::Null),
    );
    serde_json::to_vec(&Value::Object(flat)).ok()
}
