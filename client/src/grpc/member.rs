//! A member's read of a key from another member, which may answer with a read replica to
//! read from instead (see cluster/read_replicas.rs).

use bytes::Bytes;
use kvtier_proto::v1;
use kvtier_tiers::TierKind;

use super::{Client, ClientError, GetItem};

/// On a member's get (with the peer header): the read may count towards read replicas and
/// be answered with holders to read from instead of the bytes. Its value is `1`.
pub const READ_HEADER: &str = "x-kvtier-read";
/// On such a read, once per holder the reader was sent to and did not find the key on:
/// the owner forgets them and answers the bytes itself.
pub const TRIED_HEADER: &str = "x-kvtier-read-tried";

/// What a get answer tells a member beyond the item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberHint {
    /// Keep the bytes as a read replica.
    pub keep: bool,
    /// Read the key from these instead (`MISS_REASON_ELSEWHERE`).
    pub holders: Vec<String>,
}

/// The answer to a member's read of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRead {
    /// The bytes (checked).
    Hit {
        /// The block's bytes.
        data: Bytes,
        /// Their CRC-32C, as the member checked it.
        crc32c: u32,
        /// The member's tier that held them.
        tier: TierKind,
        /// The reader's node keeps them as a read replica.
        keep: bool,
    },
    /// Read it from one of these members instead.
    Elsewhere {
        /// The members to read it from.
        holders: Vec<String>,
        /// The reader's node keeps what it reads (it is a read replica now).
        keep: bool,
    },
    /// The member does not have it.
    Miss,
}

impl Client {
    /// Reads `key` of `namespace` as a member whose own copy is missing (this must be a
    /// member's connection, see [`Client::as_peer`]). `tried`: holders an earlier answer
    /// named that did not have it.
    pub async fn read_as_member(
        &self,
        namespace: &str,
        key: &[u8],
        tried: &[String],
    ) -> Result<MemberRead, ClientError> {
        let req = v1::GetRequest { namespace: namespace.into(), keys: vec![Bytes::copy_from_slice(key)] };
        let mut request = self.request(req);
        let headers = request.metadata_mut();
        headers.insert(READ_HEADER, tonic::metadata::AsciiMetadataValue::from_static("1"));
        for holder in tried {
            let value = holder.parse().map_err(|_| ClientError::Protocol(format!("node id {holder:?}")))?;
            headers.append(TRIED_HEADER, value);
        }
        let (item, hint) = self.get_answers(request, 1).await?.pop().expect("one answer for one key");
        Ok(match item {
            GetItem::Hit { data, tier, crc32c } => MemberRead::Hit { data, crc32c, tier, keep: hint.keep },
            GetItem::Miss { .. } if !hint.holders.is_empty() => {
                MemberRead::Elsewhere { holders: hint.holders, keep: hint.keep }
            }
            GetItem::Miss { .. } => MemberRead::Miss,
        })
    }
}
