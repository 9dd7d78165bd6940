//! The admin listener over HTTPS (`server.admin_tls`, certificates made with `openssl`): the
//! console's session cookie becomes `__Host-` prefixed and `Secure`, sign-in, pages, the CSRF
//! token and the `Origin` check work with the https origin; `check` validates the files; a
//! reload renews the certificate; its expiry is a metric.

use crate::harness::console::Console;
use crate::harness::tls::TestCa;
use crate::harness::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_over_https_has_a_host_prefixed_secure_cookie() {
    let ca = TestCa::new();
    let first = ca.leaf("admin1", 20);
    let sim = start_sim(sim_options()).await;
    let mut b = ConfigBuilder::new(&sim.url());
    b.admin_tls = Some((first.cert.clone(), first.key.clone()));
    let root = b.key("admin").to_string();
    let p = ProxyProcess::start(&b).await;
    assert!(p.admin_url.starts_with("https://127.0.0.1:"));
    let https = ca.client();

    // The admin API over HTTPS; no plain HTTP on that port.
    let r = https
        .get(format!("{}/admin/config", p.admin_url))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let plain = p.admin_url.replacen("https://", "http://", 1);
    let r = reqwest::Client::new()
        .get(format!("{plain}/admin/config"))
        .bearer_auth(&root)
        .send()
        .await;
    assert!(
        r.as_ref().map_or(true, |r| r.status() != 200),
        "plain HTTP served: {r:?}"
    );

    // Sign in: the cookie is __Host- prefixed, Secure, Path=/, no Domain, HttpOnly, Strict.
    let mut ui = Console::with_client(&p.admin_url, https.clone());
    assert_eq!(ui.get("/ui/login").await.status, 200);
    assert_eq!(ui.sign_in_key(&root).await, 303);
    let set = ui.set_cookie.clone().unwrap();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs[0].starts_with("__Host-orion_console="), "{set}");
    for want in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&want), "{want} missing: {set}");
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{set}"
    );
    // A page renders.
    let page = ui.get("/ui/clients").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Clients and usage"), "{}", page.body);
    // The token under the plain name is no session over TLS.
    let token = ui.cookie.clone().unwrap();
    let value = token.split_once('=').unwrap().1.to_string();
    let mut plain_named = Console::with_client(&p.admin_url, https.clone());
    plain_named.cookie = Some(format!("orion_console={value}"));
    assert!(!plain_named.signed_in("/ui/clients").await);

    // CSRF and Origin with the https origin: an action without the token is refused, one from
    // the http origin of the same host and port too; with both right it is done.
    let form = [
        ("name", "tls-made"),
        ("roles", "viewer"),
        ("tenant", "acme"),
    ];
    let r = ui.post_from("/ui/credentials/api-keys", None, &form).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let csrf = ui.csrf("/ui/credentials").await;
    let mut with_csrf = vec![("csrf", csrf.as_str())];
    with_csrf.extend_from_slice(&form);
    let r = ui
        .post_from("/ui/credentials/api-keys", Some(&plain), &with_csrf)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = ui
        .post_from("/ui/credentials/api-keys", None, &with_csrf)
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    // A sign-in from the http origin is refused too.
    let r = https
        .post(format!("{}/ui/login", p.admin_url))
        .header("origin", &plain)
        .form(&[("key", root.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Sign-out clears the __Host- cookie, and the session is gone.
    let r = ui.post("/ui/logout", "/ui/clients", &[]).await;
    assert_eq!(r.status, 303);
    assert!(!ui.signed_in("/ui/clients").await);

    // The admin listener's certificate expiry is reported under its own label.
    let scrape = reqwest::get(format!("{}/metrics", p.metrics_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let expires_at: f64 = scrape
        .lines()
        .find(|l| {
            l.starts_with(
                "orion_proxy_tls_certificate_expiration_timestamp_seconds{listener=\"admin\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no admin expiry in {scrape}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let days = (expires_at - now) / 86_400.0;
    assert!((18.9..=20.1).contains(&days), "{days}");

    // A reload renews the certificate: new handshakes get the new one.
    assert_eq!(
        ca.served_serial(port_of(&p.admin_url)),
        TestCa::serial_of(&first.cert)
    );
    let second = ca.leaf("admin2", 40);
    std::fs::copy(&second.cert, &first.cert).unwrap();
    std::fs::copy(&second.key, &first.key).unwrap();
    let text = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, format!("{text}# renewed\n")).unwrap();
    let r = https
        .post(format!("{}/admin/reload", p.admin_url))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let want = TestCa::serial_of(&second.cert);
    poll(
        "the renewed certificate",
        Duration::from_secs(30),
        || async { (ca.served_serial(port_of(&p.admin_url)) == want).then_some(()) },
    )
    .await;
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn check_validates_the_admin_certificate_files() {
    let ca = TestCa::new();
    let a = ca.leaf("a", 5);
    let other = ca.leaf("other", 5);
    let dir = tempfile::tempdir().unwrap();
    let mut b = ConfigBuilder::unreachable();
    // Missing files are named by their path in the config.
    b.admin_tls = Some((dir.path().join("nope.pem"), a.key.clone()));
    let run = check_config(&b.write(dir.path(), &Ports::free()));
    assert!(!run.ok);
    assert!(
        run.text().contains("server.admin_tls.cert_file"),
        "{}",
        run.text()
    );
    // A key that does not fit the certificate.
    b.admin_tls = Some((a.cert.clone(), other.key.clone()));
    let run = check_config(&b.write(dir.path(), &Ports::free()));
    assert!(!run.ok);
    assert!(
        run.text()
            .contains("server.admin_tls: the key does not fit"),
        "{}",
        run.text()
    );
    // Not a certificate at all.
    b.admin_tls = Some((a.key.clone(), a.key.clone()));
    let run = check_config(&b.write(dir.path(), &Ports::free()));
    assert!(!run.ok, "{}", run.text());
    assert!(run.text().contains("server.admin_tls"), "{}", run.text());
    // Without an admin listener there is nothing to put it on.
    b.admin_tls = Some((a.cert.clone(), a.key.clone()));
    b.extra_server = String::new();
    let path = b.write(dir.path(), &Ports::free());
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("admin_listen"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace("server:\n", "server:\n  admin_listen: null\n");
    std::fs::write(&path, text).unwrap();
    let run = check_config(&path);
    assert!(!run.ok);
    assert!(
        run.text()
            .contains("server.admin_tls: there is no admin listener"),
        "{}",
        run.text()
    );
    // And the good pair passes.
    b.admin_tls = Some((a.cert.clone(), a.key.clone()));
    let run = check_config(&b.write(dir.path(), &Ports::free()));
    assert!(run.ok, "{}", run.text());
}
