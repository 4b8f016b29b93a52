//! Arrow IPC bytes that come from outside the host (a Flight SQL client's bound parameters, in a
//! statement handle or a `DoPut`; a checkpoint's table file on disk) checked before arrow-ipc
//! reads them. arrow-ipc sizes buffers from what a message claims before it looks at what is
//! there: a body length, or the uncompressed length in front of a compressed buffer, of 2^50
//! bytes aborts the process on a failed allocation. Every claim is checked here against the
//! bytes actually present and a cap; what passes is still decoded under `catch_unwind` by the
//! callers (arrow-ipc panics on some malformed schemas).
//!
//! **Architecture Invariant:** no Arrow IPC decoder in the host is fed a message whose header
//! has not passed [`check_message`]: its body is within the bytes present, it is not compressed,
//! and its row counts are within the caller's cap.

use datafusion::arrow::ipc::{MessageHeader, Precision, Type, root_as_message};

/// The marker in front of each message's length in the IPC stream format since Arrow 0.15.
const CONTINUATION: [u8; 4] = [0xff; 4];

/// Check one IPC message: `header` is its flatbuffer (verified here), `body_present` the bytes
/// that follow it, of which its body may claim no more. Record and dictionary batches may hold at
/// most `max_rows` rows per column and must not be compressed (weir never writes compressed IPC,
/// and a compressed buffer states its own uncompressed size, which the reader allocates).
/// Returns the body length the header claims.
pub(crate) fn check_message(header: &[u8], body_present: usize, max_rows: u64) -> Result<usize, String> {
    let message = root_as_message(header).map_err(|e| format!("an IPC message header that does not verify: {e}"))?;
    let body = usize::try_from(message.bodyLength())
        .map_err(|_| format!("an IPC message claims a negative body length ({})", message.bodyLength()))?;
    if body > body_present {
        return Err(format!("an IPC message claims a body of {body} bytes where {body_present} follow"));
    }
    let batch = match message.header_type() {
        MessageHeader::Schema => {
            // arrow-ipc panics on type parameters it does not know (an integer 0 bits wide...):
            // only flat columns of the types parameters take, with the parameters Arrow has.
            let fields = message.header_as_schema().and_then(|s| s.fields());
            for field in fields.into_iter().flatten() {
                let known = match field.type_type() {
                    Type::Null | Type::Bool | Type::Utf8 | Type::LargeUtf8 | Type::Binary | Type::LargeBinary => true,
                    Type::Int => field.type_as_int().is_some_and(|i| matches!(i.bitWidth(), 8 | 16 | 32 | 64)),
                    Type::FloatingPoint => field.type_as_floating_point().is_some_and(|f| {
                        matches!(f.precision(), Precision::HALF | Precision::SINGLE | Precision::DOUBLE)
                    }),
                    _ => false,
                };
                if !known || field.children().is_some_and(|c| !c.is_empty()) || field.dictionary().is_some() {
                    return Err(format!(
                        "an IPC schema with a column {:?} of a type not accepted here ({:?}); use integers, floats, booleans, text or binary",
                        field.name().unwrap_or(""),
                        field.type_type()
                    ));
                }
            }
            return Ok(body);
        }
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
        other => return Err(format!("an IPC message of kind {other:?}, which is not accepted here")),
    };
    let batch = batch.ok_or("an IPC batch message without its batch")?;
    if batch.compression().is_some() {
        return Err("a compressed IPC batch, which is not accepted here (send it uncompressed)".into());
    }
    let rows = |n: i64| u64::try_from(n).ok().filter(|n| *n <= max_rows);
    if rows(batch.length()).is_none() {
        return Err(format!("an IPC batch of {} rows, over the {max_rows} accepted here", batch.length()));
    }
    // arrow-ipc slices each buffer out of the body and panics on one outside it.
    for buffer in batch.buffers().into_iter().flatten() {
        let end = i128::from(buffer.offset()) + i128::from(buffer.length());
        if buffer.offset() < 0 || buffer.length() < 0 || end > body as i128 {
            return Err(format!(
                "an IPC buffer at {} of {} bytes, outside its body of {body} bytes",
                buffer.offset(),
                buffer.length()
            ));
        }
    }
    for node in batch.nodes().into_iter().flatten() {
        if rows(node.length()).is_none() || rows(node.null_count()).is_none() {
            return Err(format!(
                "an IPC column of {} values ({} null), over the {max_rows} accepted here",
                node.length(),
                node.null_count()
            ));
        }
    }
    Ok(body)
}

/// Check every message of an IPC stream held in `bytes` (see [`check_message`]), up to its end
/// marker or the end of the bytes.
pub(crate) fn check_stream(bytes: &[u8], max_rows: u64) -> Result<(), String> {
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let prefix = if rest.starts_with(&CONTINUATION) { 8 } else { 4 };
        let length = rest.get(prefix - 4..prefix).ok_or("an IPC stream cut inside a message length")?;
        let length = i32::from_le_bytes([length[0], length[1], length[2], length[3]]);
        if length == 0 {
            return Ok(());
        }
        let length = usize::try_from(length).map_err(|_| format!("an IPC message length of {length}"))?;
        let header = rest
            .get(prefix..prefix.saturating_add(length))
            .ok_or_else(|| format!("an IPC message header of {length} bytes where {} follow", rest.len() - prefix))?;
        let body = check_message(header, rest.len() - prefix - length, max_rows)?;
        at += prefix + length + body;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn stream(rows: usize) -> Vec<u8> {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from_iter_values(0..rows as i64))])
            .expect("batch");
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &schema).expect("writer");
        writer.write(&batch).expect("write");
        writer.finish().expect("finish");
        writer.into_inner().expect("bytes")
    }

    #[test]
    fn a_stream_weir_writes_passes_within_its_caps() {
        assert_eq!(check_stream(&stream(3), 3), Ok(()));
        let refused = check_stream(&stream(3), 2).expect_err("over the row cap");
        assert!(refused.contains("3 rows, over the 2"), "{refused}");
    }

    #[test]
    fn a_body_claimed_beyond_the_bytes_is_refused_before_any_allocation() {
        let bytes = stream(1);
        // The schema message comes first; cut the stream inside the record batch's body.
        for cut in [bytes.len() - 20, bytes.len() - 9] {
            let refused = check_stream(&bytes[..cut], 10);
            assert!(refused.is_err(), "a stream cut at {cut} of {} passed", bytes.len());
        }
        let length = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let mut lying = bytes.clone();
        lying.truncate(8 + length);
        assert_eq!(check_stream(&lying, 10), Ok(()), "a schema alone is a stream");
    }
}
