//! Versioned record encoding: a version byte, then fields as varints and length-prefixed
//! strings. Hand-written so the on-disk format is ours to keep stable (no serde format crate),
//! and decoding is total: corrupt bytes give an error, never a panic.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct DecodeError(pub &'static str);

#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new(version: u8) -> Self {
        Enc(vec![version])
    }

    pub fn u64(&mut self, mut v: u64) -> &mut Self {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(byte);
                return self;
            }
            self.0.push(byte | 0x80);
        }
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }

    pub fn opt_str(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.u64(0),
            Some(s) => self.u64(1).str(s),
        }
    }

    pub fn strs(&mut self, v: &[String]) -> &mut Self {
        self.u64(v.len() as u64);
        for s in v {
            self.str(s);
        }
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

pub struct Dec<'a> {
    buf: &'a [u8],
    pub version: u8,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let (&version, rest) = buf.split_first().ok_or(DecodeError("empty"))?;
        Ok(Dec { buf: rest, version })
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(DecodeError("truncated number"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("number too long"))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.u64()?).map_err(|_| DecodeError("number out of range"))
    }

    pub fn str(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?).map_err(|_| DecodeError("string is not UTF-8"))
    }

    pub fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = usize::try_from(self.u64()?).map_err(|_| DecodeError("length out of range"))?;
        if len > self.buf.len() {
            return Err(DecodeError("truncated string"));
        }
        let (s, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(s.to_vec())
    }

    pub fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u64()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(DecodeError("bad option tag")),
        }
    }

    pub fn strs(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            return Err(DecodeError("list longer than record"));
        }
        (0..n).map(|_| self.str()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_an_error() {
        let mut e = Enc::new(1);
        e.u64(0)
            .u64(300)
            .u64(u64::MAX)
            .str("héllo")
            .opt_str(None)
            .opt_str(Some("x"));
        e.strs(&["a".into(), "".into()]);
        let bytes = e.finish();
        let mut d = Dec::new(&bytes).unwrap();
        assert_eq!(d.version, 1);
        assert_eq!(d.u64().unwrap(), 0);
        assert_eq!(d.u64().unwrap(), 300);
        assert_eq!(d.u64().unwrap(), u64::MAX);
        assert_eq!(d.str().unwrap(), "héllo");
        assert_eq!(d.opt_str().unwrap(), None);
        assert_eq!(d.opt_str().unwrap().as_deref(), Some("x"));
        assert_eq!(d.strs().unwrap(), vec!["a".to_string(), String::new()]);
        assert!(d.is_empty());
        for cut in 0..bytes.len() {
            let mut d = match Dec::new(&bytes[..cut]) {
                Ok(d) => d,
                Err(_) => continue,
            };
            let r = (|| -> Result<(), DecodeError> {
                d.u64()?;
                d.u64()?;
                d.u64()?;
                d.str()?;
                d.opt_str()?;
                d.opt_str()?;
                d.strs()?;
                Ok(())
            })();
            assert!(r.is_err(), "cut at {cut} decoded");
        }
    }
}
