//! The scalar UDFs of the ingest plan that a cluster runs too: the row
//! checks (`cc_reject_<input>`), the play parser (`cc_play`) and the song
//! key (`cc_song_key`), all on the row rules of [`cohortcast_core::saavn`].

use std::sync::Arc;

use cohortcast_core::hours;
use cohortcast_core::saavn::{self, Input, Reject};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, StringArray, StructArray, UInt32Builder, UInt64Array, UInt64Builder, UInt8Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::scalar::ScalarValue;

/// The UDF `cc_reject_<input>(line)`: the reject code, or NULL for a good row.
pub(crate) fn reject_udf(input: Input) -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let lines = cast(&arrays[0], &DataType::Utf8)?;
        let out: StringArray = lines
            .as_string::<i32>()
            .iter()
            .map(|l| match l {
                None => Some(Reject::WrongFieldCount.code()),
                Some(l) => input.check(l).err().map(|r| r.code()),
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    };
    create_udf(
        &format!("cc_reject_{}", input.name()),
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(fun),
    )
}

/// The fields `cc_play` returns: the reject code (0 for a good row, else
/// 1 + its index in [`Reject::ALL`]), the user key's high and low halves,
/// the song key ([`saavn::song_key`]) and the bit of the play's hour of the
/// day ([`hours::hour_bit`]; all but the first NULL on a rejected row).
pub(crate) fn play_fields() -> Fields {
    Fields::from(vec![
        Field::new("reject", DataType::UInt8, false),
        Field::new("user_hi", DataType::UInt64, true),
        Field::new("user_lo", DataType::UInt64, true),
        Field::new("song_key", DataType::UInt64, true),
        Field::new("hour_bit", DataType::UInt32, true),
    ])
}

/// The reject code `cc_play` uses for `r`.
pub(crate) fn reject_number(r: Reject) -> u8 {
    1 + Reject::ALL.iter().position(|x| *x == r).expect("every reject is listed") as u8
}

/// A clickstream line's play, or why it is rejected (a NULL line has no
/// fields at all).
pub(crate) fn play_of(line: Option<&str>) -> std::result::Result<saavn::Play<'_>, Reject> {
    line.map_or(Err(Reject::WrongFieldCount), saavn::parse_play)
}

/// Parses a batch of clickstream lines into the [`play_fields`] struct.
/// Hours are of the day at `offset_minutes` east of UTC.
pub(crate) fn parse_plays(lines: &ArrayRef, offset_minutes: i32) -> datafusion::error::Result<ArrayRef> {
    let lines = cast(lines, &DataType::Utf8)?;
    let lines = lines.as_string::<i32>();
    let n = lines.len();
    let mut reject = Vec::with_capacity(n);
    let mut hi = UInt64Builder::with_capacity(n);
    let mut lo = UInt64Builder::with_capacity(n);
    let mut song = UInt64Builder::with_capacity(n);
    let mut hour = UInt32Builder::with_capacity(n);
    for line in lines.iter() {
        match play_of(line) {
            Ok(p) => {
                reject.push(0u8);
                hi.append_value((p.user >> 64) as u64);
                lo.append_value(p.user as u64);
                song.append_value(saavn::song_key(p.song));
                hour.append_value(hours::hour_bit(p.timestamp, offset_minutes));
            }
            Err(r) => {
                reject.push(reject_number(r));
                hi.append_null();
                lo.append_null();
                song.append_null();
                hour.append_null();
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt8Array::from(reject)),
        Arc::new(hi.finish()),
        Arc::new(lo.finish()),
        Arc::new(song.finish()),
        Arc::new(hour.finish()),
    ];
    Ok(Arc::new(StructArray::try_new(play_fields(), columns, None)?))
}

/// A thread's last (input, output) batch of a struct-valued UDF.
pub(crate) type LastBatch = std::thread::LocalKey<std::cell::RefCell<Option<(ArrayRef, ArrayRef)>>>;

/// `parse(input)`, or the output kept in `last` when `input` is the batch
/// it was computed from: the kept input holds its buffers alive, so equal
/// pointers mean equal contents.
pub(crate) fn memoized(
    last: &'static LastBatch,
    input: &ArrayRef,
    parse: impl FnOnce(&ArrayRef) -> datafusion::error::Result<ArrayRef>,
) -> datafusion::error::Result<ArrayRef> {
    let hit = last
        .with(|l| l.borrow().as_ref().filter(|(i, _)| i.to_data().ptr_eq(&input.to_data())).map(|(_, o)| o.clone()));
    if let Some(out) = hit {
        return Ok(out);
    }
    let out = parse(input)?;
    last.with(|l| *l.borrow_mut() = Some((input.clone(), out.clone())));
    Ok(out)
}

thread_local! {
    /// The last batch `cc_play` parsed on this thread: (input, output).
    static LAST_PLAYS: std::cell::RefCell<Option<(ArrayRef, ArrayRef)>> = const { std::cell::RefCell::new(None) };
}

/// The UDF `cc_play(line, offset_minutes)`: one parse of a clickstream
/// line into the [`play_fields`] struct, so the plan groups by integers (the
/// user id as two 64-bit halves, see [`saavn::user_key`]) and never copies
/// the line. The offset (a literal) sets the day the hour bit is of.
///
/// DataFusion 55 pushes each `p['field']` access down into the scan as its
/// own `get_field(cc_play(raw), field)`, so the function is called once per
/// field on the same batch (even when declared volatile). The last batch's
/// result is kept per thread and returned when the same input buffers come
/// again: the kept input holds its buffers alive, so equal pointers mean
/// equal contents, and each line is parsed once.
pub(crate) fn play_udf() -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let offset = match args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Int32(Some(m)))) if hours::check_offset(*m).is_ok() => *m,
            other => {
                return Err(datafusion::error::DataFusionError::Execution(format!(
                    "cc_play: the second argument must be a UTC offset in minutes (-840 to 840), got {other:?}"
                )))
            }
        };
        let arrays = ColumnarValue::values_to_arrays(&args[..1])?;
        Ok(ColumnarValue::Array(memoized(&LAST_PLAYS, &arrays[0], |input| parse_plays(input, offset))?))
    };
    create_udf(
        "cc_play",
        vec![DataType::Utf8, DataType::Int32],
        DataType::Struct(play_fields()),
        Volatility::Immutable,
        Arc::new(fun),
    )
}

/// The UDF `cc_song_key(song_id)`: [`saavn::song_key`].
pub(crate) fn song_key_udf() -> datafusion::logical_expr::ScalarUDF {
    let fun = move |args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let ids = cast(&arrays[0], &DataType::Utf8)?;
        let keys: UInt64Array = ids.as_string::<i32>().iter().map(|s| s.map(saavn::song_key)).collect();
        Ok(ColumnarValue::Array(Arc::new(keys) as ArrayRef))
    };
    create_udf("cc_song_key", vec![DataType::Utf8], DataType::UInt64, Volatility::Immutable, Arc::new(fun))
}

/// The scalar UDFs of the ingest plan: `cc_reject_<input>`, `cc_play`,
/// `cc_song_key`. A cluster must have them registered too.
pub fn udfs() -> Vec<datafusion::logical_expr::ScalarUDF> {
    let mut out: Vec<_> = Input::ALL.into_iter().map(reject_udf).collect();
    out.extend([play_udf(), song_key_udf()]);
    out
}
