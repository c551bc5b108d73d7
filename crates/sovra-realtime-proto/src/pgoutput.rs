//! PostgreSQL's `pgoutput` logical decoding messages (protocol version 1),
//! as `pg_logical_slot_peek_binary_changes(..., 'proto_version', '1',
//! 'publication_names', ...)` returns them, one message per row; and the
//! conversion of their text values to JSON by column type.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A column of a relation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Part of the replica identity (the key sent for deletes).
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
}

/// A relation as the decoder announces it before its first change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column's value in a tuple.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Datum {
    Null,
    /// A TOASTed value that did not change (not sent).
    Unchanged,
    Text(String),
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    Update {
        relation: u32,
        /// The old key (`K`) or whole old row (`O`, REPLICA IDENTITY FULL).
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        relation: u32,
        old: Vec<Datum>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// Type, origin and logical messages: not needed.
    Other(u8),
}

/// A message that is cut short or malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput message is malformed: {0}")]
pub struct DecodeError(pub &'static str);

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError("truncated"))?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstring(&mut self) -> Result<String, DecodeError> {
        let rest = self.bytes.get(self.at..).ok_or(DecodeError("truncated"))?;
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError("unterminated string"))?;
        let text = String::from_utf8(rest[..end].to_vec())
            .map_err(|_| DecodeError("string is not UTF-8"))?;
        self.at += end + 1;
        Ok(text)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| DecodeError("negative column count"))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' | b'b' => {
                    let len =
                        usize::try_from(self.i32()?).map_err(|_| DecodeError("negative length"))?;
                    let bytes = self.take(len)?;
                    Datum::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                _ => return Err(DecodeError("unknown tuple value kind")),
            });
        }
        Ok(out)
    }
}

/// Decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let final_lsn = r.u64()?;
            let commit_time = r.u64()? as i64;
            let xid = r.u32()?;
            Decoded::Begin {
                final_lsn,
                commit_time,
                xid,
            }
        }
        b'C' => {
            let _flags = r.u8()?;
            let commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            let commit_time = r.u64()? as i64;
            Decoded::Commit {
                commit_lsn,
                end_lsn,
                commit_time,
            }
        }
        b'R' => {
            let oid = r.u32()?;
            let schema = r.cstring()?;
            let name = r.cstring()?;
            let replica_identity = r.u8()?;
            let n = usize::try_from(r.i16()?).map_err(|_| DecodeError("negative column count"))?;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstring()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                });
            }
            Decoded::Relation(Relation {
                oid,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(DecodeError("insert without a new tuple"));
            }
            Decoded::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError("update without a new tuple"));
            }
            Decoded::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError("delete without an old tuple"));
            }
            Decoded::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            let mut relations = Vec::new();
            for _ in 0..n.min(10_000) {
                relations.push(r.u32()?);
            }
            Decoded::Truncate { relations }
        }
        other => Decoded::Other(other),
    })
}

/// PostgreSQL timestamps count microseconds from 2000-01-01.
/// PostgreSQL's epoch, 2000-01-01 UTC, in Unix seconds.
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// `2026-01-05T10:11:12.345Z` for a pgoutput commit time.
pub fn commit_timestamp(pg_micros: i64) -> String {
    let unix_ms = PG_EPOCH_UNIX_SECS * 1000 + pg_micros.div_euclid(1000);
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Reads an RFC 3339 timestamp (as `commit_timestamp` writes it, or with
/// any fraction and a `Z` or `±HH:MM` offset) as microseconds since
/// 2000-01-01 UTC, PostgreSQL's epoch.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() < 20 || !text.is_ascii() {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        if part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    if bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (y, m, d) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hh, mm, ss) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut micros = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, b) in fraction.bytes().take(digits).enumerate() {
            if i < 6 {
                micros = micros * 10 + i64::from(b - b'0');
            }
        }
        for _ in digits..6 {
            micros *= 10;
        }
        rest = &fraction[digits..];
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(y, m, d);
    let unix = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    Some((unix - PG_EPOCH_UNIX_SECS) * 1_000_000 + micros)
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A column's text value as JSON: numbers for integer and float types,
/// booleans, parsed JSON for json/jsonb, text otherwise (the client
/// converts further by the type name it is given).
pub fn json_value(type_name: &str, text: &str) -> Value {
    match type_name {
        "int2" | "int4" | "int8" | "oid" => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        "float4" | "float8" => text
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .unwrap_or_else(|| Value::String(text.to_owned())),
        "bool" => Value::Bool(text == "t" || text == "true"),
        "json" | "jsonb" => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
        }
        _ => Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    #[test]
    fn decodes_a_transaction() {
        let mut begin = vec![b'B'];
        begin.extend_from_slice(&100u64.to_be_bytes());
        begin.extend_from_slice(&0u64.to_be_bytes());
        begin.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            decode(&begin).unwrap(),
            Decoded::Begin {
                final_lsn: 100,
                commit_time: 0,
                xid: 7
            }
        );

        let mut rel = vec![b'R'];
        rel.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut rel, "public");
        cstr(&mut rel, "messages");
        rel.push(b'd');
        rel.extend_from_slice(&2i16.to_be_bytes());
        rel.push(1);
        cstr(&mut rel, "id");
        rel.extend_from_slice(&20u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        rel.push(0);
        cstr(&mut rel, "body");
        rel.extend_from_slice(&25u32.to_be_bytes());
        rel.extend_from_slice(&(-1i32).to_be_bytes());
        let Decoded::Relation(relation) = decode(&rel).unwrap() else {
            panic!()
        };
        assert_eq!(relation.name, "messages");
        assert!(relation.columns[0].key && !relation.columns[1].key);

        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend_from_slice(&3i16.to_be_bytes());
        insert.push(b't');
        insert.extend_from_slice(&2i32.to_be_bytes());
        insert.extend_from_slice(b"42");
        insert.push(b'n');
        insert.push(b'u');
        assert_eq!(
            decode(&insert).unwrap(),
            Decoded::Insert {
                relation: 16384,
                new: vec![Datum::Text("42".into()), Datum::Null, Datum::Unchanged]
            }
        );

        let mut update = vec![b'U'];
        update.extend_from_slice(&1u32.to_be_bytes());
        update.push(b'K');
        update.extend_from_slice(&1i16.to_be_bytes());
        update.push(b'n');
        update.push(b'N');
        update.extend_from_slice(&0i16.to_be_bytes());
        assert!(matches!(
            decode(&update).unwrap(),
            Decoded::Update { old: Some(_), .. }
        ));

        let mut delete = vec![b'D'];
        delete.extend_from_slice(&1u32.to_be_bytes());
        delete.push(b'O');
        delete.extend_from_slice(&0i16.to_be_bytes());
        assert!(matches!(decode(&delete).unwrap(), Decoded::Delete { .. }));

        assert!(decode(&insert[..8]).is_err());
        assert!(decode(&[]).is_err());
        assert_eq!(decode(b"Yxyz").unwrap(), Decoded::Other(b'Y'));
    }

    proptest::proptest! {
        #[test]
        fn timestamps_round_trip(ms in -10_000_000_000_000i64..10_000_000_000_000i64) {
            let micros = ms * 1000;
            proptest::prop_assert_eq!(parse_timestamp(&commit_timestamp(micros)), Some(micros));
        }

        #[test]
        fn timestamp_parser_never_panics(text in "\\PC{0,40}") {
            let _ = parse_timestamp(&text);
        }
    }

    #[test]
    fn timestamps_and_values() {
        assert_eq!(commit_timestamp(0), "2000-01-01T00:00:00.000Z");
        // 2026-01-05T10:11:12.345Z
        let unix_ms: i64 = 1_767_607_872_345;
        let pg = (unix_ms - PG_EPOCH_UNIX_SECS * 1000) * 1000;
        assert_eq!(commit_timestamp(pg), "2026-01-05T10:11:12.345Z");
        assert_eq!(parse_timestamp("2026-01-05T10:11:12.345Z"), Some(pg));
        assert_eq!(parse_timestamp("2026-01-05T11:11:12.345+01:00"), Some(pg));
        assert_eq!(
            parse_timestamp("2026-01-05T10:11:12.3456789Z"),
            Some(pg + 678)
        );
        assert_eq!(parse_timestamp("2000-01-01T00:00:00Z"), Some(0));
        for bad in [
            "",
            "yesterday",
            "2026-13-05T10:11:12Z",
            "2026-01-05T10:11:12",
            "2026-01-05T10:11:12.Z",
            "2026-01-05T10:11:12+0100",
            "2026-01-05T10:11:1xZ",
            "2026-01-05T10:11:12.345Zjunk",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        assert_eq!(json_value("int8", "42"), Value::from(42));
        assert_eq!(json_value("bool", "t"), Value::Bool(true));
        assert_eq!(
            json_value("jsonb", r#"{"a":1}"#),
            serde_json::json!({"a": 1})
        );
        assert_eq!(json_value("text", "7"), Value::String("7".into()));
        assert_eq!(json_value("numeric", "1.50"), Value::String("1.50".into()));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
