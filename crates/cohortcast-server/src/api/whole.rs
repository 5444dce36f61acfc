//! Whole numbers in request bodies. JSON Schema (and so the OpenAPI 3.1
//! document) counts `35285.0` as an integer, and serde's integer types
//! refuse it; these accept any JSON number that is a whole number in
//! range, and refuse the rest with serde's own words.

use serde::de::{Deserializer, Error, Unexpected, Visitor};

/// A whole number that fits `i64`.
pub(super) fn i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(Whole)
}

/// `null`, or a whole number from 0 that fits `usize`.
pub(super) fn opt_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    d.deserialize_option(OptWhole)
}

struct Whole;

impl Visitor<'_> for Whole {
    type Value = i64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a whole number")
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 is the first f64 past i64's range.
        if v.fract() == 0.0 && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&v) {
            Ok(v as i64)
        } else {
            Err(E::invalid_value(Unexpected::Float(v), &self))
        }
    }
}

struct OptWhole;

impl<'de> Visitor<'de> for OptWhole {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null or a whole number from 0")
    }

    fn visit_none<E: Error>(self) -> Result<Option<usize>, E> {
        Ok(None)
    }

    fn visit_unit<E: Error>(self) -> Result<Option<usize>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        let v = i64(d)?;
        usize::try_from(v).map(Some).map_err(|_| D::Error::invalid_value(Unexpected::Signed(v), &self))
    }
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct T {
        #[serde(deserialize_with = "super::i64")]
        t: i64,
        #[serde(default, deserialize_with = "super::opt_usize")]
        n: Option<usize>,
    }

    #[test]
    fn whole_numbers_in_any_json_form_are_read_and_fractions_refused() {
        let read = |s: &str| serde_json::from_str::<T>(s).map(|v| (v.t, v.n)).map_err(|e| e.to_string());
        assert_eq!(read(r#"{"t": 35285.0}"#), Ok((35285, None)));
        assert_eq!(read(r#"{"t": -3, "n": 1.2e3}"#), Ok((-3, Some(1200))));
        assert_eq!(read(r#"{"t": 7, "n": null}"#), Ok((7, None)));
        assert!(read(r#"{"t": 0.5}"#).unwrap_err().contains("a whole number"));
        assert!(read(r#"{"t": 1e19}"#).is_err());
        assert!(read(r#"{"t": 18446744073709551615}"#).is_err());
        assert!(read(r#"{"t": 1, "n": -1}"#).unwrap_err().contains("from 0"));
        assert!(read(r#"{"t": "1"}"#).is_err());
    }
}
