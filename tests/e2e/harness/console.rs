//! The console and the credential-management admin API as an HTTP client (no browser) sees
//! them: sign in with a key or a client's secret, follow the session cookie, post forms with
//! the CSRF token and the console's own `Origin`; create, change and use managed credentials.

use serde_json::{Value, json};

/// A console session over plain HTTP or HTTPS (`base` is the admin listener's URL).
pub struct Console {
    pub http: reqwest::Client,
    pub base: String,
    /// `name=value` of the session cookie once signed in.
    pub cookie: Option<String>,
    /// The whole `Set-Cookie` header of the last sign-in.
    pub set_cookie: Option<String>,
}

/// One console answer.
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
}

impl Console {
    pub fn new(base: &str) -> Console {
        Console::with_client(
            base,
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        )
    }

    /// With a client of the test's making (a CA for HTTPS); it must not follow redirects.
    pub fn with_client(base: &str, http: reqwest::Client) -> Console {
        Console {
            http,
            base: base.trim_end_matches('/').to_string(),
            cookie: None,
            set_cookie: None,
        }
    }

    async fn page(&self, r: reqwest::RequestBuilder) -> Page {
        let r = match &self.cookie {
            Some(c) => r.header("cookie", c),
            None => r,
        };
        let resp = r.send().await.unwrap();
        Page {
            status: resp.status().as_u16(),
            location: resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string()),
            body: resp.text().await.unwrap_or_default(),
        }
    }

    async fn sign_in(&mut self, form: &[(&str, &str)]) -> u16 {
        let resp = self
            .http
            .post(format!("{}/ui/login", self.base))
            .header("origin", &self.base)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if let Some(c) = resp.headers().get("set-cookie") {
            let c = c.to_str().unwrap().to_string();
            self.cookie = c.split(';').next().map(str::to_string);
            self.set_cookie = Some(c);
        }
        status
    }

    /// Signs in with an API key; answers the status (303 on success).
    pub async fn sign_in_key(&mut self, key: &str) -> u16 {
        self.sign_in(&[("key", key)]).await
    }

    /// Signs in with a client's id and secret; answers the status (303 on success).
    pub async fn sign_in_client(&mut self, id: &str, secret: &str) -> u16 {
        self.sign_in(&[("client_id", id), ("client_secret", secret)])
            .await
    }

    pub async fn get(&self, path: &str) -> Page {
        self.page(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Posts a form with the given `Origin` (`None`: the console's own) and the form fields.
    pub async fn post_from(&self, path: &str, origin: Option<&str>, form: &[(&str, &str)]) -> Page {
        self.page(
            self.http
                .post(format!("{}{path}", self.base))
                .header("origin", origin.unwrap_or(&self.base))
                .form(form),
        )
        .await
    }

    /// Posts a form with the session's CSRF token, read from `page_path`.
    pub async fn post(&self, path: &str, page_path: &str, form: &[(&str, &str)]) -> Page {
        let csrf = self.csrf(page_path).await;
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(form);
        self.post_from(path, None, &all).await
    }

    /// The CSRF token of a page's forms.
    pub async fn csrf(&self, page_path: &str) -> String {
        let p = self.get(page_path).await;
        assert_eq!(p.status, 200, "{page_path}: {}", p.body);
        let at = p
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF token on {page_path}"));
        let rest = &p.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }

    /// Whether the session still opens `path` (200), rather than being sent to sign in.
    pub async fn signed_in(&self, path: &str) -> bool {
        let p = self.get(path).await;
        match p.status {
            200 => true,
            303 => {
                assert_eq!(p.location.as_deref(), Some("/ui/login"));
                false
            }
            other => panic!("{path}: unexpected {other}: {}", p.body),
        }
    }
}

/// A call to the admin API with a bearer credential: status and JSON body.
pub async fn admin(
    http: &reqwest::Client,
    admin_url: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http
        .request(method, format!("{admin_url}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `GET /api/v1/regions` with a credential: the status.
pub async fn api(http: &reqwest::Client, url: &str, credential: &str) -> u16 {
    http.get(format!("{url}/api/v1/regions"))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token from `/oauth/token` for a client's secret, when granted.
pub async fn token(http: &reqwest::Client, url: &str, id: &str, secret: &str) -> Option<String> {
    let r = http
        .post(format!("{url}/oauth/token"))
        .json(
            &json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret}),
        )
        .send()
        .await
        .unwrap();
    if r.status() != 200 {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().map(str::to_string)
}

/// `extra_top` lines that every node of a test shares: the token signing key (a file in
/// `dir`) and a roomy default quota.
pub fn signing_key_yaml(dir: &std::path::Path) -> String {
    let signing = dir.join("signing-key");
    std::fs::write(&signing, "k".repeat(48)).unwrap();
    format!(
        "oauth:\n  signing_key: {{file: \"{}\"}}\nlimits:\n  policies:\n    default: {{quota: 100000, window_seconds: 60}}\n",
        signing.display()
    )
}
