//! Console sessions: a random token in a cookie, its SHA-256 as the key of a record in the
//! state's key-value store (so every node with a shared store knows it), with an idle expiry
//! (the record's lifetime, renewed by each request) and an absolute one (checked against the
//! sign-in time).

use crate::store::KvStore;
use bytes::Bytes;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The cookie's name: with the `__Host-` prefix (Secure, no Domain, Path=/) when the admin
/// listener has TLS; browsers refuse that prefix on plain HTTP.
pub fn cookie_name(tls: bool) -> &'static str {
    if tls {
        "__Host-orion_console"
    } else {
        "orion_console"
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// The principal's id (`key:ops`, `client:ci`).
    pub principal: String,
    pub roles: Vec<String>,
    pub tenant: String,
    /// May act (not only look).
    pub write: bool,
    /// A process administrator (`process_admin`): every tenant; otherwise the session sees its
    /// own tenant only (`auth::admin_scope`).
    #[serde(default)]
    pub process: bool,
    /// The CSRF token every state-changing request must carry.
    pub csrf: String,
    /// Sign-in time, unix seconds.
    pub signed_in: u64,
    /// The credential signed in with, found again at every request: a session ends as soon as
    /// its key or client is disabled, rotated or deleted (anywhere: the store is shared).
    pub credential: crate::auth::CredentialRef,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn store_key(token: &str) -> String {
    format!(
        "console/session/{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

pub fn now() -> u64 {
    crate::auth::tokens::now_unix()
}

/// Starts a session; answers the cookie's token.
pub async fn start(
    kv: &dyn KvStore,
    mut session: Session,
    idle: Duration,
) -> Result<(String, Session), crate::store::StoreError> {
    let token = random_hex(32);
    session.csrf = random_hex(32);
    session.signed_in = now();
    let bytes = serde_json::to_vec(&session).unwrap_or_default();
    kv.put(&store_key(&token), Bytes::from(bytes), idle).await?;
    Ok((token, session))
}

/// The live session of a token, renewed for another idle period; `None` when unknown,
/// idle too long or past its absolute lifetime (then it is removed).
pub async fn resume(
    kv: &dyn KvStore,
    token: &str,
    idle: Duration,
    absolute: Duration,
) -> Result<Option<Session>, crate::store::StoreError> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let key = store_key(token);
    let Some(bytes) = kv.get(&key).await? else {
        return Ok(None);
    };
    let Ok(s) = serde_json::from_slice::<Session>(&bytes) else {
        return Ok(None);
    };
    if now().saturating_sub(s.signed_in) >= absolute.as_secs() {
        kv.delete(&key).await?;
        return Ok(None);
    }
    kv.put(&key, bytes, idle).await?;
    Ok(Some(s))
}

/// Ends a session.
pub async fn end(kv: &dyn KvStore, token: &str) -> Result<(), crate::store::StoreError> {
    kv.delete(&store_key(token)).await.map(|_| ())
}

/// The session token of a request's `Cookie` headers.
pub fn token_from(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Constant-time equality of two tokens.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryKv;

    #[tokio::test]
    async fn sessions_start_resume_expire_and_end() {
        let kv = MemoryKv::new(10);
        let s = Session {
            principal: "key:ops".into(),
            roles: vec!["admin".into()],
            tenant: "acme".into(),
            write: true,
            process: true,
            csrf: String::new(),
            signed_in: 0,
            credential: crate::auth::CredentialRef::of_key("k"),
        };
        let hour = Duration::from_secs(3600);
        let (token, started) = start(&kv, s, hour).await.unwrap();
        assert_eq!(started.csrf.len(), 64);
        let back = resume(&kv, &token, hour, hour).await.unwrap().unwrap();
        assert_eq!(back, started);
        // Past the absolute lifetime: gone, and removed.
        assert!(
            resume(&kv, &token, hour, Duration::ZERO)
                .await
                .unwrap()
                .is_none()
        );
        assert!(resume(&kv, &token, hour, hour).await.unwrap().is_none());
        let (token, _) = start(&kv, back, hour).await.unwrap();
        end(&kv, &token).await.unwrap();
        assert!(resume(&kv, &token, hour, hour).await.unwrap().is_none());
        assert!(resume(&kv, "short", hour, hour).await.unwrap().is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.append("cookie", "a=1; orion_console=abc; b=2".parse().unwrap());
        assert_eq!(token_from(&h, "orion_console").as_deref(), Some("abc"));
        assert_eq!(token_from(&h, "__Host-orion_console"), None);
    }
}
