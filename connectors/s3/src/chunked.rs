//! `aws-chunked` bodies (`Content-Encoding: aws-chunked`), as AWS SDKs send uploads with a
//! trailing checksum (`x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`): the body is
//! `<hex size>\r\n<bytes>\r\n` chunks, then `0\r\n`, trailer lines, and `\r\n`.
//!
//! The decoder takes the body as it arrives and hands back the payload bytes. Chunk
//! signatures (`;chunk-signature=`) are not accepted: the signed streaming modes are refused
//! before a body is read.

use bytes::{Buf, Bytes, BytesMut};

/// Longest size line or trailer line accepted.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(usize),
    /// Expecting the `\r\n` after a chunk.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

/// An incremental aws-chunked decoder.
#[derive(Debug)]
pub(crate) struct AwsChunked {
    buf: BytesMut,
    state: State,
    /// The trailer lines (`x-amz-checksum-...:value`).
    pub(crate) trailers: Vec<String>,
}

impl AwsChunked {
    pub(crate) fn new() -> Self {
        AwsChunked { buf: BytesMut::new(), state: State::Size, trailers: Vec::new() }
    }

    /// Whether the final chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// A line ending in `\r\n` at the front of the buffer, without it; `Ok(None)` for more.
    fn line(&mut self) -> Result<Option<String>, String> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(at) => {
                let line = String::from_utf8(self.buf[..at].to_vec()).map_err(|_| "a line is not UTF-8".to_string())?;
                self.buf.advance(at + 2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err("a chunk line is too long".into()),
            None => Ok(None),
        }
    }

    /// Feeds body bytes; returns the payload bytes they complete.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Vec<Bytes>, String> {
        self.buf.extend_from_slice(input);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Size => {
                    let Some(line) = self.line()? else { break };
                    if line.contains(';') {
                        return Err("signed chunks (chunk-signature) are not accepted".into());
                    }
                    let size = usize::from_str_radix(line.trim(), 16).map_err(|_| format!("chunk size {line:?}"))?;
                    self.state = if size == 0 { State::Trailer } else { State::Data(size) };
                }
                State::Data(left) => {
                    if self.buf.is_empty() {
                        break;
                    }
                    let n = left.min(self.buf.len());
                    out.push(self.buf.split_to(n).freeze());
                    self.state = if n == left { State::DataEnd } else { State::Data(left - n) };
                }
                State::DataEnd => {
                    if self.buf.len() < 2 {
                        break;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err("a chunk is longer than its size".into());
                    }
                    self.buf.advance(2);
                    self.state = State::Size;
                }
                State::Trailer => {
                    let Some(line) = self.line()? else { break };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else if self.trailers.len() < 16 {
                        self.trailers.push(line);
                    } else {
                        return Err("too many trailer lines".into());
                    }
                }
                State::Done => {
                    if !self.buf.is_empty() {
                        return Err("bytes after the last chunk".into());
                    }
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(body: &[u8], piece: usize) -> Result<(Vec<u8>, AwsChunked), String> {
        let mut d = AwsChunked::new();
        let mut out = Vec::new();
        for p in body.chunks(piece) {
            for b in d.feed(p)? {
                out.extend_from_slice(&b);
            }
        }
        Ok((out, d))
    }

    #[test]
    fn bodies_decode_however_they_are_split() {
        let body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc64nvme:AAAAAAAAAAA=\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (out, d) = decode_in_pieces(body, piece).unwrap();
            assert_eq!(out, b"hello world", "pieces of {piece}");
            assert!(d.is_done());
            assert_eq!(d.trailers, vec!["x-amz-checksum-crc64nvme:AAAAAAAAAAA=".to_string()]);
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for (body, why) in [
            (&b"zz\r\nhello\r\n"[..], "chunk size"),
            (b"3\r\nhello\r\n", "longer than its size"),
            (b"5;chunk-signature=ab\r\nhello\r\n", "signed chunks"),
            (b"0\r\n\r\nextra", "after the last chunk"),
        ] {
            let e = decode_in_pieces(body, 100).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(!decode_in_pieces(b"5\r\nhel", 100).unwrap().1.is_done(), "cut short: not done");
    }
}
