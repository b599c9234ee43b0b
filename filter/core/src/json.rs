//! A small JSON reader for `pluginConfig`.
//!
//! Hand-written rather than serde_json's deserializer, which alone added about 70 KB to a module
//! every worker thread of every sidecar loads (the whole filter is ~190 KB without it). Objects
//! keep their key order and duplicates are reported, so the config layer can name the field at
//! fault. Depth is bounded, so a hostile config cannot exhaust the VM's stack.

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Json>),
    /// An object, keys in document order.
    Object(Vec<(String, Json)>),
}

/// A JSON number: its value as a float, and as an integer when it is one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number {
    /// The value (approximate beyond 2^53, which no config value needs).
    pub value: f64,
    /// The value when written as a non-negative integer without fraction or exponent.
    pub unsigned: Option<u64>,
}

impl Json {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Bool(_) => "a boolean",
            Self::Number(_) => "a number",
            Self::String(_) => "a string",
            Self::Array(_) => "an array",
            Self::Object(_) => "an object",
        }
    }
}

/// Why a document is not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid JSON at byte {offset}: {what}")]
pub struct JsonError {
    /// Byte offset of the problem.
    pub offset: usize,
    /// What was expected or found.
    pub what: &'static str,
}

/// Deepest nesting accepted.
const MAX_DEPTH: usize = 32;

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Result<Json, JsonError> {
    let mut reader = Reader { bytes, pos: 0 };
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.pos != bytes.len() {
        return Err(reader.error("trailing characters after the value"));
    }
    Ok(value)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn error(&self, what: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            what,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8], value: Json) -> Result<Json, JsonError> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal(b"true", Json::Bool(true)),
            Some(b'f') => self.literal(b"false", Json::Bool(false)),
            Some(b'n') => self.literal(b"null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Json::Number),
            Some(_) => Err(self.error("expected a value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut members: Vec<(String, Json)> = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':'"));
            }
            self.pos += 1;
            let value = self.value(depth + 1)?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let mut code = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error("bad \\u escape")),
            };
            code = code * 16 + u32::from(v);
        }
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            let Some(byte) = self.peek() else {
                return Err(self.error("unterminated string"));
            };
            self.pos += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let Some(escape) = self.peek() else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    let simple = match escape {
                        b'"' => Some(b'"'),
                        b'\\' => Some(b'\\'),
                        b'/' => Some(b'/'),
                        b'b' => Some(8),
                        b'f' => Some(12),
                        b'n' => Some(b'\n'),
                        b'r' => Some(b'\r'),
                        b't' => Some(b'\t'),
                        b'u' => None,
                        _ => {
                            return Err(JsonError {
                                offset: self.pos - 1,
                                what: "bad escape",
                            });
                        }
                    };
                    if let Some(b) = simple {
                        out.push(b);
                        continue;
                    }
                    let mut code = self.hex4()?;
                    if (0xD800..0xDC00).contains(&code) {
                        // A high surrogate must be followed by an escaped low surrogate.
                        if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.error("lone surrogate"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return Err(self.error("lone surrogate"));
                        }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    }
                    let c = char::from_u32(code).ok_or_else(|| self.error("lone surrogate"))?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.error("control character in string")),
                _ => out.push(byte),
            }
        }
        String::from_utf8(out).map_err(|_| self.error("invalid UTF-8 in string"))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Number, JsonError> {
        let start = self.pos;
        let bad = JsonError {
            offset: start,
            what: "bad number",
        };
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let int_start = self.pos;
        let int_len = self.digits();
        if int_len == 0 || (int_len > 1 && self.bytes[int_start] == b'0') {
            return Err(bad);
        }
        let mut integral = true;
        let mut frac_start = self.pos;
        let mut frac_len = 0;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            frac_start = self.pos;
            frac_len = self.digits();
            if frac_len == 0 {
                return Err(bad);
            }
            integral = false;
        }
        let mut exponent: i32 = 0;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            let exp_negative = match self.peek() {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let exp_start = self.pos;
            let exp_len = self.digits();
            if exp_len == 0 {
                return Err(bad);
            }
            for &d in &self.bytes[exp_start..exp_start + exp_len] {
                exponent = exponent
                    .saturating_mul(10)
                    .saturating_add(i32::from(d - b'0'));
            }
            if exp_negative {
                exponent = -exponent;
            }
            integral = false;
        }
        // Value = 0.digits... assembled from the decimal digits; f64 precision is plenty for
        // config values, and core's exact float parser would add its tables to the module.
        let mut value = 0.0f64;
        for &d in &self.bytes[int_start..int_start + int_len] {
            value = value * 10.0 + f64::from(d - b'0');
        }
        let mut scale = 1.0f64;
        for &d in &self.bytes[frac_start..frac_start + frac_len] {
            scale /= 10.0;
            value += f64::from(d - b'0') * scale;
        }
        value *= 10f64.powi(exponent);
        if negative {
            value = -value;
        }
        let unsigned = if integral && !negative {
            let mut n: Option<u64> = Some(0);
            for &d in &self.bytes[int_start..int_start + int_len] {
                n = n
                    .and_then(|n| n.checked_mul(10))
                    .and_then(|n| n.checked_add(u64::from(d - b'0')));
            }
            n
        } else {
            None
        };
        Ok(Number { value, unsigned })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(value: f64, unsigned: Option<u64>) -> Json {
        Json::Number(Number { value, unsigned })
    }

    #[test]
    fn parses_every_kind_of_value() {
        let v = parse(br#" {"a": [1, -2.5, 3e2, true, false, null], "b": {"c": "d"}} "#).unwrap();
        assert_eq!(
            v,
            Json::Object(vec![
                (
                    "a".into(),
                    Json::Array(vec![
                        num(1.0, Some(1)),
                        num(-2.5, None),
                        num(300.0, None),
                        Json::Bool(true),
                        Json::Bool(false),
                        Json::Null,
                    ])
                ),
                (
                    "b".into(),
                    Json::Object(vec![("c".into(), Json::String("d".into()))])
                ),
            ])
        );
    }

    #[test]
    fn strings_decode_escapes_and_unicode() {
        let v = parse(br#""a\"b\\c\/d\n\u00e9\ud83d\ude00|""#).unwrap();
        assert_eq!(v, Json::String("a\"b\\c/d\n\u{e9}\u{1F600}|".into()));
        assert_eq!(
            parse("\"caf\u{e9}\"".as_bytes()).unwrap(),
            Json::String("caf\u{e9}".into())
        );
    }

    #[test]
    fn numbers_keep_their_integer_value() {
        assert_eq!(parse(b"0").unwrap(), num(0.0, Some(0)));
        assert_eq!(
            parse(b"18446744073709551615").unwrap(),
            num(18446744073709551615.0, Some(u64::MAX))
        );
        // Too large for u64: still a number, no longer an integer.
        assert!(matches!(
            parse(b"18446744073709551616").unwrap(),
            Json::Number(Number { unsigned: None, .. })
        ));
        assert_eq!(parse(b"1.25").unwrap(), num(1.25, None));
        assert_eq!(parse(b"2E-1").unwrap(), num(0.2, None));
    }

    #[test]
    fn malformed_documents_are_refused_with_an_offset() {
        for (doc, offset) in [
            (&b""[..], 0),
            (b"{", 1),
            (b"{\"a\" 1}", 5),
            (b"{\"a\":1,}", 7),
            (b"[1 2]", 3),
            (b"01", 0),
            (b"1.", 0),
            (b"-", 0),
            (b"tru", 0),
            (b"\"abc", 4),
            (b"\"\\x\"", 2),
            (b"\"\\ud800\"", 7),
            (b"{} x", 3),
            (b"\"a\x01\"", 3),
        ] {
            let err = parse(doc).unwrap_err();
            assert_eq!(
                err.offset,
                offset,
                "{:?}: {err}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(
            parse(deep.as_bytes()).unwrap_err().what,
            "nested too deeply"
        );
        let ok = "[".repeat(20) + &"]".repeat(20);
        assert!(parse(ok.as_bytes()).is_ok());
    }
}
