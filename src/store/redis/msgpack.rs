//! The MessagePack subset task records use: a writer for exactly what
//! [`super::record::encode`] writes, and a reader for anything Redis's
//! `cmsgpack` writes back (plus `bin`, for safety).

/// Bytes that are not the MessagePack a record should be.
#[derive(Debug, PartialEq)]
pub struct Malformed(pub String);

fn malformed(why: &str) -> Malformed {
    Malformed(why.to_owned())
}

/// Reads one value from the start of `bytes`.
pub fn read(bytes: &[u8]) -> Result<Value<'_>, Malformed> {
    Reader(bytes).value(0)
}

/// The MessagePack values a record holds.
pub enum Value<'a> {
    Nil,
    Bool,
    Uint(u64),
    Int(i64),
    Float(f64),
    /// `str` or `bin`: raw bytes either way.
    Bytes(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
}

/// MessagePack output, only the types a record uses.
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn field_str(&mut self, name: &str, value: &str) {
        self.bytes(name.as_bytes());
        self.bytes(value.as_bytes());
    }

    pub fn field_bytes(&mut self, name: &str, value: &[u8]) {
        self.bytes(name.as_bytes());
        self.bytes(value);
    }

    pub fn field_uint(&mut self, name: &str, value: u64) {
        self.bytes(name.as_bytes());
        self.uint(value);
    }

    pub fn map_len(&mut self, n: usize) {
        self.header(n, 0x80, 16, 0xde, 0xdf);
    }

    pub fn array_len(&mut self, n: usize) {
        self.header(n, 0x90, 16, 0xdc, 0xdd);
    }

    /// A `str` holding any bytes (cmsgpack reads no `bin`).
    pub fn bytes(&mut self, b: &[u8]) {
        let n = b.len();
        if n < 32 {
            self.0.push(0xa0 | n as u8);
        } else if n < 256 {
            self.0.extend_from_slice(&[0xd9, n as u8]);
        } else if n < 65_536 {
            self.0.push(0xda);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.0.push(0xdb);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
        self.0.extend_from_slice(b);
    }

    pub fn uint(&mut self, n: u64) {
        if n < 128 {
            self.0.push(n as u8);
        } else if n < 256 {
            self.0.extend_from_slice(&[0xcc, n as u8]);
        } else if n < 65_536 {
            self.0.push(0xcd);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else if n < (1 << 32) {
            self.0.push(0xce);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        } else {
            self.0.push(0xcf);
            self.0.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// A map or array header: fix form below `fix_max`, then 16 or 32 bits.
    fn header(&mut self, n: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
        if n < fix_max {
            self.0.push(fix | n as u8);
        } else if n < 65_536 {
            self.0.push(m16);
            self.0.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            self.0.push(m32);
            self.0.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// MessagePack input: any value `cmsgpack` writes (and `bin`, for safety).
struct Reader<'a>(&'a [u8]);

/// Deepest nesting accepted (a record is two levels deep).
const MAX_DEPTH: usize = 8;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn be(&mut self, n: usize) -> Result<u64, Malformed> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Malformed> {
        if depth > MAX_DEPTH {
            return Err(malformed("nested too deeply"));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Value::Uint(u64::from(marker)),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => Value::Bytes(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Value::Nil,
            0xc2 | 0xc3 => Value::Bool,
            0xc4 | 0xd9 => {
                let n = self.be(1)? as usize;
                Value::Bytes(self.take(n)?)
            }
            0xc5 | 0xda => {
                let n = self.be(2)? as usize;
                Value::Bytes(self.take(n)?)
            }
            0xc6 | 0xdb => {
                let n = self.be(4)? as usize;
                Value::Bytes(self.take(n)?)
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.be(8)?)),
            0xcc => Value::Uint(self.be(1)?),
            0xcd => Value::Uint(self.be(2)?),
            0xce => Value::Uint(self.be(4)?),
            0xcf => Value::Uint(self.be(8)?),
            0xd0 => Value::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Value::Int(self.be(8)? as i64),
            0xdc => {
                let n = self.be(2)? as usize;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.be(4)? as usize;
                self.array(n, depth)?
            }
            0xde => {
                let n = self.be(2)? as usize;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.be(4)? as usize;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
            other => return Err(malformed(&format!("unsupported MessagePack marker {other:#x}"))),
        })
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Malformed> {
        // Every element takes at least one byte: bound the allocation.
        let mut items = Vec::with_capacity(n.min(self.0.len()));
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value<'a>, Malformed> {
        let mut pairs = Vec::with_capacity(n.min(self.0.len() / 2));
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            pairs.push((k, v));
        }
        Ok(Value::Map(pairs))
    }
}
