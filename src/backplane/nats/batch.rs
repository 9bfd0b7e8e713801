//! Several envelopes of one topic and room in one NATS message.
//!
//! JetStream stores a message or does not: envelopes published together in one are stored
//! together, in their order, or not at all, and a batch sent again after a failure is the
//! same batch. So publishing keeps one batch in flight at a time (nothing sent later can be
//! stored before a batch that failed), and the round trip to the stream's leader is shared
//! by everything that queued meanwhile.
//!
//! A batch of one is the envelope alone, as it was before batches. A batch of more carries
//! the header [`HEADER`] (its count) and, for each envelope, its length (4 bytes,
//! big-endian) then its bytes. Positions name a message of a batch by the batch's stream
//! sequence and its index in the batch ([`offset`]).

use bytes::{BufMut, Bytes, BytesMut};

/// Envelopes in one batch at most (fewer than 2^[`INDEX_BITS`]).
pub(super) const MAX_COUNT: usize = 256;

/// Bytes of envelopes in one batch at most; an envelope larger than this goes alone.
pub(super) const MAX_BYTES: usize = 256 * 1024;

/// The NATS header of a batch of more than one envelope: how many.
pub(super) const HEADER: &str = "Websocket-Handler-Batch";

/// Bits of a position's offset that hold the index in the batch.
const INDEX_BITS: u32 = 16;

/// The last index a batch can have: a position with it stands after all of its batch.
pub(super) const LAST_INDEX: u64 = (1 << INDEX_BITS) - 1;

/// The offset of a position: the envelope at `index` in the batch stored at `sequence`.
pub(super) fn offset(sequence: u64, index: u64) -> u64 {
    (sequence << INDEX_BITS) | index.min(LAST_INDEX)
}

/// The stream sequence and the index in its batch that an offset names.
pub(super) fn sequence_and_index(offset: u64) -> (u64, u64) {
    (offset >> INDEX_BITS, offset & LAST_INDEX)
}

/// One NATS message's payload for `envelopes` (at least one), and the value of [`HEADER`]
/// if it needs one.
pub(super) fn encode(envelopes: &[Bytes]) -> (Bytes, Option<String>) {
    if let [one] = envelopes {
        return (one.clone(), None);
    }
    let len = envelopes.iter().map(|e| 4 + e.len()).sum();
    let mut payload = BytesMut::with_capacity(len);
    for envelope in envelopes {
        // An envelope is far below 4 GiB: a batch holds `MAX_BYTES`, or one envelope.
        payload.put_u32(u32::try_from(envelope.len()).unwrap_or(u32::MAX));
        payload.put_slice(envelope);
    }
    (payload.freeze(), Some(envelopes.len().to_string()))
}

/// A NATS message that is not a batch this crate wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BatchError {
    /// The header does not hold a count from 2 to [`MAX_COUNT`].
    #[error("the batch header `{0}` is not a count from 2 to {MAX_COUNT}")]
    Count(String),
    /// The payload ends inside an envelope, or has bytes after the last one.
    #[error("the batch's payload does not hold exactly the envelopes it counts")]
    Length,
}

/// The envelopes of a message whose [`HEADER`] is `header` (`None`: one envelope, the
/// payload), sharing `payload`'s allocation. Linear in the payload, at most
/// [`MAX_COUNT`] envelopes, whatever a publisher on the subject wrote.
pub(crate) fn split(payload: Bytes, header: Option<&str>) -> Result<Vec<Bytes>, BatchError> {
    let Some(header) = header else {
        return Ok(vec![payload]);
    };
    let count = header
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|count| (2..=MAX_COUNT).contains(count))
        .ok_or_else(|| BatchError::Count(header.chars().take(32).collect()))?;
    let mut envelopes = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let len = payload.get(at..at + 4).ok_or(BatchError::Length)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let start = at + 4;
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| start.checked_add(len))
            .filter(|end| *end <= payload.len())
            .ok_or(BatchError::Length)?;
        envelopes.push(payload.slice(start..end));
        at = end;
    }
    if at != payload.len() {
        return Err(BatchError::Length);
    }
    Ok(envelopes)
}

/// For the fuzzer: `data` is a header, a newline, then a payload. What [`split`] takes
/// must be the payload, whole and in order, with a length before each envelope, and as
/// many as the header counts; and [`encode`] of it splits back the same.
#[cfg(fuzzing)]
pub(crate) fn check(data: &[u8]) {
    let (header, payload) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (std::str::from_utf8(&data[..at]).ok(), &data[at + 1..]),
        None => (None, data),
    };
    let payload = Bytes::copy_from_slice(payload);
    let Ok(envelopes) = split(payload.clone(), header) else {
        return;
    };
    assert!(!envelopes.is_empty() && envelopes.len() <= MAX_COUNT);
    if header.is_none() {
        assert_eq!(envelopes, [payload]);
        return;
    }
    let framed: usize = envelopes.iter().map(|e| 4 + e.len()).sum();
    assert_eq!(framed, payload.len(), "every byte in one envelope");
    let (again, count) = encode(&envelopes);
    assert_eq!(again, payload);
    assert_eq!(count, Some(envelopes.len().to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_splits_into_what_was_encoded() {
        let envelopes: Vec<Bytes> = ["a", "", "ccc"].map(Bytes::from).into();
        let (payload, header) = encode(&envelopes);
        assert_eq!(header.as_deref(), Some("3"));
        assert_eq!(split(payload, header.as_deref()), Ok(envelopes));
        let one = [Bytes::from_static(b"alone")];
        let (payload, header) = encode(&one);
        assert_eq!((payload.clone(), header.clone()), (one[0].clone(), None));
        assert_eq!(split(payload, None), Ok(one.to_vec()));
    }

    #[test]
    fn what_is_not_a_batch_is_refused() {
        let (payload, _) = encode(&[Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        let refused = |payload: &[u8], header: &str| {
            split(Bytes::copy_from_slice(payload), Some(header)).is_err()
        };
        assert!(refused(&payload, "3"), "fewer than counted");
        assert!(refused(&payload, "1"), "a batch of one has no header");
        assert!(refused(&payload, "257"));
        assert!(refused(&payload, "x"));
        assert!(refused(&[&payload[..], b"!"].concat(), "2"), "bytes after");
        assert!(refused(&payload[..payload.len() - 1], "2"), "cut short");
        assert!(
            refused(&[0xff, 0xff, 0xff, 0xff, 0], "2"),
            "a length past the end"
        );
        assert!(!refused(&payload, " 2 "));
    }

    #[test]
    fn offsets_order_batches_then_indexes() {
        assert!(offset(7, LAST_INDEX) < offset(8, 0));
        assert!(offset(7, 1) < offset(7, 2));
        assert_eq!(sequence_and_index(offset(7, 3)), (7, 3));
        assert_eq!(offset(7, LAST_INDEX + 5), offset(7, LAST_INDEX), "clamped");
        assert!(MAX_COUNT as u64 <= LAST_INDEX);
    }
}
