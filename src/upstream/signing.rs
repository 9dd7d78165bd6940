//! RFC 9421 HTTP Message Signatures on requests to the upstream, with an RFC 9530
//! `Content-Digest`.
//!
//! Every signed request covers `@method`, `@authority`, `@path`, `@query`, `content-type` (when
//! the request has one) and `content-digest`, with `created`, `expires`, `nonce`, `keyid` and
//! `alg` parameters, under the label `sig1`. The digest is always present: for a request without
//! a body it is the SHA-256 of the empty string, so a body added after signing is detected. The
//! signature is computed on the request exactly as it leaves the proxy (after the path and body
//! rewrites), once per attempt, so a retry to another endpoint gets its own `@authority`,
//! `created` and `nonce`.
//!
//! Structured field values (the `Signature-Input` inner list and parameters, the `Signature` and
//! `Content-Digest` dictionaries) are serialised with the `sfv` crate; the MACs and signatures
//! come from `hmac`/`sha2` and `ed25519-dalek`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sfv::{BareItem, Dictionary, InnerList, Item, List, Parameters, SerializeValue};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The signature label used in `Signature-Input` and `Signature`.
pub const LABEL: &str = "sig1";

#[derive(Debug)]
pub enum SigningError {
    /// A component value cannot be serialised (not possible for values taken from a valid
    /// request, kept so that nothing here panics).
    Serialize(&'static str),
}

impl std::fmt::Display for SigningError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningError::Serialize(m) => write!(f, "the signature could not be built: {m}"),
        }
    }
}

enum Key {
    Hmac(Vec<u8>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A configured signing key. Its `Debug` never shows the key.
pub struct Signer {
    keyid: String,
    key: Key,
    lifetime: Duration,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keyid", &self.keyid)
            .field("alg", &self.alg())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The request as it leaves the proxy.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The `Host` sent upstream (`host[:port]`).
    pub authority: &'a str,
    /// The path sent upstream, without the query.
    pub path: &'a str,
    /// The query without `?`, if any.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    /// The exact body bytes sent (empty when there is none).
    pub body: &'a [u8],
}

/// The three headers to add to the request.
#[derive(Debug, Clone)]
pub struct SignatureHeaders {
    pub content_digest: String,
    pub signature_input: String,
    pub signature: String,
}

/// Decodes key material: `base64:...`, `hex:...`, or (HMAC only) the raw bytes of the secret.
fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    let t = text.trim();
    if let Some(b) = t.strip_prefix("base64:") {
        B64.decode(b.trim())
            .map_err(|_| "the base64: key is not valid base64".to_string())
    } else if let Some(h) = t.strip_prefix("hex:") {
        hex::decode(h.trim()).map_err(|_| "the hex: key is not valid hex".to_string())
    } else {
        Ok(t.as_bytes().to_vec())
    }
}

impl Signer {
    /// An `hmac-sha256` signer. The secret must be at least 32 bytes.
    pub fn hmac_sha256(keyid: &str, secret: &str, lifetime: Duration) -> Result<Signer, String> {
        let key = decode_key(secret)?;
        if key.len() < 32 {
            return Err("an hmac-sha256 key needs at least 32 bytes".into());
        }
        Signer::new(keyid, Key::Hmac(key), lifetime)
    }

    /// An `ed25519` signer from the 32-byte private key seed (`base64:` or `hex:`).
    pub fn ed25519(keyid: &str, seed: &str, lifetime: Duration) -> Result<Signer, String> {
        let bytes = decode_key(seed)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "an ed25519 key is a 32-byte seed (base64: or hex:)".to_string())?;
        Signer::new(
            keyid,
            Key::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed))),
            lifetime,
        )
    }

    fn new(keyid: &str, key: Key, lifetime: Duration) -> Result<Signer, String> {
        if keyid.is_empty() || keyid.len() > 256 || !keyid.chars().all(|c| c.is_ascii_graphic()) {
            return Err("keyid must be 1 to 256 visible ASCII characters".into());
        }
        if lifetime.is_zero() || lifetime > Duration::from_secs(3600) {
            return Err("expires_seconds must be between 1 and 3600".into());
        }
        Ok(Signer {
            keyid: keyid.to_string(),
            key,
            lifetime,
        })
    }

    pub fn keyid(&self) -> &str {
        &self.keyid
    }

    pub fn alg(&self) -> &'static str {
        match self.key {
            Key::Hmac(_) => "hmac-sha256",
            Key::Ed25519(_) => "ed25519",
        }
    }

    /// The ed25519 public key (for configuring the verifying side), if this is an ed25519 key.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        match &self.key {
            Key::Ed25519(k) => Some(k.verifying_key().to_bytes()),
            Key::Hmac(_) => None,
        }
    }

    /// Signs now with a fresh random nonce.
    pub fn sign(&self, req: &RequestParts<'_>) -> Result<SignatureHeaders, SigningError> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        self.sign_at(req, SystemTime::now(), &nonce)
    }

    /// Signs as of `now` with `nonce` (tests pin both).
    pub fn sign_at(
        &self,
        req: &RequestParts<'_>,
        now: SystemTime,
        nonce: &str,
    ) -> Result<SignatureHeaders, SigningError> {
        let created = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0) as i64;
        let expires = created + self.lifetime.as_secs() as i64;
        let content_digest = content_digest(req.body)?;
        // RFC 9421 2.2.3: the authority is normalised to lower case.
        let authority = req.authority.to_ascii_lowercase();
        let query = format!("?{}", req.query.unwrap_or(""));
        let mut components: Vec<(&str, &str)> = vec![
            ("@method", req.method),
            ("@authority", &authority),
            ("@path", req.path),
            ("@query", &query),
        ];
        if let Some(ct) = req.content_type {
            components.push(("content-type", ct));
        }
        components.push(("content-digest", &content_digest));

        let mut params = Parameters::new();
        params.insert("created".into(), BareItem::Integer(created));
        params.insert("expires".into(), BareItem::Integer(expires));
        params.insert("nonce".into(), BareItem::String(nonce.to_string()));
        params.insert("keyid".into(), BareItem::String(self.keyid.clone()));
        params.insert("alg".into(), BareItem::String(self.alg().to_string()));
        let names: Vec<&str> = components.iter().map(|(n, _)| *n).collect();
        let sig_params = signature_params(&names, params)?;
        let base = signature_base(&components, &sig_params);
        let signature = match &self.key {
            Key::Hmac(k) => hmac_sha256(k, base.as_bytes()),
            Key::Ed25519(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(base.as_bytes()).to_bytes().to_vec()
            }
        };
        let mut sig_dict = Dictionary::new();
        sig_dict.insert(LABEL.into(), Item::new(BareItem::ByteSeq(signature)).into());
        Ok(SignatureHeaders {
            content_digest,
            signature_input: format!("{LABEL}={sig_params}"),
            signature: sig_dict
                .serialize_value()
                .map_err(SigningError::Serialize)?,
        })
    }
}

/// Signs a Pingora upstream request header as it will be written: its method, URI path and
/// query, `content-type`, the `Host` value `authority` and the exact `body` bytes; adds
/// `Content-Digest`, `Signature-Input` and `Signature`.
pub fn sign_request_header(
    signer: &Signer,
    req: &mut pingora::http::RequestHeader,
    authority: &str,
    body: &[u8],
) -> pingora::Result<()> {
    let method = req.method.as_str().to_string();
    let path = req.uri.path().to_string();
    let query = req.uri.query().map(str::to_string);
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let headers = signer
        .sign(&RequestParts {
            method: &method,
            authority,
            path: &path,
            query: query.as_deref(),
            content_type: content_type.as_deref(),
            body,
        })
        .map_err(|e| pingora::Error::explain(pingora::ErrorType::InternalError, e.to_string()))?;
    req.insert_header("content-digest", headers.content_digest)?;
    req.insert_header("signature-input", headers.signature_input)?;
    req.insert_header("signature", headers.signature)?;
    Ok(())
}

/// The `@signature-params` value: the covered component names as an inner list of strings,
/// with the parameters (also the member value of `Signature-Input`).
pub fn signature_params(names: &[&str], params: Parameters) -> Result<String, SigningError> {
    let items = names
        .iter()
        .map(|n| Item::new(BareItem::String((*n).to_string())))
        .collect();
    let list: List = vec![InnerList::with_params(items, params).into()];
    list.serialize_value().map_err(SigningError::Serialize)
}

/// The signature base (RFC 9421 section 2.5): one `"name": value` line per component, then
/// the `@signature-params` line, joined by LF with no trailing newline.
pub fn signature_base(components: &[(&str, &str)], signature_params: &str) -> String {
    let mut base = String::with_capacity(256);
    for (name, value) in components {
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    base
}

/// `sha-256=:<base64>:` (RFC 9530) of `body`.
pub fn content_digest(body: &[u8]) -> Result<String, SigningError> {
    let mut dict = Dictionary::new();
    dict.insert(
        "sha-256".into(),
        Item::new(BareItem::ByteSeq(Sha256::digest(body).to_vec())).into(),
    );
    dict.serialize_value().map_err(SigningError::Serialize)
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_digest_matches_rfc9530_example() {
        // RFC 9530 section 2, the `{"hello": "world"}` example.
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}\n").unwrap(),
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
        );
    }

    #[test]
    fn hmac_matches_rfc9421_b_2_5() {
        // RFC 9421 appendix B.2.5: hmac-sha256 over date, @authority, content-type.
        let key = B64
            .decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
            .unwrap();
        let mut params = Parameters::new();
        params.insert("created".into(), BareItem::Integer(1618884473));
        params.insert(
            "keyid".into(),
            BareItem::String("test-shared-secret".into()),
        );
        let sp = signature_params(&["date", "@authority", "content-type"], params).unwrap();
        assert_eq!(
            sp,
            "(\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
        );
        let base = signature_base(
            &[
                ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                ("@authority", "example.com"),
                ("content-type", "application/json"),
            ],
            &sp,
        );
        assert_eq!(
            B64.encode(hmac_sha256(&key, base.as_bytes())),
            "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8="
        );
    }

    #[test]
    fn signs_every_component_with_parameters() {
        let s = Signer::hmac_sha256(
            "k1",
            "0123456789abcdef0123456789abcdef",
            Duration::from_secs(30),
        )
        .unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let req = RequestParts {
            method: "POST",
            authority: "api.example:8443",
            path: "/api/v1/instances",
            query: Some("a=1"),
            content_type: Some("application/json"),
            body: b"{}",
        };
        let h = s.sign_at(&req, at, "n1").unwrap();
        assert_eq!(
            h.signature_input,
            "sig1=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-type\" \"content-digest\");created=1700000000;expires=1700000030;nonce=\"n1\";keyid=\"k1\";alg=\"hmac-sha256\""
        );
        assert!(h.signature.starts_with("sig1=:") && h.signature.ends_with(':'));
        // Same inputs, same signature; another body, another digest and signature.
        assert_eq!(s.sign_at(&req, at, "n1").unwrap().signature, h.signature);
        let other = s
            .sign_at(
                &RequestParts {
                    body: b"{ }",
                    ..req
                },
                at,
                "n1",
            )
            .unwrap();
        assert_ne!(other.signature, h.signature);
        assert_ne!(other.content_digest, h.content_digest);
        // No content type: not covered.
        let bare = s
            .sign_at(
                &RequestParts {
                    content_type: None,
                    ..req
                },
                at,
                "n1",
            )
            .unwrap();
        assert!(!bare.signature_input.contains("content-type"));
        assert!(format!("{s:?}").contains("redacted"));
    }

    #[test]
    fn short_or_malformed_keys_are_refused() {
        assert!(Signer::hmac_sha256("k", "short", Duration::from_secs(60)).is_err());
        assert!(Signer::ed25519("k", "base64:AAAA", Duration::from_secs(60)).is_err());
        assert!(Signer::hmac_sha256("", &"x".repeat(40), Duration::from_secs(60)).is_err());
        let seed = format!("hex:{}", "11".repeat(32));
        let e = Signer::ed25519("k", &seed, Duration::from_secs(60)).unwrap();
        assert_eq!(e.alg(), "ed25519");
        assert!(e.ed25519_public_key().is_some());
    }
}
