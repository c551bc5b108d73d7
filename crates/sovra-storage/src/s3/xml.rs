//! The XML of the S3 protocol: a writer for answers and a small, bounded
//! reader for the few request bodies S3 clients send (`Delete`,
//! `CompleteMultipartUpload`, `CreateBucketConfiguration`). Pure.
//!
//! The reader knows elements, attributes (skipped), text, the five named
//! entities, numeric character references, CDATA, comments and the XML
//! declaration; it refuses DTDs (no entity expansion), nesting deeper than
//! [`MAX_DEPTH`] and more than [`MAX_ELEMENTS`] elements.

/// Deepest nesting of a request body.
pub const MAX_DEPTH: usize = 8;
/// Most elements in a request body (a `Delete` of 1,000 keys has about
/// 3,000; a `CompleteMultipartUpload` of 10,000 parts about 30,000).
pub const MAX_ELEMENTS: usize = 40_000;

/// Escapes text for an element's content or an attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all are written as
            // references to U+FFFD rather than producing a broken document.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                out.push_str("&#xFFFD;");
            }
            c => out.push(c),
        }
    }
    out
}

/// Builds an XML document.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// A document whose root is `root` in S3's namespace.
    pub fn new(root: &str) -> Writer {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push('<');
        out.push_str(root);
        out.push_str(" xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
        Writer { out }
    }

    /// A document whose root is `root`, without a namespace (errors).
    pub fn bare(root: &str) -> Writer {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push('<');
        out.push_str(root);
        out.push('>');
        Writer { out }
    }

    pub fn open(&mut self, name: &str) -> &mut Writer {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    pub fn close(&mut self, name: &str) -> &mut Writer {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self
    }

    /// `<name>text</name>`, escaped.
    pub fn text(&mut self, name: &str, text: &str) -> &mut Writer {
        self.open(name);
        self.out.push_str(&escape(text));
        self.close(name)
    }

    /// Ends the document with `</root>`.
    pub fn finish(mut self, root: &str) -> String {
        self.close(root);
        self.out
    }
}

/// An element of a request body: its local name (namespace prefix
/// dropped), its text and its child elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The trimmed text of the first child called `name`.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// Every child called `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

/// Why a request body is not XML the reader takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XmlError(pub &'static str);

struct Reader<'a> {
    s: &'a str,
    at: usize,
    elements: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.s.len() - trimmed.len();
    }

    /// Skips declarations, processing instructions and comments.
    fn skip_misc(&mut self) -> Result<(), XmlError> {
        loop {
            self.skip_space();
            let rest = self.rest();
            if rest.starts_with("<?") {
                let end = rest
                    .find("?>")
                    .ok_or(XmlError("unterminated declaration"))?;
                self.at += end + 2;
            } else if let Some(comment) = rest.strip_prefix("<!--") {
                let end = comment
                    .find("-->")
                    .ok_or(XmlError("unterminated comment"))?;
                self.at += 4 + end + 3;
            } else if rest.starts_with("<!") && !rest.starts_with("<![CDATA[") {
                return Err(XmlError("document type declarations are not accepted"));
            } else {
                return Ok(());
            }
        }
    }

    fn name(&mut self) -> Result<String, XmlError> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        if len == 0 {
            return Err(XmlError("an element has no name"));
        }
        let full = &rest[..len];
        self.at += len;
        Ok(full.rsplit(':').next().unwrap_or(full).to_owned())
    }

    fn element(&mut self, depth: usize) -> Result<Element, XmlError> {
        if depth > MAX_DEPTH {
            return Err(XmlError("the document nests too deeply"));
        }
        self.elements += 1;
        if self.elements > MAX_ELEMENTS {
            return Err(XmlError("the document has too many elements"));
        }
        if !self.rest().starts_with('<') {
            return Err(XmlError("an element was expected"));
        }
        self.at += 1;
        let raw_start = self.at;
        let name = self.name()?;
        let raw_name = self.s[raw_start..self.at].to_owned();
        // Attributes are skipped (quoted values may hold `>`).
        loop {
            let rest = self.rest();
            let Some(c) = rest.chars().next() else {
                return Err(XmlError("unterminated start tag"));
            };
            match c {
                '>' => {
                    self.at += 1;
                    break;
                }
                '/' if rest.starts_with("/>") => {
                    self.at += 2;
                    return Ok(Element {
                        name,
                        ..Element::default()
                    });
                }
                '"' | '\'' => {
                    let end = rest[1..]
                        .find(c)
                        .ok_or(XmlError("unterminated attribute"))?;
                    self.at += end + 2;
                }
                '<' => return Err(XmlError("malformed start tag")),
                c => self.at += c.len_utf8(),
            }
        }
        let mut element = Element {
            name,
            ..Element::default()
        };
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err(XmlError("unterminated element"));
            }
            if let Some(after) = rest.strip_prefix("</") {
                let end = after.find('>').ok_or(XmlError("unterminated end tag"))?;
                if after[..end].trim() != raw_name {
                    return Err(XmlError("mismatched end tag"));
                }
                self.at += 2 + end + 1;
                return Ok(element);
            }
            if let Some(after) = rest.strip_prefix("<![CDATA[") {
                let end = after.find("]]>").ok_or(XmlError("unterminated CDATA"))?;
                element.text.push_str(&after[..end]);
                self.at += 9 + end + 3;
                continue;
            }
            if rest.starts_with("<!--") || rest.starts_with("<?") {
                self.skip_misc()?;
                continue;
            }
            if rest.starts_with("<!") {
                return Err(XmlError("document type declarations are not accepted"));
            }
            if rest.starts_with('<') {
                let child = self.element(depth + 1)?;
                element.children.push(child);
                continue;
            }
            let end = rest.find('<').unwrap_or(rest.len());
            element.text.push_str(&unescape(&rest[..end])?);
            self.at += end;
        }
    }
}

/// Resolves entity and character references.
fn unescape(text: &str) -> Result<String, XmlError> {
    if !text.contains('&') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after.find(';').ok_or(XmlError("unterminated reference"))?;
        let entity = &after[..end];
        let c = match entity {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = entity
                    .strip_prefix("#x")
                    .or_else(|| entity.strip_prefix("#X"))
                {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(dec) = entity.strip_prefix('#') {
                    dec.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or(XmlError("unknown entity reference"))?
            }
        };
        out.push(c);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a request body's root element.
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError("the body is not UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader {
        s: text,
        at: 0,
        elements: 0,
    };
    reader.skip_misc()?;
    let root = reader.element(0)?;
    reader.skip_misc()?;
    if !reader.rest().trim().is_empty() {
        return Err(XmlError("content after the root element"));
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_s3_clients_send() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key>a&amp;b&#x20;&lt;c&gt;</Key></Object><Object><Key><![CDATA[x<y]]></Key><VersionId>1</VersionId></Object><Quiet>true</Quiet></Delete>"#;
        let root = parse(body).unwrap();
        assert_eq!(root.name, "Delete");
        let keys: Vec<&str> = root
            .all("Object")
            .filter_map(|o| o.child_text("Key"))
            .collect();
        assert_eq!(keys, ["a&b <c>", "x<y"]);
        assert_eq!(root.child_text("Quiet"), Some("true"));
        let complete = parse(b"<s3:CompleteMultipartUpload xmlns:s3='x'><s3:Part><s3:PartNumber>1</s3:PartNumber><s3:ETag>\"e\"</s3:ETag></s3:Part><!-- c --></s3:CompleteMultipartUpload>").unwrap();
        assert_eq!(complete.name, "CompleteMultipartUpload");
        let part = complete.child("Part").unwrap();
        assert_eq!(part.child_text("PartNumber"), Some("1"));
        assert_eq!(part.child_text("ETag"), Some("\"e\""));
        assert_eq!(parse(b"<A/>").unwrap().name, "A");
    }

    #[test]
    fn refuses_what_it_should() {
        for bad in [
            &b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>"[..],
            b"<a><b></a>",
            b"<a>",
            b"<a>&unknown;</a>",
            b"<a></a><b></b>",
            b"",
            b"text",
            b"<a x=\"1></a>",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "<a>".repeat(20), "</a>".repeat(20));
        assert!(parse(deep.as_bytes()).is_err());
        let wide = format!("<a>{}</a>", "<b/>".repeat(MAX_ELEMENTS + 1));
        assert_eq!(
            parse(wide.as_bytes()),
            Err(XmlError("the document has too many elements"))
        );
    }

    #[test]
    fn writes_escaped_documents() {
        let mut w = Writer::new("ListAllMyBucketsResult");
        w.open("Buckets")
            .text("Name", "a<&>\"'\u{1}")
            .close("Buckets");
        let doc = w.finish("ListAllMyBucketsResult");
        assert!(
            doc.contains("<Name>a&lt;&amp;&gt;&quot;&apos;&#xFFFD;</Name>"),
            "{doc}"
        );
        let back = parse(doc.as_bytes()).unwrap();
        assert_eq!(
            back.child("Buckets").unwrap().child_text("Name"),
            Some("a<&>\"'\u{FFFD}")
        );
    }

    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]
        #[test]
        fn fuzz_xml_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn fuzz_xml_text_round_trips(text in "\\PC{0,64}") {
            let mut w = Writer::bare("a");
            w.text("b", &text);
            let doc = w.finish("a");
            let back = parse(doc.as_bytes()).unwrap();
            let expected: String = text.chars().map(|c| if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') { '\u{FFFD}' } else { c }).collect();
            // The reader keeps text as written (no whitespace folding).
            prop_assert_eq!(back.child("b").map(|b| b.text.clone()), Some(expected));
        }
    }
}
