//! PostgreSQL's frontend/backend protocol (version 3.0) as far as a logical
//! replication client needs it: the startup and authentication messages,
//! simple queries, the framing of backend messages, and inside the
//! `CopyBoth` stream that `START_REPLICATION` opens, the streaming
//! replication messages: `XLogData` (`w`) and primary keepalive (`k`) in,
//! standby status update (`r`) out.
//!
//! Pure: the caller reads and writes the bytes.

/// Protocol version 3.0.
const PROTOCOL_VERSION: i32 = 196_608;

/// The largest backend message accepted (PostgreSQL's own allocation
/// limit): a longer length means a corrupt stream, not a message to wait for.
pub const MAX_MESSAGE: usize = 0x3fff_ffff;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Bytes that do not follow the protocol.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("replication protocol error: {0}")]
pub struct ProtocolError(pub &'static str);

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn push_cstr(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

/// The startup message with `params` (e.g. `user`, `database`,
/// `replication`). A parameter or value holding a NUL byte is refused:
/// it would end the string early.
pub fn startup(params: &[(&str, &str)]) -> Result<Vec<u8>, ProtocolError> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    for (name, value) in params {
        if name.contains('\0') || value.contains('\0') {
            return Err(ProtocolError("a startup parameter contains a NUL byte"));
        }
        push_cstr(&mut body, name);
        push_cstr(&mut body, value);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// A simple query (`Q`).
pub fn query(sql: &str) -> Result<Vec<u8>, ProtocolError> {
    if sql.contains('\0') {
        return Err(ProtocolError("a query contains a NUL byte"));
    }
    let mut body = Vec::with_capacity(sql.len() + 1);
    push_cstr(&mut body, sql);
    Ok(message(b'Q', &body))
}

/// A password message (`p`) with a cleartext or MD5-hashed password.
pub fn password(password: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(password.len() + 1);
    body.extend_from_slice(password);
    body.push(0);
    message(b'p', &body)
}

/// The first SASL message (`p`): the chosen mechanism and its data.
pub fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(mechanism.len() + data.len() + 5);
    push_cstr(&mut body, mechanism);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data);
    message(b'p', &body)
}

/// A following SASL message (`p`).
pub fn sasl_response(data: &[u8]) -> Vec<u8> {
    message(b'p', data)
}

/// `CopyData` (`d`) carrying `payload`.
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    message(b'd', payload)
}

/// `Terminate` (`X`).
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// An authentication request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth<'a> {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    /// The SASL mechanisms the server offers.
    Sasl(Vec<&'a str>),
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    /// A method a replication client does not speak (Kerberos, GSS, SSPI).
    Unsupported(i32),
}

/// The fields of an `ErrorResponse` or `NoticeResponse` that matter here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC` (or a notice's level).
    pub severity: String,
    /// The SQLSTATE.
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.severity, self.message, self.code)
    }
}

/// A backend message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend<'a> {
    Auth(Auth<'a>),
    ParameterStatus,
    BackendKeyData,
    /// The transaction status (`I`, `T`, `E`).
    ReadyForQuery(u8),
    Error(ServerError),
    Notice(ServerError),
    CopyBothResponse,
    CopyData(&'a [u8]),
    CopyDone,
    CommandComplete,
    /// Result rows of a command (`T`, `D`): not needed by the client.
    Rows,
    /// Any other message, by its tag.
    Other(u8),
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(ProtocolError("length overflow"))?;
        let out = self
            .bytes
            .get(self.at..end)
            .ok_or(ProtocolError("message cut short"))?;
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take(1)?[0])
    }
    fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let rest = self.bytes.get(self.at..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(ProtocolError("unterminated string"))?;
        let text =
            std::str::from_utf8(&rest[..end]).map_err(|_| ProtocolError("string is not UTF-8"))?;
        self.at += end + 1;
        Ok(text)
    }
    fn rest(&mut self) -> &'a [u8] {
        let out = self.bytes.get(self.at..).unwrap_or_default();
        self.at = self.bytes.len();
        out
    }
}

fn server_error(body: &[u8]) -> Result<ServerError, ProtocolError> {
    let mut reader = Reader { bytes: body, at: 0 };
    let mut out = ServerError::default();
    loop {
        let field = reader.u8()?;
        if field == 0 {
            return Ok(out);
        }
        let value = reader.cstr()?.to_owned();
        match field {
            // `V` is the severity never localised; `S` may be translated.
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
}

/// Splits the first backend message off `buf`: `Ok(None)` while it is
/// incomplete, else the message and how many bytes it took.
pub fn backend(buf: &[u8]) -> Result<Option<(Backend<'_>, usize)>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let len = usize::try_from(len)
        .ok()
        .filter(|len| (4..=MAX_MESSAGE).contains(len))
        .ok_or(ProtocolError("invalid message length"))?;
    let total = len + 1;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[5..total];
    let mut reader = Reader { bytes: body, at: 0 };
    let message = match tag {
        b'R' => Backend::Auth(match reader.i32()? {
            0 => Auth::Ok,
            3 => Auth::Cleartext,
            5 => {
                let mut salt = [0u8; 4];
                salt.copy_from_slice(reader.take(4)?);
                Auth::Md5(salt)
            }
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let name = reader.cstr()?;
                    if name.is_empty() {
                        break;
                    }
                    mechanisms.push(name);
                }
                Auth::Sasl(mechanisms)
            }
            11 => Auth::SaslContinue(reader.rest()),
            12 => Auth::SaslFinal(reader.rest()),
            other => Auth::Unsupported(other),
        }),
        b'S' => Backend::ParameterStatus,
        b'K' => Backend::BackendKeyData,
        b'Z' => Backend::ReadyForQuery(reader.u8()?),
        b'E' => Backend::Error(server_error(body)?),
        b'N' => Backend::Notice(server_error(body)?),
        b'W' => Backend::CopyBothResponse,
        b'd' => Backend::CopyData(body),
        b'c' => Backend::CopyDone,
        b'C' => Backend::CommandComplete,
        b'T' | b'D' => Backend::Rows,
        other => Backend::Other(other),
    };
    Ok(Some((message, total)))
}

/// A message of the replication stream (the payload of a `CopyData`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication<'a> {
    /// WAL data: here, one `pgoutput` message.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        /// Microseconds since 2000-01-01 UTC.
        send_time: i64,
        data: &'a [u8],
    },
    /// The server is alive and has sent everything up to `wal_end`.
    Keepalive {
        wal_end: u64,
        send_time: i64,
        /// The server wants a status update at once.
        reply_requested: bool,
    },
}

/// Reads a `CopyData` payload of the replication stream.
pub fn replication(payload: &[u8]) -> Result<Replication<'_>, ProtocolError> {
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    match reader.u8()? {
        b'w' => {
            let wal_start = reader.u64()?;
            let wal_end = reader.u64()?;
            let send_time = reader.u64()? as i64;
            Ok(Replication::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: reader.rest(),
            })
        }
        b'k' => {
            let wal_end = reader.u64()?;
            let send_time = reader.u64()? as i64;
            let reply_requested = reader.u8()? != 0;
            if reader.at != payload.len() {
                return Err(ProtocolError("keepalive has trailing bytes"));
            }
            Ok(Replication::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        _ => Err(ProtocolError("unknown replication message")),
    }
}

/// The payload of a standby status update (`r`): WAL up to `flushed` is
/// durably handled (the slot may move past it). `now` is microseconds since
/// 2000-01-01 UTC.
pub fn standby_status(flushed: u64, now: i64, reply_requested: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(34);
    out.push(b'r');
    // Written, flushed and applied: the client reports one position.
    for _ in 0..3 {
        out.extend_from_slice(&flushed.to_be_bytes());
    }
    out.extend_from_slice(&now.to_be_bytes());
    out.push(u8::from(reply_requested));
    out
}

/// Microseconds since 2000-01-01 UTC, from microseconds since the Unix epoch.
pub fn pg_time(unix_micros: i64) -> i64 {
    unix_micros - PG_EPOCH_OFFSET_MICROS
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// `"name"`, a quoted identifier of the replication grammar.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `START_REPLICATION` for a `pgoutput` slot, from `start` (0: from where
/// the slot's consumer confirmed), with the publications `publications`.
/// Names are quoted: none becomes SQL text unquoted.
pub fn start_replication(slot: &str, start: u64, publications: &[&str]) -> String {
    let names: Vec<String> = publications.iter().map(|p| quote_ident(p)).collect();
    let names = names.join(",").replace('\'', "''");
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (\"proto_version\" '1', \"publication_names\" '{names}')",
        quote_ident(slot),
        lsn_text(start),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be32(bytes: &[u8]) -> i32 {
        i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    #[test]
    fn startup_carries_the_version_and_parameters() {
        let out = startup(&[("user", "postgres"), ("replication", "database")]).unwrap();
        assert_eq!(be32(&out) as usize, out.len());
        assert_eq!(be32(&out[4..]), 196_608);
        assert_eq!(&out[8..], b"user\0postgres\0replication\0database\0\0");
        assert!(startup(&[("user", "a\0b")]).is_err());
    }

    #[test]
    fn frontend_messages_are_framed() {
        let q = query("IDENTIFY_SYSTEM").unwrap();
        assert_eq!(q[0], b'Q');
        assert_eq!(be32(&q[1..]) as usize, q.len() - 1);
        assert_eq!(&q[5..], b"IDENTIFY_SYSTEM\0");
        assert!(query("x\0y").is_err());
        assert_eq!(password(b"secret"), b"p\0\0\0\x0bsecret\0");
        let sasl = sasl_initial("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(sasl[0], b'p');
        assert_eq!(&sasl[5..19], b"SCRAM-SHA-256\0");
        assert_eq!(be32(&sasl[19..]), 11);
        assert_eq!(&sasl[23..], b"n,,n=,r=abc");
        assert_eq!(sasl_response(b"c=biws"), b"p\0\0\0\x0ac=biws");
        assert_eq!(copy_data(b"xy"), b"d\0\0\0\x06xy");
        assert_eq!(terminate(), b"X\0\0\0\x04");
    }

    fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
        message(tag, body)
    }

    #[test]
    fn backend_messages_are_split_off_whole() {
        let mut buf = framed(b'R', &0i32.to_be_bytes());
        buf.extend(framed(b'Z', b"I"));
        let (first, used) = backend(&buf).unwrap().unwrap();
        assert_eq!(first, Backend::Auth(Auth::Ok));
        assert_eq!(used, 9);
        let (second, used2) = backend(&buf[used..]).unwrap().unwrap();
        assert_eq!(second, Backend::ReadyForQuery(b'I'));
        assert_eq!(used + used2, buf.len());
        // Incomplete: wait for more.
        assert_eq!(backend(&buf[..3]).unwrap(), None);
        assert_eq!(backend(&buf[..7]).unwrap(), None);
    }

    #[test]
    fn authentication_requests_are_read() {
        let mut md5 = 5i32.to_be_bytes().to_vec();
        md5.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            backend(&framed(b'R', &md5)).unwrap().unwrap().0,
            Backend::Auth(Auth::Md5([1, 2, 3, 4]))
        );
        let mut sasl = 10i32.to_be_bytes().to_vec();
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(
            backend(&framed(b'R', &sasl)).unwrap().unwrap().0,
            Backend::Auth(Auth::Sasl(vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
        );
        let mut cont = 11i32.to_be_bytes().to_vec();
        cont.extend_from_slice(b"r=x");
        assert_eq!(
            backend(&framed(b'R', &cont)).unwrap().unwrap().0,
            Backend::Auth(Auth::SaslContinue(b"r=x"))
        );
        assert_eq!(
            backend(&framed(b'R', &3i32.to_be_bytes()))
                .unwrap()
                .unwrap()
                .0,
            Backend::Auth(Auth::Cleartext)
        );
        assert_eq!(
            backend(&framed(b'R', &7i32.to_be_bytes()))
                .unwrap()
                .unwrap()
                .0,
            Backend::Auth(Auth::Unsupported(7))
        );
        // Cut short inside the body.
        assert!(backend(&framed(b'R', &[0, 0])).is_err());
    }

    #[test]
    fn errors_carry_their_sqlstate_and_message() {
        let body = b"SFATAL\0VFATAL\0C42501\0Mmust be superuser or replication role to start walsender\0\0";
        let Backend::Error(err) = backend(&framed(b'E', body)).unwrap().unwrap().0 else {
            panic!("not an error");
        };
        assert_eq!(err.severity, "FATAL");
        assert_eq!(err.code, "42501");
        assert!(err.message.starts_with("must be superuser"));
        assert!(err.to_string().contains("42501"));
        // A field without its terminator is malformed, not a panic.
        assert!(backend(&framed(b'E', b"C42501")).is_err());
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert!(backend(b"Z\0\0\0\x02I").is_err());
        assert!(backend(b"d\x7f\xff\xff\xff").is_err());
        assert!(backend(b"d\xff\xff\xff\xff").is_err());
    }

    #[test]
    fn copy_both_and_data_are_read() {
        assert_eq!(
            backend(&framed(b'W', &[0, 0, 0])).unwrap().unwrap().0,
            Backend::CopyBothResponse
        );
        assert_eq!(
            backend(&framed(b'd', b"payload")).unwrap().unwrap().0,
            Backend::CopyData(b"payload")
        );
        assert_eq!(
            backend(&framed(b'c', b"")).unwrap().unwrap().0,
            Backend::CopyDone
        );
    }

    #[test]
    fn xlogdata_and_keepalives_are_read() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&0x1_0000_0010u64.to_be_bytes());
        w.extend_from_slice(&0x1_0000_0020u64.to_be_bytes());
        w.extend_from_slice(&77i64.to_be_bytes());
        w.extend_from_slice(b"B...");
        assert_eq!(
            replication(&w).unwrap(),
            Replication::XLogData {
                wal_start: 0x1_0000_0010,
                wal_end: 0x1_0000_0020,
                send_time: 77,
                data: b"B...",
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&42u64.to_be_bytes());
        k.extend_from_slice(&5i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            replication(&k).unwrap(),
            Replication::Keepalive {
                wal_end: 42,
                send_time: 5,
                reply_requested: true
            }
        );
        // Cut short, trailing bytes, unknown kinds: errors, never panics.
        assert!(replication(&w[..10]).is_err());
        assert!(replication(&k[..17]).is_err());
        let mut long = k.clone();
        long.push(0);
        assert!(replication(&long).is_err());
        assert!(replication(b"").is_err());
        assert!(replication(b"z").is_err());
    }

    #[test]
    fn status_updates_report_one_position() {
        let out = standby_status(0xAB, 9, false);
        assert_eq!(out.len(), 34);
        assert_eq!(out[0], b'r');
        for i in 0..3 {
            assert_eq!(&out[1 + 8 * i..9 + 8 * i], &0xABu64.to_be_bytes());
        }
        assert_eq!(&out[25..33], &9i64.to_be_bytes());
        assert_eq!(out[33], 0);
        assert_eq!(standby_status(1, 1, true)[33], 1);
        assert_eq!(pg_time(PG_EPOCH_OFFSET_MICROS + 5), 5);
    }

    #[test]
    fn start_replication_quotes_every_name() {
        assert_eq!(
            start_replication(
                "sovra_realtime_db",
                0x1_0000_00AB,
                &["supabase_realtime", "x"]
            ),
            "START_REPLICATION SLOT \"sovra_realtime_db\" LOGICAL 1/AB (\"proto_version\" '1', \"publication_names\" '\"supabase_realtime\",\"x\"')"
        );
        // Quotes inside names cannot end the identifier or the literal.
        assert_eq!(
            start_replication("a\"b", 0, &["it's"]),
            "START_REPLICATION SLOT \"a\"\"b\" LOGICAL 0/0 (\"proto_version\" '1', \"publication_names\" '\"it''s\"')"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = backend(&bytes);
            let _ = replication(&bytes);
        }
    }
}
