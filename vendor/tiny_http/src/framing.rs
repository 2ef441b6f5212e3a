//! How a request's body is delimited (RFC 9112 §6.3), decided strictly.
//!
//! Upstream took the first `Content-Length` it could parse, ignored it next
//! to any `Transfer-Encoding` and read every `Transfer-Encoding` as chunked.
//! Behind a proxy that frames the same bytes differently, that lets one
//! request hide another (request smuggling). Any header set a proxy and this
//! server might read two ways is refused: the request gets a `400` and the
//! connection is closed, since where the next request starts is unknown.

use crate::common::{HTTPVersion, Header};

/// Where a request's body ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Reads the body framing from the headers, or says what is wrong with it.
pub(crate) fn body_framing(
    version: &HTTPVersion,
    headers: &[Header],
) -> Result<Framing, &'static str> {
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.field.equiv(name))
            .map(|h| h.value.as_str())
    };
    let mut lengths = values("Content-Length");
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err("more than one Content-Length");
    }
    // Several Transfer-Encoding fields make one list.
    let codings: Vec<&str> = values("Transfer-Encoding")
        .flat_map(|v| v.split(','))
        .map(|coding| coding.trim_matches([' ', '\t']))
        .collect();
    if !codings.is_empty() {
        if length.is_some() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if *version < HTTPVersion(1, 1) {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        return match codings.as_slice() {
            [coding] if coding.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err("a Transfer-Encoding other than chunked"),
        };
    }
    match length {
        None => Ok(Framing::Empty),
        Some(value) => {
            let value = value.trim_matches([' ', '\t']);
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err("an invalid Content-Length");
            }
            match value.parse() {
                Ok(0) => Ok(Framing::Empty),
                Ok(length) => Ok(Framing::Length(length)),
                Err(_) => Err("a Content-Length too large"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{body_framing, Framing};
    use crate::common::{HTTPVersion, Header};

    fn framing(version: (u8, u8), headers: &[&str]) -> Result<Framing, &'static str> {
        let headers: Vec<Header> = headers.iter().map(|h| h.parse().unwrap()).collect();
        body_framing(&HTTPVersion(version.0, version.1), &headers)
    }

    #[test]
    fn a_single_length_or_chunked_is_accepted() {
        let v11 = (1, 1);
        assert_eq!(framing(v11, &[]), Ok(Framing::Empty));
        assert_eq!(framing(v11, &["Content-Length: 0"]), Ok(Framing::Empty));
        assert_eq!(
            framing(v11, &["Content-Length: 42"]),
            Ok(Framing::Length(42))
        );
        assert_eq!(
            framing((1, 0), &["content-length: 7"]),
            Ok(Framing::Length(7))
        );
        assert_eq!(
            framing(v11, &["Transfer-Encoding: chunked"]),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(v11, &["transfer-encoding: Chunked"]),
            Ok(Framing::Chunked)
        );
    }

    #[test]
    fn lengths_that_two_parsers_could_read_differently_are_refused() {
        let v11 = (1, 1);
        for (headers, why) in [
            (
                &["Content-Length: 5", "Content-Length: 5"][..],
                "more than one Content-Length",
            ),
            (
                &["Content-Length: 5", "Content-Length: 6"],
                "more than one Content-Length",
            ),
            (&["Content-Length: 5, 5"], "an invalid Content-Length"),
            (&["Content-Length: abc"], "an invalid Content-Length"),
            (&["Content-Length: +5"], "an invalid Content-Length"),
            (&["Content-Length: -1"], "an invalid Content-Length"),
            (&["Content-Length: 0x10"], "an invalid Content-Length"),
            (&["Content-Length:"], "an invalid Content-Length"),
            (
                &["Content-Length: 99999999999999999999999"],
                "a Content-Length too large",
            ),
        ] {
            assert_eq!(framing(v11, headers), Err(why), "{:?}", headers);
        }
    }

    #[test]
    fn transfer_encodings_other_than_chunked_alone_are_refused() {
        let v11 = (1, 1);
        for (headers, why) in [
            (
                &["Content-Length: 3", "Transfer-Encoding: chunked"][..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                &["Transfer-Encoding: chunked", "Content-Length: 3"],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                &["Transfer-Encoding: gzip"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding: gzip, chunked"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding: chunked, chunked"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding: xchunked"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding: identity"],
                "a Transfer-Encoding other than chunked",
            ),
            (
                &["Transfer-Encoding:"],
                "a Transfer-Encoding other than chunked",
            ),
        ] {
            assert_eq!(framing(v11, headers), Err(why), "{:?}", headers);
        }
        assert_eq!(
            framing((1, 0), &["Transfer-Encoding: chunked"]),
            Err("Transfer-Encoding in an HTTP/1.0 request")
        );
    }
}
