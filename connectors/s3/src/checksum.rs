//! S3's additional checksums of a body (`x-amz-checksum-{crc32,crc32c,crc64nvme,sha1,sha256}`):
//! sent as a header, or with an aws-chunked body as a trailer that `x-amz-trailer` announces
//! (what AWS SDKs send by default since 2025). Computed over the payload as it arrives and
//! compared before the commit: a body that does not match is refused (`BadDigest`). A part of
//! a multipart upload that names an algorithm gets its checksum computed here when its
//! request declares none (as S3 does), and the upload's object gets the parts' combined:
//! composite (the checksum of their checksums) or, for the CRCs, the whole object's CRC
//! (combined from the parts' CRCs and sizes, without reading a byte again).

use base64::{Engine, engine::general_purpose::STANDARD};
use http::HeaderMap;
use sha1::Digest as _;

static CRC64_NVME: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

/// The algorithms S3 names, by their header's suffix.
pub(crate) const NAMES: [&str; 5] = ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"];

/// Where the value a computed checksum is compared with comes from.
#[derive(Debug, Clone)]
enum Declared {
    Header(String),
    Trailer,
    /// Nothing to compare: computed to be kept (a part of an upload that names an algorithm).
    Nothing,
}

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
    declared: Declared,
    state: State,
}

impl std::fmt::Debug for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checksum").field("header", &self.header).field("declared", &self.declared).finish()
    }
}

impl Checksum {
    fn new(algorithm: &str, declared: Declared) -> Checksum {
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
                found.push(Checksum::new(name, Declared::Header(v.trim().to_string())));
            }
        }
        if let Some(trailer) = headers.get("x-amz-trailer") {
            let trailer = trailer.to_str().map_err(|_| "x-amz-trailer is not text".to_string())?;
            for t in trailer.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                match t.strip_prefix("x-amz-checksum-") {
                    Some(name) if NAMES.contains(&name) => found.push(Checksum::new(name, Declared::Trailer)),
                    _ => return Err(format!("x-amz-trailer names {t:?}, not a checksum S3 has")),
                }
            }
        }
        if found.len() > 1 {
            return Err("a request declares one x-amz-checksum at most".into());
        }
        Ok(found.pop())
    }

    /// The checksum of `algorithm` (one of [`NAMES`]) of a payload, computed to be kept.
    pub(crate) fn computed(algorithm: &str) -> Checksum {
        Checksum::new(algorithm, Declared::Nothing)
    }

    /// Its algorithm, as its header names it (`crc32c`, ...).
    pub(crate) fn algorithm(&self) -> &str {
        self.header.trim_start_matches("x-amz-checksum-")
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
    pub(crate) fn value(self) -> String {
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
            Declared::Header(v) => v,
            Declared::Nothing => return Ok((header, self.value())),
            Declared::Trailer => trailers
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

/// S3's composite checksum of parts whose checksums of `algorithm` are `parts` (base64): the
/// checksum of their concatenated digests, and `-<parts>`. `None` if one is not base64.
pub(crate) fn composite(algorithm: &str, parts: &[&str]) -> Option<String> {
    let mut c = Checksum::computed(algorithm);
    for part in parts {
        c.update(&STANDARD.decode(part).ok()?);
    }
    Some(format!("{}-{}", c.value(), parts.len()))
}

/// The CRC (`crc32`, `crc32c` or `crc64nvme`) of the whole of consecutive parts, from each
/// one's CRC (base64) and length, as S3's FULL_OBJECT checksum of a multipart upload. `None`
/// for another algorithm or a value that is not one of its CRCs.
pub(crate) fn full_object(algorithm: &str, parts: &[(&str, u64)]) -> Option<String> {
    let crc = Crc::of(algorithm)?;
    let bytes = (crc.width / 8) as usize;
    let mut whole = 0u64;
    for (value, len) in parts {
        let raw = STANDARD.decode(value).ok().filter(|r| r.len() == bytes)?;
        let part = raw.iter().fold(0u64, |v, b| v << 8 | u64::from(*b));
        whole = crc.combine(whole, part, *len);
    }
    Some(STANDARD.encode(&whole.to_be_bytes()[8 - bytes..]))
}

/// A reflected CRC whose initial value and final xor are all ones (CRC-32, CRC-32C,
/// CRC-64/NVME), for combining: crc(a ‖ b) = crc(a)·x^(8·|b|) mod P xor crc(b), as zlib's
/// `crc32_combine` (the all-ones pre- and post-conditioning cancel out).
struct Crc {
    width: u32,
    /// The polynomial, bit-reversed.
    poly: u64,
}

impl Crc {
    fn of(algorithm: &str) -> Option<Crc> {
        match algorithm {
            "crc32" => Some(Crc { width: 32, poly: 0xEDB8_8320 }),
            "crc32c" => Some(Crc { width: 32, poly: 0x82F6_3B78 }),
            "crc64nvme" => Some(Crc { width: 64, poly: 0x9A6C_9329_AC4B_C9B5 }),
            _ => None,
        }
    }

    /// a·b mod P (in the reflected representation, where x^0 is the top bit).
    fn multiply(&self, a: u64, mut b: u64) -> u64 {
        let (mut bit, mut product) = (1u64 << (self.width - 1), 0u64);
        while bit != 0 {
            if a & bit != 0 {
                product ^= b;
            }
            bit >>= 1;
            b = if b & 1 != 0 { (b >> 1) ^ self.poly } else { b >> 1 };
        }
        product
    }

    /// x^(8·bytes) mod P, by squaring.
    fn shift(&self, bytes: u64) -> u64 {
        let (mut power, mut result) = (1u64 << (self.width - 2), 1u64 << (self.width - 1));
        let mut n = bytes.saturating_mul(8);
        while n != 0 {
            if n & 1 != 0 {
                result = self.multiply(power, result);
            }
            power = self.multiply(power, power);
            n >>= 1;
        }
        result
    }

    fn combine(&self, first: u64, second: u64, second_len: u64) -> u64 {
        self.multiply(self.shift(second_len), first) ^ second
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(algorithm: &str, data: &[u8]) -> String {
        let mut c = Checksum::computed(algorithm);
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
    fn parts_combine_into_the_whole_objects_crc_and_into_s3s_composite() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for algorithm in ["crc32", "crc32c", "crc64nvme"] {
            for cuts in [vec![0, 10_000], vec![0, 1, 10_000], vec![0, 4096, 4097, 9000, 10_000], vec![0, 0, 10_000]] {
                let parts: Vec<(String, u64)> =
                    cuts.windows(2).map(|w| (of(algorithm, &data[w[0]..w[1]]), (w[1] - w[0]) as u64)).collect();
                let parts: Vec<(&str, u64)> = parts.iter().map(|(v, l)| (v.as_str(), *l)).collect();
                assert_eq!(full_object(algorithm, &parts), Some(of(algorithm, &data)), "{algorithm} {cuts:?}");
            }
        }
        assert_eq!(full_object("sha256", &[]), None);
        assert_eq!(full_object("crc32", &[("AAAAAAAAAAA=", 1)]), None, "a CRC-64 is not a CRC-32");
        // Composite: the CRC-32 of the parts' CRC-32s, big-endian, then the part count.
        let (a, b) = (of("crc32", b"hello "), of("crc32", b"world"));
        let raw = [STANDARD.decode(&a).unwrap(), STANDARD.decode(&b).unwrap()].concat();
        assert_eq!(composite("crc32", &[&a, &b]), Some(format!("{}-2", of("crc32", &raw))));
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
