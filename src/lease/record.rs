//! The lease record and its DynamoDB item codec.
//!
//! Any principal allowed to `PutItem` on the table can write any item, so
//! decoding is strict: every attribute has the type and range our own
//! writes give it, or the record is refused as a whole. A missing or
//! mistyped sign state must never read as height 0 (that would lower what
//! the next signer skips to), and a duration outside our limits must not
//! make standbys wait for ever.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

use super::settings::{KEY_ATTR, MAX_DURATION, MIN_DURATION};
use super::SignState;

/// The lease item as read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Record {
    /// Who wrote it.
    pub(crate) holder_id: String,
    /// Record version: random, replaced by every write.
    pub(crate) rvn: String,
    /// The writer's lease duration.
    pub(crate) duration: Duration,
    /// Released by its holder (free to take at once).
    pub(crate) released: bool,
    /// Highest sign state any holder so far may have signed, takeover
    /// skips included.
    pub(crate) state: SignState,
    /// Address of the validator whose key the holder delivered, once known.
    pub(crate) address: Option<String>,
}

type Item = HashMap<String, AttributeValue>;

/// Longest holder id or record version we accept (ours are far shorter).
const MAX_TEXT: usize = 256;

fn text(item: &Item, k: &str) -> Result<String, String> {
    match item.get(k) {
        None => Err(format!("no `{k}`")),
        Some(AttributeValue::S(s)) if s.chars().any(char::is_control) => {
            Err(format!("`{k}` holds a control character"))
        }
        Some(AttributeValue::S(s)) if !s.is_empty() && s.len() <= MAX_TEXT => Ok(s.clone()),
        Some(AttributeValue::S(_)) => Err(format!("`{k}` is empty or longer than {MAX_TEXT}")),
        Some(_) => Err(format!("`{k}` is not a string")),
    }
}

fn number(item: &Item, k: &str) -> Result<i64, String> {
    match item.get(k) {
        None => Err(format!("no `{k}`")),
        Some(AttributeValue::N(n)) => n
            .parse::<i64>()
            .map_err(|_| format!("`{k}` = {n:?} is not an integer")),
        Some(_) => Err(format!("`{k}` is not a number")),
    }
}

fn ranged<T: TryFrom<i64>>(item: &Item, k: &str, lo: i64, hi: i64) -> Result<T, String> {
    let v = number(item, k)?;
    if !(lo..=hi).contains(&v) {
        return Err(format!("`{k}` = {v} is outside {lo}..={hi}"));
    }
    T::try_from(v).map_err(|_| format!("`{k}` = {v} out of range"))
}

/// Whether `a` is a CometBFT validator address as we record it.
fn is_address(a: &str) -> bool {
    a.len() == 40
        && a.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl Record {
    /// Decodes an item, refusing anything our own writes would not produce.
    pub(crate) fn from_item(item: &Item) -> Result<Record, String> {
        let ms = ranged::<u64>(
            item,
            "duration_ms",
            MIN_DURATION.as_millis() as i64,
            MAX_DURATION.as_millis() as i64,
        )?;
        let released = match item.get("released") {
            Some(AttributeValue::Bool(b)) => *b,
            None => return Err("no `released`".into()),
            Some(_) => return Err("`released` is not a boolean".into()),
        };
        let state = SignState {
            height: ranged(item, "height", 0, i64::MAX)?,
            round: ranged(item, "round", 0, i32::MAX as i64)?,
            step: ranged(item, "step", 0, 3)?,
        };
        let address = match item.get("address") {
            None => None,
            Some(AttributeValue::S(a)) if is_address(a) => Some(a.clone()),
            Some(_) => return Err("`address` is not a 40-digit upper-case hex address".into()),
        };
        Ok(Record {
            holder_id: text(item, "holder")?,
            rvn: text(item, "rvn")?,
            duration: Duration::from_millis(ms),
            released,
            state,
            address,
        })
    }

    /// The item for this record under lease `name`.
    pub(crate) fn to_item(&self, name: &str) -> Item {
        let mut item = Item::new();
        let mut put = |k: &str, v: AttributeValue| {
            item.insert(k.to_string(), v);
        };
        put(KEY_ATTR, AttributeValue::S(name.to_string()));
        put("holder", AttributeValue::S(self.holder_id.clone()));
        put("rvn", AttributeValue::S(self.rvn.clone()));
        put(
            "duration_ms",
            AttributeValue::N(self.duration.as_millis().to_string()),
        );
        put("released", AttributeValue::Bool(self.released));
        put("height", AttributeValue::N(self.state.height.to_string()));
        put("round", AttributeValue::N(self.state.round.to_string()));
        put("step", AttributeValue::N(self.state.step.to_string()));
        if let Some(a) = &self.address {
            put("address", AttributeValue::S(a.clone()));
        }
        // For people reading the table; never used for decisions.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        put("written_at", AttributeValue::S(now.to_string()));
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            holder_id: "h/1/ab".into(),
            rvn: "00ff".into(),
            duration: Duration::from_secs(30),
            released: false,
            state: SignState {
                height: 1143,
                round: 2,
                step: 3,
            },
            address: Some("A".repeat(40)),
        }
    }

    #[test]
    fn round_trips_our_own_records() {
        let r = sample();
        assert_eq!(Record::from_item(&r.to_item("n")).unwrap(), r);
        let r2 = Record {
            address: None,
            released: true,
            ..sample()
        };
        assert_eq!(Record::from_item(&r2.to_item("n")).unwrap(), r2);
    }

    #[test]
    fn refuses_what_our_writes_never_produce() {
        type Mutation = Box<dyn Fn(&mut Item)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("no `rvn`", Box::new(|i| drop(i.remove("rvn")))),
            ("no `height`", Box::new(|i| drop(i.remove("height")))),
            (
                "`height` is not a number",
                Box::new(|i| drop(i.insert("height".into(), AttributeValue::S("5".into())))),
            ),
            (
                "`height` = -1",
                Box::new(|i| drop(i.insert("height".into(), AttributeValue::N("-1".into())))),
            ),
            (
                "is not an integer",
                Box::new(|i| drop(i.insert("height".into(), AttributeValue::N("1e30".into())))),
            ),
            (
                "`step` = 4",
                Box::new(|i| drop(i.insert("step".into(), AttributeValue::N("4".into())))),
            ),
            (
                "`duration_ms` = 9223372036854775807",
                Box::new(|i| {
                    drop(i.insert(
                        "duration_ms".into(),
                        AttributeValue::N(i64::MAX.to_string()),
                    ))
                }),
            ),
            (
                "`duration_ms` = 100",
                Box::new(|i| drop(i.insert("duration_ms".into(), AttributeValue::N("100".into())))),
            ),
            (
                "`released` is not a boolean",
                Box::new(|i| drop(i.insert("released".into(), AttributeValue::S("false".into())))),
            ),
            (
                "`holder` is not a string",
                Box::new(|i| drop(i.insert("holder".into(), AttributeValue::N("1".into())))),
            ),
            (
                "`holder` holds a control character",
                Box::new(|i| {
                    drop(i.insert(
                        "holder".into(),
                        AttributeValue::S("h\nINFO event=\"delivered\"".into()),
                    ))
                }),
            ),
            (
                "`address` is not",
                Box::new(|i| drop(i.insert("address".into(), AttributeValue::S("abc".into())))),
            ),
        ];
        for (want, mutate) in cases {
            let mut item = sample().to_item("n");
            mutate(&mut item);
            let e = Record::from_item(&item).unwrap_err();
            assert!(e.contains(want), "{want}: got {e}");
        }
    }

    #[test]
    fn a_huge_height_is_a_valid_record_bounded_elsewhere() {
        // The height itself is in range; what it may do to our state is
        // bounded by the protocol (max height jump), not by the codec.
        let mut item = sample().to_item("n");
        item.insert("height".into(), AttributeValue::N(i64::MAX.to_string()));
        assert_eq!(Record::from_item(&item).unwrap().state.height, i64::MAX);
    }
}
