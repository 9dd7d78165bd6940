//! JWTs from an external identity provider: a JWKS served by the test on a loopback port,
//! valid RS256 and ES256 tokens mapped to roles and tenants, and every kind of bad token
//! refused with 401 in the error body. Unknown `kid`: fetched again (rate-limited), accepted
//! after rotation; a flood of unknown kids does not flood the JWKS endpoint.

use crate::harness::identity::*;
use crate::harness::*;
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CORP: &str = "https://idp.corp.test/";
const PARTNER: &str = "https://partner.test";
const AUD: &str = "orion-proxy";

/// A JWKS server: two documents, each with its fetch counter.
#[derive(Clone, Default)]
struct Jwks {
    corp: Arc<Mutex<JwkSet>>,
    partner: Arc<Mutex<JwkSet>>,
    corp_fetches: Arc<AtomicU64>,
    partner_fetches: Arc<AtomicU64>,
}

async fn serve_jwks(jwks: Jwks) -> String {
    use axum::routing::get;
    let j1 = jwks.clone();
    let j2 = jwks.clone();
    let app = axum::Router::new()
        .route(
            "/corp/jwks.json",
            get(move || {
                let j = j1.clone();
                async move {
                    j.corp_fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::to_value(&*j.corp.lock()).unwrap())
                }
            }),
        )
        .route(
            "/partner/jwks.json",
            get(move || {
                let j = j2.clone();
                async move {
                    j.partner_fetches.fetch_add(1, Ordering::SeqCst);
                    axum::Json(serde_json::to_value(&*j.partner.lock()).unwrap())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

struct Key {
    enc: EncodingKey,
    jwk: Jwk,
    alg: Algorithm,
    kid: String,
    public_pem: Option<String>,
}

fn rsa_key(kid: &str) -> Key {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    let der = private.to_pkcs1_der().unwrap();
    let enc = EncodingKey::from_rsa_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.into());
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    Key {
        enc,
        jwk,
        alg: Algorithm::RS256,
        kid: kid.into(),
        public_pem: Some(public_pem),
    }
}

fn ec_key(kid: &str) -> Key {
    use p256::pkcs8::EncodePrivateKey;
    let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let der = sk.to_pkcs8_der().unwrap();
    let enc = EncodingKey::from_ec_der(der.as_bytes());
    let mut jwk = Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    Key {
        enc,
        jwk,
        alg: Algorithm::ES256,
        kid: kid.into(),
        public_pem: None,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a valid corp token for an admin of acme; tests change what they need.
fn corp_claims() -> Value {
    json!({"iss": CORP, "aud": AUD, "sub": "alice", "exp": now() + 600, "iat": now(),
           "groups": ["ops-admins"], "org": "acme"})
}

fn sign(key: &Key, claims: &Value) -> String {
    sign_kid(key, &key.kid, claims)
}

fn sign_kid(key: &Key, kid: &str, claims: &Value) -> String {
    let mut h = Header::new(key.alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key.enc).unwrap()
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn issuers_yaml(jwks_url: &str) -> String {
    format!(
        r#"jwt:
  leeway_seconds: 60
  issuers:
    - name: corp
      issuer: "{CORP}"
      audiences: [{AUD}]
      algorithms: [RS256, ES256]
      jwks_url: "{jwks_url}/corp/jwks.json"
      jwks_min_refetch_seconds: 1
      roles_claim: groups
      role_map: {{ops-admins: [admin], ops-viewers: [viewer]}}
      tenant_claim: org
    - name: partner
      issuer: "{PARTNER}"
      audiences: [{AUD}]
      algorithms: [ES256]
      jwks_url: "{jwks_url}/partner/jwks.json"
      jwks_min_refetch_seconds: 3600
      roles_claim: scope
      default_tenant: globex
"#
    )
}

async fn get(h: &Harness, token: &str, path: &str) -> reqwest::Response {
    h.get(token, path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_table() {
    let rsa1 = rsa_key("rsa-1");
    let rsa2 = rsa_key("rsa-2");
    let ec1 = ec_key("ec-1");
    let pk1 = ec_key("partner-1");
    let jwks = Jwks::default();
    *jwks.corp.lock() = JwkSet {
        keys: vec![rsa1.jwk.clone(), ec1.jwk.clone()],
    };
    *jwks.partner.lock() = JwkSet {
        keys: vec![pk1.jwk.clone()],
    };
    let jwks_url = serve_jwks(jwks.clone()).await;
    let yaml = issuers_yaml(&jwks_url);
    let h = Harness::start_with(move |c| c.extra_top = yaml).await;
    let web1 = format!("/api/v1/instances/{WEB1}");

    // Valid RS256: an admin of acme.
    let t = sign(&rsa1, &corp_claims());
    let got = poll("RS256 token accepted", Duration::from_secs(10), || async {
        let r = get(&h, &t, &web1).await;
        if r.status() == 200 {
            Some(r.json::<Value>().await.unwrap())
        } else {
            None
        }
    })
    .await;
    assert_eq!(got["id"], WEB1);
    // The same token again (served from the verification cache) and its principal in the log.
    assert_eq!(get(&h, &t, &web1).await.status(), 200);
    let log = h.proxy.access_log(2).await;
    assert!(
        log.iter().any(|l| l["user.id"] == "jwt:corp#alice"),
        "principal jwt:corp#alice in the access log"
    );

    // Valid ES256, mapped to viewer: reads, may not delete.
    let mut c = corp_claims();
    c["groups"] = json!(["ops-viewers", "unrelated-group"]);
    c["sub"] = json!("bob");
    let viewer = sign(&ec1, &c);
    assert_eq!(get(&h, &viewer, &web1).await.status(), 200);
    let denied = expect_error(h.delete(&viewer, &web1).await, 403, "forbidden").await;
    assert_eq!(denied["details"]["permission"], json!(["instances:delete"]));

    // Expired within the leeway: still accepted.
    let mut c = corp_claims();
    c["exp"] = json!(now() - 20);
    assert_eq!(get(&h, &sign(&rsa1, &c), &web1).await.status(), 200);

    // The tenant comes from the claim: an admin of globex cannot see acme's instance.
    let mut c = corp_claims();
    c["org"] = json!("globex");
    let globex = sign(&rsa1, &c);
    expect_error(get(&h, &globex, &web1).await, 404, "not_found").await;
    assert_eq!(get(&h, &globex, "/api/v1/regions").await.status(), 200);

    // The second issuer: ES256 only, roles from a space-separated scope, default tenant.
    let p = json!({"iss": PARTNER, "aud": AUD, "sub": "carol", "exp": now() + 600,
                   "scope": "viewer openid"});
    let partner = sign(&pk1, &p);
    assert_eq!(get(&h, &partner, "/api/v1/instances").await.status(), 200);
    expect_error(get(&h, &partner, &web1).await, 404, "not_found").await;

    // Every bad token: 401 in the error body.
    let valid = corp_claims();
    // Accepted reads may be answered from the proxy's micro-cache, so count what the refused
    // tokens add, not an absolute number.
    let calls_before_refusals = h.sim.calls().count("GET", "/api/v1/instances/{id}");
    let mut cases: Vec<(&str, String)> = Vec::new();
    // Why each is refused, as the error body says.
    let why = |what: &str| match what {
        "expired beyond the leeway" => "expired",
        "not yet valid" => "not valid yet",
        "wrong iss" => "issuer",
        "wrong aud" => "not meant for this proxy",
        "no exp" => "required claim",
        "no tenant" => "no tenant",
        "unknown tenant" => "tenant is not configured",
        "alg none" => "not a well-formed JWT",
        "HS256 signed with the RSA public key" => "algorithm",
        "tampered payload" => "signature",
        "RS256 for an issuer pinned to ES256" => "algorithm",
        "signed by a key the issuer does not have" => "signature",
        "garbage" => "not a well-formed JWT",
        _ => unreachable!(),
    };
    let mut c = valid.clone();
    c["exp"] = json!(now() - 120);
    cases.push(("expired beyond the leeway", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c["nbf"] = json!(now() + 300);
    cases.push(("not yet valid", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c["iss"] = json!("https://evil.test/");
    cases.push(("wrong iss", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c["aud"] = json!("someone-else");
    cases.push(("wrong aud", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c.as_object_mut().unwrap().remove("org");
    cases.push(("no tenant", sign(&rsa1, &c)));
    let mut c = valid.clone();
    c["org"] = json!("initech");
    cases.push(("unknown tenant", sign(&rsa1, &c)));
    cases.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"rsa-1"}"#),
            b64(valid.to_string().as_bytes())
        ),
    ));
    let hs_with_rsa_public_key = {
        let mut hd = Header::new(Algorithm::HS256);
        hd.kid = Some("rsa-1".into());
        let pem = rsa1.public_pem.clone().unwrap();
        jsonwebtoken::encode(&hd, &valid, &EncodingKey::from_secret(pem.as_bytes())).unwrap()
    };
    cases.push((
        "HS256 signed with the RSA public key",
        hs_with_rsa_public_key,
    ));
    let tampered = {
        let good = sign(&rsa1, &c_with(&valid, "groups", json!(["ops-viewers"])));
        let parts: Vec<&str> = good.split('.').collect();
        let evil = b64(valid.to_string().as_bytes());
        format!("{}.{}.{}", parts[0], evil, parts[2])
    };
    cases.push(("tampered payload", tampered));
    cases.push((
        "RS256 for an issuer pinned to ES256",
        sign(&rsa1, &c_with(&p, "sub", json!("mallory"))),
    ));
    cases.push((
        "signed by a key the issuer does not have",
        sign_kid(&rsa2, "rsa-1", &valid),
    ));
    cases.push(("garbage", "abc.def.ghi".to_string()));
    for (what, token) in &cases {
        let r = get(&h, token, &web1).await;
        assert_eq!(r.status(), 401, "{what}");
        let body = expect_error(r, 401, "invalid_token").await;
        assert!(
            body["detail"].as_str().unwrap().contains(why(what)),
            "{what}: {body}"
        );
    }
    assert_eq!(
        h.sim.calls().count("GET", "/api/v1/instances/{id}"),
        calls_before_refusals,
        "refused tokens never reach OrionVM: {:?}",
        h.sim.calls()
    );

    // Unknown kid: the JWKS is fetched again (at most once a second here), the key is still
    // unknown; after the provider rotates it in, the token is accepted.
    let rotated = sign(&rsa2, &corp_claims());
    let before = jwks.corp_fetches.load(Ordering::SeqCst);
    let started = Instant::now();
    poll("refetch on unknown kid", Duration::from_secs(5), || async {
        let r = get(&h, &rotated, &web1).await;
        assert_eq!(r.status(), 401);
        (jwks.corp_fetches.load(Ordering::SeqCst) > before).then_some(())
    })
    .await;
    *jwks.corp.lock() = JwkSet {
        keys: vec![rsa2.jwk.clone(), ec1.jwk.clone()],
    };
    poll("rotated key accepted", Duration::from_secs(10), || async {
        (get(&h, &rotated, &web1).await.status() == 200).then_some(())
    })
    .await;
    let fetched = jwks.corp_fetches.load(Ordering::SeqCst) - before;
    assert!(
        fetched >= 2 && fetched <= started.elapsed().as_secs() + 2,
        "one fetch per second at most while polling every 25 ms: {fetched} in {:?}",
        started.elapsed()
    );

    // A flood of unknown kids for the partner (refetch at most hourly): no extra fetch.
    poll("partner JWKS fetched", Duration::from_secs(5), || async {
        (jwks.partner_fetches.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    let before = jwks.partner_fetches.load(Ordering::SeqCst);
    for i in 0..50 {
        let t = sign_kid(&pk1, &format!("flood-{i}"), &p);
        assert_eq!(get(&h, &t, "/api/v1/regions").await.status(), 401);
    }
    assert_eq!(
        jwks.partner_fetches.load(Ordering::SeqCst),
        before,
        "unknown kids do not flood the JWKS endpoint"
    );

    // A reload keeps the fetched keys: no refetch, tokens still accepted.
    h.reload_ok().await;
    assert_eq!(get(&h, &partner, "/api/v1/regions").await.status(), 200);
    assert_eq!(jwks.partner_fetches.load(Ordering::SeqCst), before);
    // And a JWT admin may use the admin listener.
    let r = h.proxy.admin_get(&rotated, "/admin/config").await;
    assert_eq!(ok_json(r).await["jwt_issuers"][0]["name"], "corp");
}

fn c_with(v: &Value, k: &str, x: Value) -> Value {
    let mut v = v.clone();
    v[k] = x;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_plain_http_is_refused_for_non_loopback_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ConfigBuilder::new("http://127.0.0.1:9");
    let mut yaml = String::new();
    let path = cfg.write(dir.path(), &Ports::free());
    yaml += &std::fs::read_to_string(&path).unwrap();
    yaml += &issuers_yaml("http://idp.example.com");
    std::fs::write(&path, yaml).unwrap();
    let run = check_config(&path);
    assert!(!run.ok);
    let err = run.stderr;
    assert!(
        err.contains("jwt.issuers[0] (corp).jwks_url") && err.contains("https"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_over_https_with_the_issuers_ca_file() {
    let key = rsa_key("tls-1");
    let jwks = Jwks::default();
    *jwks.corp.lock() = JwkSet {
        keys: vec![key.jwk.clone()],
    };
    let plain = serve_jwks(jwks.clone()).await;
    let addr: std::net::SocketAddr = plain.trim_start_matches("http://").parse().unwrap();
    let front = tls_front(addr).await;
    let (https, ca_dir) = (front.url, front.dir);
    let ca = ca_dir.path().join("ca.pem");
    // Two issuers on the same HTTPS JWKS: one trusts the private CA, one does not.
    let yaml = format!(
        r#"jwt:
  issuers:
    - name: trusted
      issuer: "https://trusted.test"
      audiences: [{AUD}]
      algorithms: [RS256]
      jwks_url: "{https}/corp/jwks.json"
      ca_file: "{ca}"
      default_tenant: acme
    - name: untrusted
      issuer: "https://untrusted.test"
      audiences: [{AUD}]
      algorithms: [RS256]
      jwks_url: "{https}/corp/jwks.json"
      default_tenant: acme
"#,
        ca = ca.display()
    );
    let h = Harness::start_with(move |c| c.extra_top = yaml).await;
    let claims = |iss: &str| json!({"iss": iss, "aud": AUD, "sub": "tls", "exp": now() + 600, "roles": ["viewer"]});
    let trusted = sign(&key, &claims("https://trusted.test"));
    poll("HTTPS JWKS fetched", Duration::from_secs(10), || async {
        (get(&h, &trusted, "/api/v1/regions").await.status() == 200).then_some(())
    })
    .await;
    let untrusted = sign(&key, &claims("https://untrusted.test"));
    let body = expect_error(
        get(&h, &untrusted, "/api/v1/regions").await,
        401,
        "invalid_token",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("signing key"),
        "{body}"
    );
}
