//! `aws-chunked` request bodies, as S3 clients stream uploads: chunks of
//! `<hex size>[;chunk-signature=<sig>]\r\n<data>\r\n`, ended by a chunk of
//! size 0 (and, for `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, trailer lines).
//! With `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` every chunk's signature is
//! checked against the previous one, starting from the request's own.
//! Pure: bytes in, bytes out; memory is bounded by the header line length.

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};

use super::sigv4;

/// Longest chunk header or trailer line.
const MAX_LINE: usize = 4096;
/// Most trailer lines.
const MAX_TRAILERS: usize = 16;

/// How the chunks are signed.
#[derive(Clone, Debug)]
pub struct ChunkSigning {
    pub key: [u8; 32],
    pub long_date: String,
    pub scope: String,
    /// The signature of the request's headers (the seed).
    pub seed: String,
}

/// Why a chunked body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    /// A chunk's signature does not match.
    Signature,
}

#[derive(Debug)]
enum State {
    Header,
    Data { left: u64 },
    DataEnd,
    Trailers { count: usize },
    Done,
}

/// Decodes one `aws-chunked` body.
#[derive(Debug)]
pub struct ChunkDecoder {
    signing: Option<ChunkSigning>,
    previous: String,
    expected_signature: Option<String>,
    hash: Sha256,
    line: BytesMut,
    state: State,
    trailers: bool,
    /// The chunk of size 0 was read.
    last: bool,
}

impl ChunkDecoder {
    /// A decoder; `signing` for signed chunks, `trailers` when trailer
    /// lines follow the last chunk.
    pub fn new(signing: Option<ChunkSigning>, trailers: bool) -> ChunkDecoder {
        let previous = signing.as_ref().map(|s| s.seed.clone()).unwrap_or_default();
        ChunkDecoder {
            signing,
            previous,
            expected_signature: None,
            hash: Sha256::new(),
            line: BytesMut::new(),
            state: State::Header,
            trailers,
            last: false,
        }
    }

    /// Takes a line ending in CRLF from `input` at `*at`; `None` when more
    /// input is needed.
    fn take_line(&mut self, input: &[u8], at: &mut usize) -> Result<Option<String>, ChunkError> {
        while *at < input.len() {
            let b = input[*at];
            *at += 1;
            self.line.extend_from_slice(&[b]);
            if self.line.len() > MAX_LINE {
                return Err(ChunkError::Malformed("a chunk header is too long"));
            }
            if self.line.ends_with(b"\r\n") {
                let line = self.line.split();
                let text = std::str::from_utf8(&line[..line.len() - 2])
                    .map_err(|_| ChunkError::Malformed("a chunk header is not text"))?;
                return Ok(Some(text.to_owned()));
            }
        }
        Ok(None)
    }

    fn check_chunk(&mut self) -> Result<(), ChunkError> {
        let hash = std::mem::take(&mut self.hash).finalize();
        let Some(signing) = &self.signing else {
            return Ok(());
        };
        let Some(given) = self.expected_signature.take() else {
            return Err(ChunkError::Signature);
        };
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let expected = sigv4::sign(
            &signing.key,
            &sigv4::chunk_string_to_sign(&signing.long_date, &signing.scope, &self.previous, &hex),
        );
        if !sigv4::same(&expected, &given.to_ascii_lowercase()) {
            return Err(ChunkError::Signature);
        }
        self.previous = expected;
        Ok(())
    }

    /// Decodes `input`, returning the payload bytes it held.
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Bytes>, ChunkError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Header => {
                    let Some(line) = self.take_line(input, &mut at)? else {
                        break;
                    };
                    let (size, extension) = line.split_once(';').unwrap_or((&line, ""));
                    let size = u64::from_str_radix(size.trim(), 16)
                        .map_err(|_| ChunkError::Malformed("a chunk size is not hexadecimal"))?;
                    self.expected_signature = extension
                        .trim()
                        .strip_prefix("chunk-signature=")
                        .map(str::to_owned);
                    if self.signing.is_some() && self.expected_signature.is_none() {
                        return Err(ChunkError::Signature);
                    }
                    if size == 0 {
                        self.last = true;
                        self.check_chunk()?;
                        self.state = if self.trailers {
                            State::Trailers { count: 0 }
                        } else {
                            State::DataEnd
                        };
                    } else {
                        self.state = State::Data { left: size };
                    }
                }
                State::Data { left } => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    let data = &input[at..at + take];
                    if self.signing.is_some() {
                        self.hash.update(data);
                    }
                    out.push(Bytes::copy_from_slice(data));
                    at += take;
                    let left = left - take as u64;
                    if left == 0 {
                        self.check_chunk()?;
                        self.state = State::DataEnd;
                    } else {
                        self.state = State::Data { left };
                    }
                }
                State::DataEnd => {
                    let Some(line) = self.take_line(input, &mut at)? else {
                        break;
                    };
                    if !line.is_empty() {
                        return Err(ChunkError::Malformed(
                            "a chunk does not end where its size says",
                        ));
                    }
                    // After the last chunk (size 0) the body ends.
                    self.state = if self.last {
                        State::Done
                    } else {
                        State::Header
                    };
                }
                State::Trailers { count } => {
                    let Some(line) = self.take_line(input, &mut at)? else {
                        break;
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if count >= MAX_TRAILERS {
                        return Err(ChunkError::Malformed("too many trailers"));
                    } else {
                        self.state = State::Trailers { count: count + 1 };
                    }
                }
                State::Done => {
                    if input[at..].iter().all(|b| matches!(b, b'\r' | b'\n')) {
                        at = input.len();
                    } else {
                        return Err(ChunkError::Malformed("data after the last chunk"));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether the body ended with its last chunk.
    pub fn finish(&self) -> Result<(), ChunkError> {
        match self.state {
            State::Done => Ok(()),
            _ => Err(ChunkError::Malformed(
                "the body ended before its last chunk",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(decoder: &mut ChunkDecoder, body: &[u8], step: usize) -> Result<Vec<u8>, ChunkError> {
        let mut out = Vec::new();
        for piece in body.chunks(step.max(1)) {
            for bytes in decoder.feed(piece)? {
                out.extend_from_slice(&bytes);
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    /// AWS's documented chunked upload (64 KiB + 1 KiB of `a`), fed in
    /// pieces of several sizes.
    #[test]
    fn signed_chunks_of_the_documented_example() {
        let credential = sigv4::Credential {
            access_key: "AKIAIOSFODNN7EXAMPLE".to_owned(),
            date: "20130524".to_owned(),
            region: "us-east-1".to_owned(),
            service: "s3".to_owned(),
        };
        let signing = ChunkSigning {
            key: sigv4::signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", &credential),
            long_date: "20130524T000000Z".to_owned(),
            scope: credential.scope(),
            seed: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9".to_owned(),
        };
        let mut body = Vec::new();
        body.extend_from_slice(b"10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n");
        body.extend_from_slice(&[b'a'; 65_536]);
        body.extend_from_slice(b"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n");
        body.extend_from_slice(&[b'a'; 1024]);
        body.extend_from_slice(b"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n");
        assert_eq!(body.len(), 66_824, "Content-Length of the example");
        for step in [1, 7, 4096, body.len()] {
            let mut decoder = ChunkDecoder::new(Some(signing.clone()), false);
            assert_eq!(
                decode(&mut decoder, &body, step).unwrap(),
                vec![b'a'; 66_560]
            );
        }
        // One byte changed: the chunk's signature no longer matches.
        let mut forged = body.clone();
        forged[200] = b'b';
        let mut decoder = ChunkDecoder::new(Some(signing.clone()), false);
        assert_eq!(
            decode(&mut decoder, &forged, 4096),
            Err(ChunkError::Signature)
        );
        // Cut short: refused at the end.
        let mut decoder = ChunkDecoder::new(Some(signing.clone()), false);
        assert!(decode(&mut decoder, &body[..70_000.min(body.len() - 10)], 4096).is_err());
        // A chunk without a signature.
        let mut decoder = ChunkDecoder::new(Some(signing), false);
        assert_eq!(
            decode(&mut decoder, b"3\r\nabc\r\n0\r\n\r\n", 3),
            Err(ChunkError::Signature)
        );
    }

    #[test]
    fn unsigned_chunks_with_trailers() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n";
        for step in [1, 3, body.len()] {
            let mut decoder = ChunkDecoder::new(None, true);
            assert_eq!(decode(&mut decoder, body, step).unwrap(), b"hello world");
        }
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\r\n",
        ] {
            let mut decoder = ChunkDecoder::new(None, true);
            assert!(decode(&mut decoder, bad, 2).is_err());
        }
        let long = vec![b'1'; MAX_LINE + 10];
        let mut decoder = ChunkDecoder::new(None, true);
        assert!(decoder.feed(&long).is_err());
    }

    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(fuzz_cases()))]
        #[test]
        fn fuzz_chunk_decoder_never_panics(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            step in 1usize..64,
            signed in proptest::prelude::any::<bool>(),
        ) {
            let signing = signed.then(|| ChunkSigning {
                key: [7; 32],
                long_date: "20130524T000000Z".to_owned(),
                scope: "20130524/local/s3/aws4_request".to_owned(),
                seed: "0".repeat(64),
            });
            let mut decoder = ChunkDecoder::new(signing, !signed);
            let _ = decode(&mut decoder, &body, step);
            // Well-formed unsigned bodies decode to what they carry.
            let payload: Vec<u8> = body.iter().take(100).copied().collect();
            let mut framed = format!("{:x}\r\n", payload.len()).into_bytes();
            framed.extend_from_slice(&payload);
            framed.extend_from_slice(b"\r\n0\r\n\r\n");
            let mut decoder = ChunkDecoder::new(None, true);
            let decoded = decode(&mut decoder, &framed, step);
            // (An empty first chunk is the last one.)
            if !payload.is_empty() {
                proptest::prop_assert_eq!(decoded, Ok(payload));
            }
        }
    }
}
