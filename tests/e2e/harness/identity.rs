//! Helpers shared by the identity tests: registered clients and token requests, the OrionVM
//! examples, and an instance lifecycle run with any credential.

use super::*;
use serde_json::{Value, json};
use std::time::Duration;

pub const WEB1: &str = "3b0c2f6e-1111-4222-8333-944455556666";

pub fn examples() -> Value {
    serde_json::from_str(include_str!(
        "../../../crates/orion-sim/src/orionvm-v1-examples.json"
    ))
    .unwrap()
}

/// A client registered with the proxy's `/oauth/token`.
#[derive(Clone)]
pub struct ClientSpec {
    pub id: String,
    pub secret: String,
    pub hash: String,
    pub roles: Vec<String>,
    pub tenant: String,
    pub enabled: bool,
}

impl ClientSpec {
    pub fn new(id: &str, roles: &[&str], tenant: &str) -> ClientSpec {
        let secret = orion_proxy::auth::tokens::generate_secret();
        ClientSpec {
            id: id.into(),
            hash: orion_proxy::auth::tokens::hash_secret(&secret).unwrap(),
            secret,
            roles: roles.iter().map(|s| s.to_string()).collect(),
            tenant: tenant.into(),
            enabled: true,
        }
    }
}

/// The signing key (a file in its own temp dir) and the clients; renders the config part.
pub struct Identity {
    /// Holds the key file (None when it is another identity's); removed on drop.
    _dir: Option<tempfile::TempDir>,
    pub key_path: String,
    pub clients: Vec<ClientSpec>,
    /// Extra lines under `oauth:`.
    pub oauth_extra: String,
}

impl Identity {
    pub fn new(clients: Vec<ClientSpec>) -> Identity {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("token-key");
        std::fs::write(&key_path, orion_proxy::auth::tokens::generate_secret()).unwrap();
        Identity {
            key_path: key_path.display().to_string(),
            _dir: Some(dir),
            clients,
            oauth_extra: String::new(),
        }
    }

    /// The same signing key with other clients (the config after a reload).
    pub fn with_clients(&self, clients: Vec<ClientSpec>) -> Identity {
        Identity {
            _dir: None,
            key_path: self.key_path.clone(),
            clients,
            oauth_extra: String::new(),
        }
    }

    pub fn client(&self, id: &str) -> &ClientSpec {
        self.clients.iter().find(|c| c.id == id).expect("client")
    }

    pub fn yaml(&self) -> String {
        let mut y = format!(
            "oauth:\n  signing_key: {{file: \"{}\"}}\n{}",
            self.key_path, self.oauth_extra
        );
        y += "clients:\n";
        for c in &self.clients {
            y += &format!(
                "  - {{client_id: {}, secret_hash: '{}', roles: [{}], tenant: {}, enabled: {}}}\n",
                c.id,
                c.hash,
                c.roles.join(", "),
                c.tenant,
                c.enabled
            );
        }
        y
    }
}

/// The three clients most tests use.
pub fn default_clients() -> Vec<ClientSpec> {
    vec![
        ClientSpec::new("acme-terraform", &["admin"], "acme"),
        ClientSpec::new("acme-ci", &["operator"], "acme"),
        ClientSpec::new("globex-terraform", &["admin"], "globex"),
    ]
}

pub async fn request_token(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    secret: &str,
    form: bool,
) -> reqwest::Response {
    let req = http.post(format!("{base}/oauth/token"));
    let req = if form {
        req.form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
    } else {
        req.json(
            &json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}),
        )
    };
    req.send().await.expect("token request")
}

/// A token for a client, asserting the OrionVM token answer's exact shape.
pub async fn token_for(http: &reqwest::Client, base: &str, c: &ClientSpec) -> String {
    let r = request_token(http, base, &c.id, &c.secret, false).await;
    let v = ok_json(r).await;
    v["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

pub async fn fresh_disk(h: &Harness, key: &str, name: &str) -> String {
    let ex = examples();
    let d = ok_json(
        h.post(
            key,
            "/api/v1/disks",
            json!({"name": name, "performance_tier": ex["disk_create_request"]["performance_tier"],
                   "region": ex["region"]["id"], "size": 20, "template": ex["template"]["id"]}),
        )
        .await,
    )
    .await;
    let id = d["id"].as_str().unwrap().to_string();
    poll("disk unattached", Duration::from_secs(10), || async {
        let d = ok_json(h.get(key, &format!("/api/v1/disks/{id}")).await).await;
        (d["state"] == "unattached").then_some(())
    })
    .await;
    id
}

/// A new stopped instance in the caller's tenant.
pub async fn assemble(h: &Harness, key: &str, name: &str) -> Value {
    let disk = fresh_disk(h, key, &format!("{name}-boot")).await;
    let mut body = examples()["assemble_request"].clone();
    body["name"] = json!(name);
    body["disks"] = json!([disk]);
    body["ip_addresses"] = json!([]);
    ok_json(h.post(key, "/api/v1/instances/assemble", body).await).await
}

/// What the Terraform provider does: catalog, disk, assemble, start, stop, delete.
pub async fn lifecycle(h: &Harness, key: &str) {
    let regions = ok_json(h.get(key, "/api/v1/regions").await).await;
    assert!(regions.as_array().is_some_and(|a| !a.is_empty()));
    ok_json(h.get(key, "/api/v1/templates").await).await;
    ok_json(h.get(key, "/api/v1/performance_tiers/instances").await).await;
    let inst = assemble(h, key, "identity-e2e").await;
    let id = inst["id"].as_str().unwrap().to_string();
    let got = ok_json(h.get(key, &format!("/api/v1/instances/{id}")).await).await;
    assert_eq!(got["state"], "stopped");
    let started = ok_json(
        h.post(key, &format!("/api/v1/instances/{id}/start"), json!({}))
            .await,
    )
    .await;
    assert_eq!(started["id"], id.as_str());
    wait_state(h, key, &id, "running").await;
    ok_json(
        h.post(key, &format!("/api/v1/instances/{id}/stop"), json!({}))
            .await,
    )
    .await;
    wait_state(h, key, &id, "stopped").await;
    let deleted = ok_json(h.delete(key, &format!("/api/v1/instances/{id}")).await).await;
    assert_eq!(deleted["id"], id.as_str());
    poll("instance gone", Duration::from_secs(10), || async {
        let r = h.get(key, &format!("/api/v1/instances/{id}")).await;
        (r.status() == 404).then_some(())
    })
    .await;
}
