//! Content codings of `/files` bodies: `Accept-Encoding` negotiation for downloads,
//! `Content-Encoding` of uploads, and the `Content-Disposition` of a download.

use http::HeaderMap;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING};

/// A coding envd can produce or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

/// Picks the coding of a download from `Accept-Encoding` (RFC 9110 §12.5.3); `None` when
/// the client accepts nothing envd can produce (answered with 406). gzip wins whenever it
/// is acceptable at least as much as identity.
pub fn negotiate(headers: &HeaderMap) -> Option<Coding> {
    let mut any = false;
    let (mut gzip, mut identity, mut star) = (None, None, None);
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1.0_f32);
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = v.trim().parse().ok().filter(|q| (0.0..=1.0).contains(q));
                }
            }
            // A malformed weight makes the entry meaningless; skip it.
            let Some(q) = q else { continue };
            any = true;
            match coding.as_str() {
                "gzip" | "x-gzip" => gzip = Some(q),
                "identity" => identity = Some(q),
                "*" => star = Some(q),
                _ => {}
            }
        }
    }
    if !any {
        return Some(Coding::Identity);
    }
    let gzip = gzip.or(star).unwrap_or(0.0);
    // identity is acceptable unless refused explicitly or through `*;q=0`; when not named
    // it ranks below every named coding.
    let identity = identity.or(star).unwrap_or(0.001);
    if gzip > 0.0 && gzip >= identity {
        Some(Coding::Gzip)
    } else if identity > 0.0 {
        Some(Coding::Identity)
    } else {
        None
    }
}

/// The coding of a request body; `Err` names a coding envd cannot decode.
pub fn request_coding(headers: &HeaderMap) -> Result<Coding, String> {
    let mut coding = Coding::Identity;
    for value in headers.get_all(CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| "non-ASCII Content-Encoding")?;
        for c in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match c.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" if coding == Coding::Identity => coding = Coding::Gzip,
                _ => return Err(format!("unsupported Content-Encoding '{c}'")),
            }
        }
    }
    Ok(coding)
}

/// `Content-Disposition` for downloading a file called `name`: a quoted `filename` when it
/// is plain ASCII, else the RFC 8187 `filename*` form (as Go's `mime.FormatMediaType`).
pub fn attachment(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    if plain {
        return format!("attachment; filename=\"{name}\"");
    }
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, v.parse().unwrap());
        negotiate(&h)
    }

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&HeaderMap::new()), Some(Coding::Identity));
        assert_eq!(accept("gzip"), Some(Coding::Gzip));
        assert_eq!(accept("gzip, deflate, br, zstd"), Some(Coding::Gzip));
        assert_eq!(accept("br"), Some(Coding::Identity));
        assert_eq!(accept("identity"), Some(Coding::Identity));
        assert_eq!(accept("gzip;q=0"), Some(Coding::Identity));
        assert_eq!(accept("gzip;q=0.5, identity"), Some(Coding::Identity));
        assert_eq!(accept("*"), Some(Coding::Gzip));
        assert_eq!(accept("br, identity;q=0"), None);
        assert_eq!(accept("*;q=0"), None);
        assert_eq!(accept("br, *;q=0"), None);
        assert_eq!(accept("gzip, *;q=0"), Some(Coding::Gzip));
        assert_eq!(accept("gzip;q=nonsense"), Some(Coding::Identity));
    }

    #[test]
    fn request_codings() {
        let mut h = HeaderMap::new();
        assert_eq!(request_coding(&h), Ok(Coding::Identity));
        h.insert(CONTENT_ENCODING, "GZIP".parse().unwrap());
        assert_eq!(request_coding(&h), Ok(Coding::Gzip));
        h.insert(CONTENT_ENCODING, "br".parse().unwrap());
        assert!(request_coding(&h).is_err());
        h.insert(CONTENT_ENCODING, "gzip, gzip".parse().unwrap());
        assert!(request_coding(&h).is_err(), "double gzip is not decoded");
    }

    #[test]
    fn content_disposition() {
        assert_eq!(attachment("a b.txt"), "attachment; filename=\"a b.txt\"");
        assert_eq!(
            attachment("naïve \"q\".txt"),
            "attachment; filename*=UTF-8''na%C3%AFve%20%22q%22.txt"
        );
    }
}
