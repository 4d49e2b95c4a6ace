//! LMCache's `lm://` wire protocol (`lmcache.v1.protocol`, served by `lmcache.v1.server`).
//!
//! A request is a fixed 186-byte header, nine native-endian `i32`s (little-endian on every
//! machine LMCache runs on) then the key in 150 bytes padded with spaces:
//! `command, length, fmt, dtype, location, shape[4], key`. A PUT is followed by `length`
//! payload bytes and answered with nothing; GET, EXIST and HEALTH are answered with a 36-byte
//! header, `code, length, fmt, dtype, shape[4], location` (code 200 success, 400 failure),
//! and a GET hit with `length` payload bytes after it.

/// Bytes of a request header.
pub const REQUEST_LEN: usize = 4 * 9 + MAX_KEY_LEN;
/// Bytes of a reply header.
pub const REPLY_LEN: usize = 4 * 9;
/// Bytes of the key field (`lmcache.v1.protocol.MAX_KEY_LENGTH`).
pub const MAX_KEY_LEN: usize = 150;

/// What a client asks (`ClientCommand`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Store `length` bytes under the key; no reply.
    Put,
    /// The key's bytes, or a failure code.
    Get,
    /// Success when the key is present.
    Exist,
    /// Keys listing (the reference server does not implement it; kvtier answers failure).
    List,
    /// Success while serving.
    Health,
}

/// A parsed request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// Payload bytes (PUT).
    pub length: u64,
    /// `MemoryFormat` value.
    pub fmt: i32,
    /// `DTYPE_TO_INT` code.
    pub dtype: i32,
    /// Shape padded to 4 dims.
    pub shape: [i32; 4],
    /// The `CacheEngineKey` string.
    pub key: String,
}

/// Why a request header was refused (the connection is closed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not one of the five commands.
    #[error("unknown command {0}")]
    Command(i32),
    /// A negative payload length.
    #[error("negative payload length {0}")]
    Length(i32),
    /// The key is not UTF-8 text.
    #[error("the key is not UTF-8")]
    Key,
}

fn i32_at(b: &[u8], i: usize) -> i32 {
    i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"))
}

impl Request {
    /// Parses a request header.
    pub fn decode(b: &[u8; REQUEST_LEN]) -> Result<Self, WireError> {
        let command = match i32_at(b, 0) {
            1 => Command::Put,
            2 => Command::Get,
            3 => Command::Exist,
            4 => Command::List,
            5 => Command::Health,
            other => return Err(WireError::Command(other)),
        };
        let length = i32_at(b, 1);
        let length = u64::try_from(length).map_err(|_| WireError::Length(length))?;
        // Python's `str.ljust` pads with spaces; C clients pad with NULs.
        let key = std::str::from_utf8(&b[36..]).map_err(|_| WireError::Key)?;
        let key = key.trim_end_matches([' ', '\0']).trim_start().to_string();
        Ok(Request {
            command,
            length,
            fmt: i32_at(b, 2),
            dtype: i32_at(b, 3),
            shape: [i32_at(b, 5), i32_at(b, 6), i32_at(b, 7), i32_at(b, 8)],
            key,
        })
    }

    /// The header bytes (what LMCache's `ClientMetaMessage.serialize` sends); `None` when
    /// the key is longer than the field or the length does not fit an `i32`.
    pub fn encode(&self) -> Option<[u8; REQUEST_LEN]> {
        if self.key.len() > MAX_KEY_LEN {
            return None;
        }
        let length = i32::try_from(self.length).ok()?;
        let command = match self.command {
            Command::Put => 1,
            Command::Get => 2,
            Command::Exist => 3,
            Command::List => 4,
            Command::Health => 5,
        };
        let mut b = [b' '; REQUEST_LEN];
        let ints =
            [command, length, self.fmt, self.dtype, 0, self.shape[0], self.shape[1], self.shape[2], self.shape[3]];
        for (i, v) in ints.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[36..36 + self.key.len()].copy_from_slice(self.key.as_bytes());
        Some(b)
    }
}

/// A reply header: success with the value's length, format, dtype and shape, or failure.
pub fn reply(ok: bool, length: u32, fmt: i32, dtype: i32, shape: [i32; 4]) -> [u8; REPLY_LEN] {
    let code = if ok { 200 } else { 400 };
    let ints = [code, length as i32, fmt, dtype, shape[0], shape[1], shape[2], shape[3], 0];
    let mut b = [0u8; REPLY_LEN];
    for (i, v) in ints.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
    }
    b
}

/// A failure reply (what the reference server sends for a miss): code 400, fmt 1, float16.
pub fn failure() -> [u8; REPLY_LEN] {
    reply(false, 0, 1, 2, [0; 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_space_padding_is_trimmed() {
        let r = Request {
            command: Command::Put,
            length: 4096,
            fmt: 1,
            dtype: 3,
            shape: [2, 32, 256, 1024],
            key: "m@1@0@ab@bfloat16".into(),
        };
        let b = r.encode().unwrap();
        assert_eq!(&b[36 + r.key.len()..], &[b' '; MAX_KEY_LEN - 17][..]);
        assert_eq!(Request::decode(&b).unwrap(), r);
        let mut nul = b;
        nul[36 + r.key.len()..].fill(0);
        assert_eq!(Request::decode(&nul).unwrap().key, r.key);
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Request { command: Command::Get, length: 0, fmt: 1, dtype: 2, shape: [0; 4], key: "k".into() };
        let mut b = good.encode().unwrap();
        b[..4].copy_from_slice(&9i32.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(WireError::Command(9)));
        let mut b = good.encode().unwrap();
        b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert_eq!(Request::decode(&b), Err(WireError::Length(-5)));
        let mut b = good.encode().unwrap();
        b[40] = 0xff;
        assert_eq!(Request::decode(&b), Err(WireError::Key));
        assert!(Request { key: "k".repeat(151), ..good.clone() }.encode().is_none());
    }

    #[test]
    fn replies_carry_the_code_first_and_location_last() {
        let r = reply(true, 10, 1, 3, [1, 2, 3, 4]);
        assert_eq!(i32_at(&r, 0), 200);
        assert_eq!(i32_at(&r, 1), 10);
        assert_eq!((i32_at(&r, 4), i32_at(&r, 7), i32_at(&r, 8)), (1, 4, 0));
        assert_eq!(i32_at(&failure(), 0), 400);
    }
}
