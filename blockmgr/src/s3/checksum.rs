//! S3's additional checksums of a body (`x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`):
//! sent as a header, or with an aws-chunked body as a trailer that `x-amz-trailer` announces
//! (what AWS SDKs send by default since 2025). Computed over the payload as it arrives and
//! compared before the commit: a body that does not match is refused (`BadDigest`).

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderMap;
use sha1::Digest as _;

static CRC64_NVME: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

/// The algorithms S3 names, by their header's suffix.
const NAMES: [&str; 5] = ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"];

enum State {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc::Digest<'static, u64>),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

/// One declared checksum being computed.
pub(crate) struct Checksum {
    /// `x-amz-checksum-<algorithm>`.
    header: String,
    /// The value from the header; `None`: it comes in the trailer.
    declared: Option<String>,
    state: State,
}

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checksum").field("header", &self.header).field("declared", &self.declared).finish()
    }
}

impl Checksum {
    fn new(algorithm: &str, declared: Option<String>) -> Checksum {
        let state = match algorithm {
            "crc32" => State::Crc32(crc32fast::Hasher::new()),
            "crc32c" => State::Crc32c(0),
            "crc64nvme" => State::Crc64Nvme(CRC64_NVME.digest()),
            "sha1" => State::Sha1(sha1::Sha1::new()),
            _ => State::Sha256(sha2::Sha256::new()),
        };
        Checksum { header: format!("x-amz-checksum-{algorithm}"), declared, state }
    }

    /// The checksum a request declares (`Ok(None)`: none); more than one, or a trailer of an
    /// algorithm S3 does not have, is an error naming it.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<Checksum>, String> {
        let mut found = Vec::new();
        for name in NAMES {
            if let Some(v) = headers.get(format!("x-amz-checksum-{name}")) {
                let v = v.to_str().map_err(|_| format!("x-amz-checksum-{name} is not text"))?;
                found.push(Checksum::new(name, Some(v.trim().to_string())));
            }
        }
        if let Some(trailer) = headers.get("x-amz-trailer") {
            let trailer = trailer.to_str().map_err(|_| "x-amz-trailer is not text".to_string())?;
            for t in trailer.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                match t.strip_prefix("x-amz-checksum-") {
                    Some(name) if NAMES.contains(&name) => found.push(Checksum::new(name, None)),
                    _ => return Err(format!("x-amz-trailer names {t:?}, not a checksum S3 has")),
                }
            }
        }
        if found.len() > 1 {
            return Err("a request declares one x-amz-checksum at most".into());
        }
        Ok(found.pop())
    }

    /// Takes payload bytes.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Crc32(h) => h.update(data),
            State::Crc32c(c) => *c = kvtier_tiers::crc32c_append(*c, data),
            State::Crc64Nvme(d) => d.update(data),
            State::Sha1(h) => h.update(data),
            State::Sha256(h) => h.update(data),
        }
    }

    /// The checksum of the payload, as S3 writes it (base64 of the big-endian value).
    fn value(self) -> String {
        let bytes = match self.state {
            State::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            State::Crc32c(c) => c.to_be_bytes().to_vec(),
            State::Crc64Nvme(d) => d.finalize().to_be_bytes().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
        };
        STANDARD.encode(bytes)
    }

    /// Compares the payload's checksum with the declared one (the header's, or the trailer
    /// line `x-amz-checksum-<algorithm>:<value>` among `trailers`); the error says which
    /// failed. What matched, as the object keeps it: (`x-amz-checksum-<algorithm>`, value).
    pub(crate) fn verify(self, trailers: &[String]) -> Result<(String, String), String> {
        let header = self.header.clone();
        let declared = match self.declared.clone() {
            Some(v) => v,
            None => trailers
                .iter()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim().eq_ignore_ascii_case(&header).then(|| value.trim().to_string())
                })
                .ok_or_else(|| format!("the body's trailer has no {header}"))?,
        };
        let computed = self.value();
        if computed != declared {
            return Err(format!("{header} {declared} does not match the body's ({computed})"));
        }
        Ok((header, computed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(algorithm: &str, data: &[u8]) -> String {
        let mut c = Checksum::new(algorithm, None);
        for piece in data.chunks(3) {
            c.update(piece);
        }
        c.value()
    }

    fn be(v: u64, len: usize) -> String {
        STANDARD.encode(&v.to_be_bytes()[8 - len..])
    }

    #[test]
    fn each_algorithm_gives_its_catalogued_check_value() {
        // The check values of "123456789" in the CRC catalogue, and the digests' known ones.
        let data = b"123456789";
        assert_eq!(of("crc32", data), be(0xCBF4_3926, 4));
        assert_eq!(of("crc32c", data), be(0xE306_9283, 4));
        assert_eq!(of("crc64nvme", data), be(0xAE8B_1486_0A79_9888, 8));
        assert_eq!(
            of("sha1", b"abc"),
            STANDARD.encode(hex::decode("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap())
        );
        assert_eq!(
            of("sha256", b"abc"),
            STANDARD.encode(hex::decode("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap())
        );
    }

    #[test]
    fn declared_checksums_are_verified_from_the_header_or_the_trailer() {
        let mut headers = HeaderMap::new();
        assert!(Checksum::from_headers(&headers).unwrap().is_none());
        headers.insert("x-amz-checksum-crc32", be(0xCBF4_3926, 4).parse().unwrap());
        let mut c = Checksum::from_headers(&headers).unwrap().unwrap();
        c.update(b"123456789");
        c.verify(&[]).unwrap();
        let mut c = Checksum::from_headers(&headers).unwrap().unwrap();
        c.update(b"12345678");
        assert!(c.verify(&[]).unwrap_err().contains("does not match"));

        let mut trailer = HeaderMap::new();
        trailer.insert("x-amz-trailer", "x-amz-checksum-crc64nvme".parse().unwrap());
        let line = format!("x-amz-checksum-crc64nvme:{}", be(0xAE8B_1486_0A79_9888, 8));
        let mut c = Checksum::from_headers(&trailer).unwrap().unwrap();
        c.update(b"123456789");
        c.verify(std::slice::from_ref(&line)).unwrap();
        let c = Checksum::from_headers(&trailer).unwrap().unwrap();
        assert!(c.verify(&[line]).unwrap_err().contains("does not match"), "an empty body");
        let c = Checksum::from_headers(&trailer).unwrap().unwrap();
        assert!(c.verify(&[]).unwrap_err().contains("trailer has no"));

        trailer.insert("x-amz-trailer", "x-amz-checksum-md7".parse().unwrap());
        assert!(Checksum::from_headers(&trailer).unwrap_err().contains("md7"));
        headers.insert("x-amz-trailer", "x-amz-checksum-sha1".parse().unwrap());
        assert!(Checksum::from_headers(&headers).unwrap_err().contains("one x-amz-checksum"));
    }
}
