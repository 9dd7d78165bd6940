"""The web console in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium), against a running demo. Run by tests/e2e/console_browser.rs, which starts the demo
and passes its URLs and keys in the environment. Every wait is explicit, with generous
deadlines (the machine may be loaded); the whole run is bounded by the caller.

Scenarios: sign in with the admin key; every page renders real figures (after traffic through
the proxy, the overview's request count and the client's usage row match what was sent, and the
client's drill-down chart draws its requests, live); the
audit search finds a mutating call; an API key issued in the console works (200) until it is
disabled in the console (401), and both actions are in the audit page; a console:read user sees
no action buttons and its POSTs are refused; a POST without the CSRF token is refused; after
sign-out the old cookie no longer works. Each page's screenshot goes to $SCREENSHOTS.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = os.environ["ADMIN_URL"]
PROXY = os.environ["PROXY_URL"]
KEYS = json.loads(os.environ["DEMO_KEYS"])
SHOTS = os.environ["SCREENSHOTS"]
WAIT = 45

os.makedirs(SHOTS, exist_ok=True)


def log(msg):
    print(f"console.py: {msg}", flush=True)


def http(method, url, key=None, body=None, headers=None):
    h = dict(headers or {})
    data = None
    if key:
        h["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=h)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def make_driver():
    opts = webdriver.ChromeOptions()
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1000", "--force-prefers-reduced-motion"]:
        opts.add_argument(a)
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    d = webdriver.Chrome(service=service, options=opts)
    d.set_page_load_timeout(90)
    d.set_script_timeout(60)
    return d


def wait(d, cond, what):
    try:
        # A page being replaced (a form sent, a refresh) leaves stale or missing elements for a
        # moment: they are retried until the deadline, not failures.
        return WebDriverWait(d, WAIT, poll_frequency=0.25,
                             ignored_exceptions=[NoSuchElementException, StaleElementReferenceException]).until(cond)
    except Exception:
        shot(d, "failure-" + what.replace(" ", "-"))
        raise AssertionError(f"timed out waiting for {what}; page: {d.current_url}\n{d.page_source[:3000]}")


def text_of(d, css):
    return d.find_element(By.CSS_SELECTOR, css).text.strip()


def shot(d, name):
    path = os.path.join(SHOTS, f"{name}.png")
    d.save_screenshot(path)
    log(f"screenshot {path}")


def open_page(d, path, marker):
    d.get(ADMIN + path)
    wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, marker)), f"{path} to show {marker}")


def sign_in(d, key):
    d.delete_all_cookies()
    d.get(ADMIN + "/ui/login")
    wait(d, EC.presence_of_element_located((By.ID, "key")), "the sign-in form")
    d.find_element(By.ID, "key").send_keys(key)
    d.find_element(By.ID, "sign-in").click()
    wait(d, EC.presence_of_element_located((By.ID, "who")), "the signed-in page")


def sign_out(d):
    d.find_element(By.ID, "sign-out").click()
    wait(d, EC.presence_of_element_located((By.ID, "sign-in")), "the sign-in form after sign-out")


def post_from_page(d, path, fields):
    """A POST sent by the page itself (fetch, so the browser adds Origin and the cookie)."""
    return d.execute_async_script(
        """
        const [path, fields, done] = arguments;
        fetch(path, {method: 'POST', credentials: 'same-origin', redirect: 'manual',
                     body: new URLSearchParams(fields)})
          .then(r => done(r.status)).catch(e => done('error ' + e));
        """,
        path,
        fields,
    )


def csrf_of(d):
    return d.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")


def main():
    d = make_driver()
    try:
        run(d)
    finally:
        d.quit()


def run(d):
    # --- sign in with the admin key; the overview shows the proxy's own count -------------
    sign_in(d, KEYS["admin"])
    open_page(d, "/ui/", "#requests-hour")
    before = int(text_of(d, "#requests-hour"))
    sent = 7
    for _ in range(sent):
        status, _, _ = http("GET", PROXY + "/api/v1/regions", KEYS["viewer"])
        assert status == 200, status
    want = before + sent
    d.get(ADMIN + "/ui/")
    wait(d, lambda d: int(text_of(d, "#requests-hour")) == want or d.refresh(),
         f"the overview to count {want} requests")
    # The charts are drawn by the vendored uPlot.
    wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "[data-chart=rps] canvas")), "a chart")
    shot(d, "overview")
    log(f"overview counted {want} requests ({sent} sent)")

    # --- clients: the viewer's usage row matches what was sent ------------------------------
    open_page(d, "/ui/clients", "#clients")
    row = wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "tr[data-principal='key:demo-viewer']")),
               "the viewer's usage row")
    cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
    # tenant, then minute (requests, errors, 429), hour (...), day (...)
    assert cells[0] == "acme", cells
    assert cells[4] == str(sent), f"last hour requests {cells}"
    assert cells[7] == str(sent), f"last day requests {cells}"
    shot(d, "clients")

    # --- the client's drill-down: a live chart of its own last hour -------------------------
    # Two more of the viewer's requests, one refused (404), arrive while the page is open: the
    # live refresh brings them to the totals and the chart without a reload.
    row.find_element(By.CSS_SELECTOR, "th a").click()
    wait(d, EC.presence_of_element_located((By.CSS_SELECTOR, "[data-chart=client] canvas")), "the client's chart")
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-chart=client]").get_attribute("data-drawn-total") == str(sent),
         f"the client's chart to draw {sent} requests")
    assert text_of(d, "#client-requests") == str(sent), text_of(d, "#client-requests")
    points = int(d.find_element(By.CSS_SELECTOR, "[data-chart=client]").get_attribute("data-drawn-points"))
    assert points == 360, f"an hour of ten-second points, got {points}"
    status, _, _ = http("GET", PROXY + "/api/v1/regions", KEYS["viewer"])
    assert status == 200, status
    status, _, _ = http("GET", PROXY + "/api/v1/instances/00000000-0000-4000-8000-000000000000", KEYS["viewer"])
    assert status >= 400 and status != 429, status
    wait(d, lambda d: d.find_element(By.CSS_SELECTOR, "[data-chart=client]").get_attribute("data-drawn-total") == str(sent + 2),
         "the chart to take the new requests live")
    wait(d, lambda d: text_of(d, "#client-requests") == str(sent + 2) and text_of(d, "#client-errors") == "1",
         "the client's totals to take the new requests live")
    # The chart's own legend names the three series.
    legend = text_of(d, "[data-chart=client] .u-legend")
    assert "requests" in legend and "errors" in legend and "429" in legend, legend
    shot(d, "client")
    log(f"the client's chart drew {sent + 2} requests, 1 error")

    # --- endpoints, tasks, configuration render real data ----------------------------------
    open_page(d, "/ui/endpoints", "#endpoints tbody tr")
    assert "up" in text_of(d, "#endpoints tbody") or "unknown" in text_of(d, "#endpoints tbody")
    # A chart per endpoint, drawn from its own last hour: the calls made for the requests sent
    # above are in the chart of the endpoint that served them.
    charts = d.find_elements(By.CSS_SELECTOR, "[data-chart=endpoint]")
    rows = d.find_elements(By.CSS_SELECTOR, "#endpoints tbody tr")
    assert len(charts) == len(rows) and charts, (len(charts), len(rows))
    wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-chart=endpoint] canvas")) == len(charts),
         "a chart per endpoint")
    wait(d, lambda d: sum(int(c.get_attribute("data-drawn-total") or 0)
                          for c in d.find_elements(By.CSS_SELECTOR, "[data-chart=endpoint]")) >= sent,
         f"the endpoints' charts to draw the {sent} calls")
    shot(d, "endpoints")
    # A facade task to list.
    status, _, body = http("GET", PROXY + "/v1/instances", KEYS["operator"])
    assert status == 200, (status, body)
    instances = json.loads(body)
    items = instances.get("items", instances) if isinstance(instances, dict) else instances
    inst = items[0]["id"]
    status, _, body = http("POST", PROXY + f"/v1/instances/{inst}/reboot", KEYS["operator"])
    assert status in (200, 201, 202), (status, body)
    open_page(d, "/ui/tasks", "#tasks")
    wait(d, lambda d: str(inst) in text_of(d, "#tasks") or d.refresh(), "the reboot task in the tasks page")
    shot(d, "tasks")
    open_page(d, "/ui/config", "#config")
    cfg = text_of(d, "#config")
    assert "[redacted]" in cfg and KEYS["admin"] not in cfg
    d.find_element(By.ID, "reload").click()
    wait(d, EC.presence_of_element_located((By.ID, "outcome")), "the reload outcome")
    assert "Reloaded" in text_of(d, "#outcome"), text_of(d, "#outcome")
    open_page(d, "/ui/config", "#config")
    assert "Succeeded" in text_of(d, "#last-reload")
    shot(d, "configuration")

    # --- the audit search finds a mutating call made through the proxy ----------------------
    status, headers, body = http("POST", PROXY + "/api/v1/public_keys", KEYS["admin"],
                                 {"name": "console-test", "key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHdrY29uc29sZXRlc3Q console@test"})
    assert status < 300, (status, body)
    rid = headers.get("x-request-id") or headers.get("X-Request-Id")
    open_page(d, "/ui/audit", "#f-user")
    d.find_element(By.ID, "f-user").send_keys("key:demo-admin")
    d.find_element(By.ID, "search").click()
    wait(d, lambda d: rid in text_of(d, "#audit"), f"the audit record of {rid}")
    assert "key:demo-admin" in d.current_url.replace("%3A", ":")
    shot(d, "audit")
    # The download links carry the same filters, in both formats.
    csv_href = d.find_element(By.ID, "export-csv").get_attribute("href")
    assert "format=csv" in csv_href and "user=key" in csv_href, csv_href

    # --- issue a key in the console, use it, disable it in the console ---------------------
    open_page(d, "/ui/credentials", "#create-api-keys")
    shot(d, "credentials")
    d.find_element(By.ID, "new-api-keys-name").send_keys("console-made")
    roles = d.find_element(By.ID, "new-api-keys-roles")
    roles.clear()
    roles.send_keys("viewer")
    d.find_element(By.ID, "create-api-keys").click()
    wait(d, EC.presence_of_element_located((By.ID, "secret")), "the new key")
    key = text_of(d, "#secret")
    assert len(key) == 64 and key.startswith("ork_"), key
    shot(d, "credentials-issued")
    status, _, _ = http("GET", PROXY + "/api/v1/regions", key)
    assert status == 200, f"the new key got {status}"
    open_page(d, "/ui/credentials", "#disable-console-made")
    # Later answers never show the key again.
    assert key not in d.page_source
    d.find_element(By.ID, "disable-console-made").click()
    wait(d, EC.presence_of_element_located((By.ID, "outcome")), "the disable outcome")
    status, _, _ = http("GET", PROXY + "/api/v1/regions", key)
    assert status == 401, f"the disabled key got {status}"
    open_page(d, "/ui/credentials", "#enable-console-made")
    shot(d, "credentials-managed")
    open_page(d, "/ui/audit?action=admin.api_key.create", "#audit")
    wait(d, lambda d: "admin.api_key.create" in text_of(d, "#audit tbody"), "the create in the audit page")
    open_page(d, "/ui/audit?action=admin.api_key.disable", "#audit")
    wait(d, lambda d: "admin.api_key.disable" in text_of(d, "#audit tbody"), "the disable in the audit page")
    assert "/ui/credentials/api-keys/" in text_of(d, "#audit tbody")
    log("issued, used (200), disabled (401) and audited a key")

    # --- a POST without the CSRF token is refused -----------------------------------------
    assert post_from_page(d, "/ui/config/reload", {}) == 403
    assert post_from_page(d, "/ui/config/reload", {"csrf": "0" * 64}) == 403

    # --- sign-out: the old cookie no longer works ------------------------------------------
    cookie = {c["name"]: c for c in d.get_cookies()}["orion_console"]
    assert cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
    jar = f"orion_console={cookie['value']}"
    assert http("GET", ADMIN + "/ui/", headers={"Cookie": jar})[0] == 200
    sign_out(d)
    status, headers, _ = http("GET", ADMIN + "/ui/", headers={"Cookie": jar})
    assert status == 303 and headers.get("location", headers.get("Location")) == "/ui/login", status
    shot(d, "sign-in")

    # --- a console:read user sees no action buttons and its POSTs are refused --------------
    sign_in(d, KEYS["console_reader"])
    assert text_of(d, "#role") == "console:read"
    open_page(d, "/ui/credentials", "#api-keys")
    assert not d.find_elements(By.CSS_SELECTOR, "#create-api-keys, [id^=disable-], [id^=rotate-], [id^=delete-]")
    open_page(d, "/ui/config", "#config")
    assert not d.find_elements(By.ID, "reload")
    token = csrf_of(d)
    assert post_from_page(d, "/ui/config/reload", {"csrf": token}) == 403
    assert post_from_page(d, "/ui/credentials/api-keys",
                          {"csrf": token, "name": "nope", "roles": "viewer", "tenant": "acme"}) == 403
    shot(d, "read-only")
    sign_out(d)
    log("all console scenarios passed")


if __name__ == "__main__":
    main()
