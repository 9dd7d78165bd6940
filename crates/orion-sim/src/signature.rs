//! RFC 9421 signature verification, when the simulator is set up with a
//! [`super::SimSignatureKey`]: the stand-in for an upstream that requires signed requests.
//!
//! This side is written from the RFC, independently of the proxy's signer, so that the tests
//! prove the two agree: it parses `Signature-Input` and `Signature` as structured fields,
//! rebuilds the signature base from the request it received, and checks the MAC or
//! signature, the `keyid` and `alg`, `created`/`expires`, the `nonce` (each accepted once) and
//! the RFC 9530 `Content-Digest` of the body it received.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use parking_lot::Mutex;
use sfv::{BareItem, ListEntry, Parser, SerializeValue};
use sha2::{Digest, Sha256};

use super::{SimSignatureAlgorithm, SimSignatureKey};

/// Components every signed request must cover (plus `content-type` when it has one).
const REQUIRED: &[&str] = &["@method", "@authority", "@path", "@query", "content-digest"];
/// Clock skew tolerated on `created`.
const SKEW_SECS: i64 = 5;
/// Longest signature lifetime accepted.
const MAX_LIFETIME_SECS: i64 = 3600;

pub(crate) struct Verifier {
    key: SimSignatureKey,
    /// nonce -> expiry (unix seconds); a nonce is accepted once while its signature is live.
    nonces: Mutex<HashMap<String, i64>>,
}

/// The request as the simulator received it.
pub(crate) struct Received<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or_else(|| format!("no {name} header"))?;
    if values.next().is_some() {
        return Err(format!("more than one {name} header"));
    }
    first
        .to_str()
        .map_err(|_| format!("the {name} header is not ASCII"))
}

impl Verifier {
    pub(crate) fn new(key: SimSignatureKey) -> Verifier {
        Verifier {
            key,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// The account that signature-only requests (no `Authorization`) belong to.
    pub(crate) fn account(&self) -> Option<&str> {
        self.key.account.as_deref()
    }

    /// Checks the request's signature; the error says why it is refused.
    pub(crate) fn verify(&self, req: &Received<'_>) -> Result<(), String> {
        let input = header(req.headers, "signature-input")?;
        let sig_header = header(req.headers, "signature")?;
        let inputs = Parser::parse_dictionary(input.as_bytes())
            .map_err(|e| format!("Signature-Input is not a structured dictionary: {e}"))?;
        let (label, entry) = inputs.iter().next().ok_or("Signature-Input is empty")?;
        let ListEntry::InnerList(inner) = entry else {
            return Err("Signature-Input member is not an inner list".into());
        };
        let mut covered = Vec::new();
        for item in &inner.items {
            match &item.bare_item {
                BareItem::String(s) if item.params.is_empty() => covered.push(s.clone()),
                _ => return Err("covered components must be plain strings".into()),
            }
        }
        for need in REQUIRED {
            if !covered.iter().any(|c| c == need) {
                return Err(format!("the signature does not cover {need}"));
            }
        }
        if req.headers.contains_key(http::header::CONTENT_TYPE)
            && !covered.iter().any(|c| c == "content-type")
        {
            return Err("the signature does not cover content-type".into());
        }
        let int = |k: &str| match inner.params.get(k) {
            Some(BareItem::Integer(v)) => Ok(*v),
            _ => Err(format!("the {k} parameter is missing or not an integer")),
        };
        let string = |k: &str| match inner.params.get(k) {
            Some(BareItem::String(v)) => Ok(v.clone()),
            _ => Err(format!("the {k} parameter is missing or not a string")),
        };
        let created = int("created")?;
        let expires = int("expires")?;
        let nonce = string("nonce")?;
        let keyid = string("keyid")?;
        if keyid != self.key.keyid {
            return Err("unknown keyid".into());
        }
        let alg = match self.key.algorithm {
            SimSignatureAlgorithm::HmacSha256 => "hmac-sha256",
            SimSignatureAlgorithm::Ed25519 => "ed25519",
        };
        if inner.params.contains_key("alg") && string("alg")? != alg {
            return Err("the alg parameter does not match the key".into());
        }
        let now = now_secs();
        if created > now + SKEW_SECS {
            return Err("the signature was created in the future".into());
        }
        if expires <= now {
            return Err("the signature expired".into());
        }
        if expires < created || expires - created > MAX_LIFETIME_SECS {
            return Err("the signature lifetime is not acceptable".into());
        }
        if nonce.is_empty() || nonce.len() > 128 {
            return Err("the nonce is not acceptable".into());
        }

        // The body received must be the one whose digest was signed.
        let digests = Parser::parse_dictionary(header(req.headers, "content-digest")?.as_bytes())
            .map_err(|e| format!("Content-Digest is not a structured dictionary: {e}"))?;
        match digests.get("sha-256") {
            Some(ListEntry::Item(item)) => match &item.bare_item {
                BareItem::ByteSeq(d) if d[..] == Sha256::digest(req.body)[..] => {}
                _ => return Err("Content-Digest does not match the body".into()),
            },
            _ => return Err("Content-Digest has no sha-256".into()),
        }

        // Rebuild the signature base from what arrived.
        let mut base = String::new();
        for c in &covered {
            let value = match c.as_str() {
                "@method" => req.method.to_string(),
                "@authority" => header(req.headers, "host")?.to_ascii_lowercase(),
                "@path" => {
                    if req.path.is_empty() {
                        "/".to_string()
                    } else {
                        req.path.to_string()
                    }
                }
                "@query" => format!("?{}", req.query.unwrap_or("")),
                name if name.starts_with('@') => {
                    return Err(format!("derived component {name} is not supported"));
                }
                name => {
                    let values: Vec<&str> = req
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().map(str::trim))
                        .collect::<Result<_, _>>()
                        .map_err(|_| format!("the {name} header is not ASCII"))?;
                    if values.is_empty() {
                        return Err(format!("the covered header {name} is missing"));
                    }
                    values.join(", ")
                }
            };
            base.push_str(&format!("\"{c}\": {value}\n"));
        }
        let params_value = vec![ListEntry::InnerList(inner.clone())]
            .serialize_value()
            .map_err(|e| format!("signature parameters: {e}"))?;
        base.push_str(&format!("\"@signature-params\": {params_value}"));

        let sigs = Parser::parse_dictionary(sig_header.as_bytes())
            .map_err(|e| format!("Signature is not a structured dictionary: {e}"))?;
        let signature = match sigs.get(label) {
            Some(ListEntry::Item(item)) => match &item.bare_item {
                BareItem::ByteSeq(s) => s.clone(),
                _ => return Err("the signature is not a byte sequence".into()),
            },
            _ => return Err(format!("Signature has no {label}")),
        };
        let ok = match self.key.algorithm {
            SimSignatureAlgorithm::HmacSha256 => Hmac::<Sha256>::new_from_slice(&self.key.secret)
                .map(|mut m| {
                    m.update(base.as_bytes());
                    m.verify_slice(&signature).is_ok()
                })
                .unwrap_or(false),
            SimSignatureAlgorithm::Ed25519 => {
                let pk: Option<[u8; 32]> = self.key.secret.as_slice().try_into().ok();
                let sig: Option<[u8; 64]> = signature.as_slice().try_into().ok();
                match (pk, sig) {
                    (Some(pk), Some(sig)) => ed25519_dalek::VerifyingKey::from_bytes(&pk)
                        .map(|k| {
                            k.verify_strict(
                                base.as_bytes(),
                                &ed25519_dalek::Signature::from_bytes(&sig),
                            )
                            .is_ok()
                        })
                        .unwrap_or(false),
                    _ => false,
                }
            }
        };
        if !ok {
            return Err("the signature does not match the request".into());
        }

        // Only a valid signature uses up its nonce.
        let mut seen = self.nonces.lock();
        seen.retain(|_, exp| *exp > now);
        if seen.contains_key(&nonce) {
            return Err("the nonce was already used".into());
        }
        seen.insert(nonce, expires);
        Ok(())
    }
}

/// The `Content-Digest` value for `body` (for tests that build requests by hand).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}
