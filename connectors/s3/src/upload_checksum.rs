//! The checksum of a multipart upload, as S3 has it: CreateMultipartUpload names an
//! algorithm (`x-amz-checksum-algorithm`) and a type (`x-amz-checksum-type`: `COMPOSITE`, the
//! checksum of the parts' checksums with `-<parts>`, or `FULL_OBJECT`, the whole object's
//! CRC), every part keeps its checksum of that algorithm (declared by its request or computed
//! here, as S3 computes it), ListParts and the completion answer them, a completion's listed
//! part checksums must match the parts', and the object keeps the combined value (answered
//! on HEAD and GET with `x-amz-checksum-mode: ENABLED`). Without an algorithm an upload
//! keeps no checksum, as before.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue, StatusCode};

use super::{
    checksum,
    server::{Result, err},
    xml,
};
use kvtier_blockmgr::objects::ObjectInfo;

/// A part a completion names: its number, what it is, and the checksum the completion lists
/// of it (`(algorithm, value)`), if any.
pub(super) struct NamedPart<'a> {
    pub(super) number: u32,
    pub(super) info: &'a ObjectInfo,
    pub(super) listed: Option<&'a (String, String)>,
}

/// The attributes an upload's marker keeps them as (kvtier's own: never answered as headers).
const ALGORITHM_ATTRIBUTE: &str = "checksum-algorithm";
const TYPE_ATTRIBUTE: &str = "checksum-type";
/// The header, and the attribute an object keeps, naming its checksum's type.
pub(super) const TYPE_HEADER: &str = "x-amz-checksum-type";

/// An upload's checksum: its algorithm (as headers name it: `crc32c`) and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UploadChecksum {
    algorithm: &'static str,
    full_object: bool,
}

fn invalid(what: impl Into<String>) -> super::xml::S3Error {
    err(StatusCode::BAD_REQUEST, "InvalidRequest", what)
}

impl UploadChecksum {
    /// What a CreateMultipartUpload asks for (`Ok(None)`: no algorithm). S3's defaults: a
    /// CRC-64/NVME is of the full object, the others composite; a SHA is never of the full
    /// object, a CRC-64/NVME never composite.
    pub(super) fn from_create(headers: &HeaderMap) -> Result<Option<UploadChecksum>> {
        let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("?").to_ascii_lowercase());
        let (algorithm, kind) = (text("x-amz-checksum-algorithm"), text(TYPE_HEADER));
        let Some(algorithm) = algorithm else {
            return match kind {
                None => Ok(None),
                Some(_) => Err(invalid("x-amz-checksum-type needs x-amz-checksum-algorithm")),
            };
        };
        let algorithm = checksum::NAMES
            .into_iter()
            .find(|n| *n == algorithm)
            .ok_or_else(|| invalid(format!("x-amz-checksum-algorithm {algorithm:?} is not one S3 has")))?;
        let full_object = match kind.as_deref() {
            None => algorithm == "crc64nvme",
            Some("full_object") if algorithm.starts_with("sha") => {
                return Err(invalid(format!("the FULL_OBJECT checksum type cannot be used with {algorithm}")));
            }
            Some("composite") if algorithm == "crc64nvme" => {
                return Err(invalid("the COMPOSITE checksum type cannot be used with crc64nvme"));
            }
            Some("full_object") => true,
            Some("composite") => false,
            Some(other) => return Err(invalid(format!("x-amz-checksum-type {other:?} (COMPOSITE or FULL_OBJECT)"))),
        };
        Ok(Some(UploadChecksum { algorithm, full_object }))
    }

    /// Kept on the upload's marker.
    pub(super) fn keep(&self, attributes: &mut BTreeMap<String, String>) {
        attributes.insert(ALGORITHM_ATTRIBUTE.into(), self.algorithm.into());
        attributes.insert(TYPE_ATTRIBUTE.into(), self.kind().into());
    }

    /// The checksum of the upload whose marker is `marker` (`None`: it named none).
    pub(super) fn of_upload(marker: &ObjectInfo) -> Option<UploadChecksum> {
        let attributes = marker.attributes();
        let algorithm = attributes.get(ALGORITHM_ATTRIBUTE)?;
        let algorithm = checksum::NAMES.into_iter().find(|n| n == algorithm)?;
        Some(UploadChecksum { algorithm, full_object: attributes.get(TYPE_ATTRIBUTE)? == "FULL_OBJECT" })
    }

    /// The attributes of an upload's marker less those [`UploadChecksum::keep`] added.
    pub(super) fn strip(attributes: &mut BTreeMap<String, String>) {
        attributes.remove(ALGORITHM_ATTRIBUTE);
        attributes.remove(TYPE_ATTRIBUTE);
    }

    pub(super) fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    fn kind(&self) -> &'static str {
        if self.full_object { "FULL_OBJECT" } else { "COMPOSITE" }
    }

    /// CreateMultipartUpload's and ListParts' answer headers.
    pub(super) fn answer(&self, out: &mut HeaderMap) {
        out.insert("x-amz-checksum-algorithm", HeaderValue::from_static(xml_algorithm(self.algorithm)));
        out.insert(TYPE_HEADER, HeaderValue::from_static(self.kind()));
    }

    /// The elements naming it in ListParts and in an upload of ListMultipartUploads.
    pub(super) fn list_parts_xml(&self) -> String {
        format!(
            "<ChecksumAlgorithm>{}</ChecksumAlgorithm><ChecksumType>{}</ChecksumType>",
            xml_algorithm(self.algorithm),
            self.kind()
        )
    }

    /// A part's checksum computed here, unless its request declares one, which must be of
    /// this algorithm (S3: "Checksum Type mismatch").
    pub(super) fn for_part(&self, declared: Option<&checksum::Checksum>) -> Result<Option<checksum::Checksum>> {
        match declared {
            Some(c) if c.algorithm() == self.algorithm => Ok(None),
            Some(c) => Err(invalid(format!(
                "checksum type mismatch: the upload's is {}, the part's {}",
                self.algorithm,
                c.algorithm()
            ))),
            None => Ok(Some(checksum::Checksum::computed(self.algorithm))),
        }
    }

    /// The object's checksum attributes from its `parts` (in order) and what the completion
    /// lists of each (`listed`: its `Checksum<ALGORITHM>`, if any): each listed checksum
    /// must be the part's (else `InvalidPart`), a composite completion must list them all,
    /// and a checksum the completion's headers declare must be the combined one (`BadDigest`).
    pub(super) fn complete(&self, parts: &[NamedPart<'_>], headers: &HeaderMap) -> Result<BTreeMap<String, String>> {
        let header = format!("x-amz-checksum-{}", self.algorithm);
        let mut values = Vec::with_capacity(parts.len());
        for NamedPart { number: n, info: part, listed } in parts {
            let kept = part.attributes().get(&header).map(String::as_str);
            match (listed, kept) {
                (Some((algorithm, value)), Some(kept)) if algorithm == self.algorithm && value == kept => {}
                (None, Some(_)) if self.full_object => {}
                (None, _) => {
                    return Err(invalid(format!(
                        "the upload was created with a {} checksum: the completion must list each part's; part {n}'s is missing",
                        self.algorithm
                    )));
                }
                _ => {
                    let what = format!("part {n}'s {} checksum is not the one listed", self.algorithm);
                    return Err(err(StatusCode::BAD_REQUEST, "InvalidPart", what));
                }
            }
            values.push((kept.unwrap_or_default(), part.size));
        }
        let combined = if self.full_object {
            checksum::full_object(self.algorithm, &values)
        } else {
            checksum::composite(self.algorithm, &values.iter().map(|(v, _)| *v).collect::<Vec<_>>())
        }
        .ok_or_else(|| {
            err(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("a part's {header} is not one"))
        })?;
        if let Some(declared) = headers.get(&header) {
            let declared = declared.to_str().unwrap_or("?");
            let bare = |v: &str| v.split_once('-').map_or(v, |(v, _)| v).to_string();
            if bare(declared) != bare(&combined) {
                let what = format!("{header} {declared} is not the parts' ({combined})");
                return Err(err(StatusCode::BAD_REQUEST, "BadDigest", what));
            }
        }
        if let Some(kind) = headers.get(TYPE_HEADER)
            && !kind.as_bytes().eq_ignore_ascii_case(self.kind().as_bytes())
        {
            return Err(invalid(format!("the upload's checksum type is {}, not {kind:?}", self.kind())));
        }
        Ok(BTreeMap::from([(header, combined), (TYPE_HEADER.to_string(), self.kind().to_string())]))
    }
}

/// What a copy in one piece keeps of its source's checksum attributes: a whole-object
/// checksum holds for the copy's bytes as well; a composite one (of the source's parts,
/// `-<parts>`) names parts the copy does not have, and goes.
pub(super) fn for_copy(attributes: &mut BTreeMap<String, String>) {
    if attributes.remove(TYPE_HEADER).is_some_and(|kind| kind == "COMPOSITE") {
        attributes.retain(|name, _| !name.starts_with("x-amz-checksum-"));
    }
}

/// An algorithm as XML elements and answer headers name it (`CRC32C`).
fn xml_algorithm(algorithm: &str) -> &'static str {
    match algorithm {
        "crc32" => "CRC32",
        "crc32c" => "CRC32C",
        "crc64nvme" => "CRC64NVME",
        "sha1" => "SHA1",
        _ => "SHA256",
    }
}

/// The `<Checksum<ALGORITHM>>` elements (and `<ChecksumType>`) of what `info` keeps: the
/// answer of a completion, a part in ListParts, a CopyPartResult.
pub(super) fn elements(info: &ObjectInfo) -> String {
    let mut out = String::new();
    for (name, value) in info.attributes() {
        if let Some(algorithm) = name.strip_prefix("x-amz-checksum-").filter(|a| checksum::NAMES.contains(a)) {
            let tag = format!("Checksum{}", xml_algorithm(algorithm));
            out.push_str(&format!("<{tag}>{}</{tag}>", xml::escape(value)));
        }
    }
    if let Some(kind) = info.attributes().get(TYPE_HEADER) {
        out.push_str(&format!("<ChecksumType>{}</ChecksumType>", xml::escape(kind)));
    }
    out
}

/// The checksum a completion's `<Part>` lists (`<ChecksumCRC32C>...`): (algorithm, value).
pub(super) fn listed(part: &std::collections::HashMap<String, String>) -> Option<(String, String)> {
    checksum::NAMES.into_iter().find_map(|algorithm| {
        let value = part.get(&format!("Checksum{}", xml_algorithm(algorithm)))?;
        Some((algorithm.to_string(), value.trim().to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(algorithm: Option<&str>, kind: Option<&str>) -> Result<Option<UploadChecksum>> {
        let mut h = HeaderMap::new();
        for (name, v) in [("x-amz-checksum-algorithm", algorithm), (TYPE_HEADER, kind)] {
            if let Some(v) = v {
                h.insert(name, v.parse().unwrap());
            }
        }
        UploadChecksum::from_create(&h)
    }

    #[test]
    fn create_takes_s3s_algorithms_types_and_defaults_and_refuses_the_rest() {
        assert_eq!(create(None, None).unwrap(), None);
        let full = |a: &'static str, f: bool| Some(UploadChecksum { algorithm: a, full_object: f });
        assert_eq!(create(Some("CRC32"), None).unwrap(), full("crc32", false));
        assert_eq!(create(Some("CRC64NVME"), None).unwrap(), full("crc64nvme", true));
        assert_eq!(create(Some("CRC32C"), Some("FULL_OBJECT")).unwrap(), full("crc32c", true));
        assert_eq!(create(Some("SHA256"), Some("COMPOSITE")).unwrap(), full("sha256", false));
        for (a, k) in [
            (None, Some("COMPOSITE")),
            (Some("MD7"), None),
            (Some("SHA1"), Some("FULL_OBJECT")),
            (Some("CRC64NVME"), Some("COMPOSITE")),
            (Some("CRC32"), Some("WHOLE")),
        ] {
            assert_eq!(create(a, k).unwrap_err().code, "InvalidRequest", "{a:?} {k:?}");
        }
    }

    #[test]
    fn a_copy_keeps_a_whole_object_checksum_and_drops_a_composite_one() {
        let of = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let mut composite = of(&[("x-amz-checksum-crc32", "AAAAAA==-3"), (TYPE_HEADER, "COMPOSITE"), ("etag", "x")]);
        for_copy(&mut composite);
        assert_eq!(composite, of(&[("etag", "x")]));
        let mut full = of(&[("x-amz-checksum-crc32", "AAAAAA=="), (TYPE_HEADER, "FULL_OBJECT")]);
        for_copy(&mut full);
        assert_eq!(full, of(&[("x-amz-checksum-crc32", "AAAAAA==")]));
    }

    #[test]
    fn a_completions_part_lists_its_checksum() {
        let part = |fields: &[(&str, &str)]| fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let crc32c = part(&[("PartNumber", "1"), ("ETag", "\"x\""), ("ChecksumCRC32C", "AAAAAA==")]);
        assert_eq!(listed(&crc32c), Some(("crc32c".into(), "AAAAAA==".into())));
        assert_eq!(listed(&part(&[("PartNumber", "1"), ("ChecksumCRC32", " q ")])), Some(("crc32".into(), "q".into())));
        assert_eq!(listed(&part(&[("PartNumber", "1")])), None);
    }
}
