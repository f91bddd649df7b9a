//! The web console in a real browser: headless Chromium over WebDriver against a real engine
//! and a real receiver. Every step reads the page's console log: a script error, a CSP
//! violation or a failed load fails the test. Screenshots of every page visited land in
//! `target/console-screenshots/<test>/` when a test fails.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::browser::Browser;
use crate::support::{ACME_KEY, Receiver, TestEngine, eventually, parse_config, test_config_toml};

/// The payload the console must show as text.
const XSS: &str = "<img src=x onerror=alert(1)>";
const ADMIN_KEY: &str = "console-admin-key";

/// An engine whose config also has an admin key.
async fn engine_with_admin() -> TestEngine {
    let data_dir = tempfile::tempdir().unwrap();
    let text = format!(
        "admin_api_keys = [\"sha256:{}\"]\n{}",
        hex::encode(hookd::config::hash_api_key(ADMIN_KEY)),
        test_config_toml(data_dir.path(), "", true)
    );
    TestEngine::start_in(data_dir, parse_config(&text)).await
}

/// Signs in through the form (typing the key and pressing Enter).
async fn sign_in(b: &Browser, key: &str) {
    b.type_into("#key", &format!("{key}\u{E007}")).await;
}

/// Nothing of the key is kept where page scripts could read it, nor in the URL.
async fn assert_no_key_in_page(b: &Browser, key: &str) {
    let kept = b
        .eval(
            "return [document.cookie, location.href, JSON.stringify(sessionStorage), \
             JSON.stringify(localStorage)].join(' ');",
        )
        .await;
    assert!(!kept.as_str().unwrap().contains(key), "{kept}");
    assert_eq!(b.eval("return document.cookie;").await, json!(""));
}

/// How many rows/elements match `css`, waiting (bounded) until it is `n`.
async fn wait_count(b: &Browser, css: &str, n: usize) {
    let script = format!(
        "return document.querySelectorAll({}).length === {n};",
        json!(css)
    );
    b.wait_until(&format!("{n} × `{css}`"), &script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_signs_in_creates_a_webhook_tests_it_and_follows_its_deliveries() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let b = Browser::start("tenant_flow", 1280, 900).await;
    b.goto(&engine.url("/console")).await;
    b.find("#sign-in").await;
    b.shot("sign-in").await;
    b.assert_clean("the sign-in page", &[]).await;

    // A wrong key is refused, and says so.
    sign_in(&b, "not-a-key").await;
    b.wait_until(
        "the refusal",
        "const e = document.querySelector('#sign-in-error .error'); return e && e.textContent;",
    )
    .await;
    assert!(b.text("#sign-in-error").await.contains("not valid"));
    b.assert_clean("a wrong key", &["/console/session", "401"])
        .await;

    sign_in(&b, ACME_KEY).await;
    b.wait_heading("Webhooks").await;
    assert_no_key_in_page(&b, ACME_KEY).await;
    b.shot("webhooks-empty").await;

    // Create a webhook through the form; its secret is shown once.
    b.click("#new-webhook").await;
    b.wait_heading("New webhook").await;
    b.type_into("#wh-url", &receiver.url).await;
    b.type_into("#wh-description", XSS).await;
    b.type_into("#wh-event_types", "user.*").await;
    b.type_into("#wh-retry_schedule", "1s, 2s").await;
    b.click("#save-webhook").await;
    let secret = b.find("dialog #secret-value").await;
    let secret = secret.prop("value").await.unwrap().unwrap_or_default();
    assert!(secret.starts_with("whsec_"), "{secret}");
    b.shot("secret-revealed").await;
    b.click("dialog button[value=done]").await;
    b.wait_heading("Webhook").await;
    let (_, list) = engine.get("/v1/webhooks").await;
    let webhook = &list["data"][0];
    let webhook_id = webhook["id"].as_str().unwrap().to_string();
    assert_eq!(webhook["description"], XSS);
    assert_eq!(webhook["retry_schedule"], json!(["1s", "2s"]));
    assert!(
        !b.eval("return document.body.textContent;")
            .await
            .as_str()
            .unwrap()
            .contains(&secret),
        "the secret is gone from the page once the dialog closes"
    );

    // A test send goes to the receiver and shows its outcome.
    b.click("#send-test").await;
    b.wait_until(
        "the test outcome",
        "const b = document.querySelector('#test-outcome .badge'); return b && b.textContent;",
    )
    .await;
    assert_eq!(b.text("#test-outcome .badge").await, "delivered");
    assert!(b.text("#test-outcome").await.contains("HTTP 200"));
    assert_eq!(receiver.count(), 1);
    b.shot("webhook-tested").await;
    b.assert_clean("the webhook page", &[]).await;

    // The deliveries page; an event sent now appears after filtering again.
    b.click("#nav a[href='#/deliveries']").await;
    b.wait_heading("Deliveries").await;
    b.wait_until(
        "the empty list",
        "return document.querySelector('main p.muted[aria-live]')?.textContent === 'No deliveries match.';",
    )
    .await;
    let event = engine
        .send_event("user.created", json!({"note": XSS, "n": 1}))
        .await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    engine.wait_delivery(&delivery_id, "delivered").await;
    eventually(Duration::from_secs(15), "the delivery row", || async {
        b.click("#apply-filters").await;
        b.wait_heading("Deliveries").await;
        let rows = b.find_all("tr[data-delivery]").await;
        (rows.len() == 1).then_some(())
    })
    .await;
    b.shot("deliveries").await;

    // Its page: the payload as text, the attempt with what was sent and answered.
    b.click(&format!("tr[data-delivery='{delivery_id}'] a"))
        .await;
    b.wait_heading("Delivery").await;
    assert!(b.text("#event-payload").await.contains(XSS));
    assert_eq!(
        b.eval("return document.querySelectorAll('main img').length;")
            .await,
        json!(0)
    );
    wait_count(&b, "details.attempt", 1).await;
    let attempt = b.text("details.attempt[data-attempt='1']").await;
    assert!(attempt.contains("HTTP 200"), "{attempt}");
    // What was sent: headers with the signature hidden, the body as text.
    assert!(
        attempt.contains("webhook-signature") && attempt.contains("hidden"),
        "{attempt}"
    );
    assert!(!attempt.contains("v1,"), "{attempt}");
    assert!(attempt.contains(XSS), "{attempt}");
    b.shot("delivery").await;
    b.assert_clean("the delivery page", &[]).await;

    // Retry: a second attempt appears.
    b.click("#retry-delivery").await;
    eventually(Duration::from_secs(15), "a second attempt", || async {
        b.click("#refresh-delivery").await;
        b.wait_heading("Delivery").await;
        (b.find_all("details.attempt").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(receiver.count(), 3);
    b.shot("delivery-retried").await;

    // Statistics: one bar per day of the window.
    b.goto(&engine.url("/console#/stats?days=7")).await;
    b.wait_heading("Statistics").await;
    wait_count(&b, "#chart-outcomes g.bar", 7).await;
    b.shot("stats-7").await;
    b.find("#stats-days option[value='30']")
        .await
        .click()
        .await
        .unwrap();
    wait_count(&b, "#chart-outcomes g.bar", 30).await;
    let today: Value = b
        .eval("const bars = document.querySelectorAll('#chart-outcomes g.bar'); return bars[bars.length - 1].querySelector('title').textContent;")
        .await;
    assert!(today.as_str().unwrap().contains("Delivered 1"), "{today}");
    b.shot("stats-30").await;
    b.assert_clean("the statistics page", &[]).await;

    // One channel's statistics: only its event counts; its deliveries are a link away.
    let (status, on_channel) = engine
        .post(
            "/v1/events",
            json!({"type": "user.created", "channel": "sms:15550100", "payload": {"n": 2}}),
        )
        .await;
    assert_eq!(status, 202, "{on_channel}");
    let channel_delivery = on_channel["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    engine.wait_delivery(&channel_delivery, "delivered").await;
    b.type_into("#stats-channel", "sms:15550100").await;
    b.click("#stats-apply").await;
    b.wait_until(
        "the channel's statistics",
        "const e = document.querySelector('#stats-scope code'); return e && e.textContent === 'sms:15550100';",
    )
    .await;
    wait_count(&b, "#chart-outcomes g.bar", 30).await;
    let fact = |term: &str| {
        format!(
            "return [...document.querySelectorAll('dl.facts dt')].find((t) => t.textContent === '{term}').nextElementSibling.textContent;"
        )
    };
    assert_eq!(
        b.eval("return document.querySelector('#stats-incomplete');")
            .await,
        Value::Null,
        "no day is past the channel cap"
    );
    assert_eq!(
        b.eval("return document.querySelector('main').textContent.includes('null');")
            .await,
        json!(false)
    );
    assert_eq!(b.eval(&fact("Events")).await, json!("1"));
    assert_eq!(b.eval(&fact("Delivered")).await, json!("1"));
    assert_eq!(
        b.eval("return document.querySelector('#stats-webhook').value;")
            .await,
        json!(""),
        "a channel's statistics are not also a webhook's"
    );
    b.shot("stats-channel").await;
    b.click("#stats-scope a").await;
    b.wait_heading("Deliveries").await;
    wait_count(&b, "tr[data-delivery]", 1).await;
    b.find(&format!("tr[data-delivery='{channel_delivery}']"))
        .await;
    b.click("#channel-stats a").await;
    b.wait_heading("Statistics").await;
    b.wait_until(
        "the channel's statistics again",
        "const e = document.querySelector('#stats-scope code'); return e && e.textContent === 'sms:15550100';",
    )
    .await;
    b.assert_clean("the channel statistics", &[]).await;

    // The webhook list shows the description as text.
    b.click("#nav a[href='#/webhooks']").await;
    b.wait_heading("Webhooks").await;
    assert_eq!(
        b.text(&format!("tr[data-webhook='{webhook_id}'] .muted"))
            .await,
        XSS
    );
    assert_eq!(
        b.eval("return document.querySelectorAll('main img').length;")
            .await,
        json!(0)
    );

    // Pause, rotate the secret (shown once), resume.
    b.click(&format!("tr[data-webhook='{webhook_id}'] a")).await;
    b.wait_heading("Webhook").await;
    b.click("#toggle-status").await;
    b.wait_until(
        "the paused badge",
        "return document.querySelector('#toggle-status')?.textContent === 'Resume';",
    )
    .await;
    let (_, paused) = engine.get(&format!("/v1/webhooks/{webhook_id}")).await;
    assert_eq!(paused["status"], "paused");
    b.click("#rotate-secret").await;
    b.click("dialog button[value=rotate]").await;
    let rotated = b.find("dialog #secret-value").await;
    let rotated = rotated.prop("value").await.unwrap().unwrap_or_default();
    assert!(rotated.starts_with("whsec_") && rotated != secret);
    b.click("dialog button[value=done]").await;
    b.click("#toggle-status").await;
    b.wait_until(
        "the active badge",
        "return document.querySelector('#toggle-status')?.textContent === 'Pause';",
    )
    .await;
    b.assert_clean("pause, rotate, resume", &[]).await;

    // Event types and plugins pages render.
    b.click("#nav a[href='#/event-types']").await;
    b.wait_heading("Event types").await;
    b.find("[data-event-type='user.created']").await;
    b.shot("event-types").await;
    b.click("#nav a[href='#/plugins']").await;
    b.wait_heading("Plugins").await;
    b.shot("plugins").await;
    b.assert_clean("event types and plugins", &[]).await;

    // Signing out ends the session for the page.
    b.click("#sign-out").await;
    b.find("#sign-in").await;
    let (status, _) = engine.get("/v1/webhooks").await;
    assert_eq!(status, 200, "the API key itself still works");
    b.assert_clean("sign-out", &[]).await;
    b.close().await;
}

/// Whether the page is wider than the window (a sideways scroll of the whole page).
async fn overflows(b: &Browser) -> bool {
    b.eval("return document.documentElement.scrollWidth > window.innerWidth;")
        .await
        .as_bool()
        .unwrap()
}

/// Presses Tab until the focused element matches `css` (at most 40 times).
async fn tab_to(b: &Browser, css: &str) {
    let check = format!(
        "return document.activeElement && document.activeElement.matches({});",
        json!(css)
    );
    for _ in 0..40 {
        if b.eval(&check).await == json!(true) {
            return;
        }
        b.press('\u{E004}').await;
    }
    panic!("Tab never reached `{css}`");
}

async fn press_enter(b: &Browser) {
    b.press('\u{E007}').await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_fits_360_px_works_by_keyboard_and_has_an_admin_view() {
    let engine = engine_with_admin().await;
    let receiver = Receiver::start().await;
    engine
        .create_webhook(json!({"url": receiver.url, "description": "a webhook with a long description that must wrap on a narrow screen"}))
        .await;
    let event = engine.send_event("user.created", json!({"n": 1})).await;
    engine
        .wait_delivery(event["deliveries"][0]["id"].as_str().unwrap(), "delivered")
        .await;

    let b = Browser::start("narrow_keyboard_admin", 360, 800).await;
    b.goto(&engine.url("/console")).await;
    // The key field has the focus: type and press Enter.
    b.wait_until(
        "the focused key field",
        "return document.activeElement && document.activeElement.id === 'key';",
    )
    .await;
    sign_in(&b, ACME_KEY).await;
    b.wait_heading("Webhooks").await;
    for (hash, heading) in [
        ("#/webhooks", "Webhooks"),
        ("#/deliveries", "Deliveries"),
        ("#/stats?days=90", "Statistics"),
        ("#/event-types", "Event types"),
        ("#/plugins", "Plugins"),
    ] {
        b.goto(&engine.url(&format!("/console{hash}"))).await;
        b.wait_heading(heading).await;
        if heading == "Statistics" {
            wait_count(&b, "#chart-outcomes g.bar", 90).await;
        }
        b.shot(&format!("narrow-{heading}")).await;
        assert!(!overflows(&b).await, "{heading} is wider than 360 px");
    }
    b.assert_clean("every page at 360 px", &[]).await;

    // Keyboard only: Tab to a section, Enter; Tab into the list, Enter on a webhook.
    tab_to(&b, "#nav a[href='#/deliveries']").await;
    press_enter(&b).await;
    b.wait_heading("Deliveries").await;
    tab_to(&b, "tr[data-delivery] a").await;
    press_enter(&b).await;
    b.wait_heading("Delivery").await;
    tab_to(&b, "#nav a[href='#/webhooks']").await;
    press_enter(&b).await;
    b.wait_heading("Webhooks").await;
    tab_to(&b, "tr[data-webhook] a").await;
    press_enter(&b).await;
    b.wait_heading("Webhook").await;
    // A dialog opens from the keyboard, holds the focus, and Escape closes it.
    tab_to(&b, "#rotate-secret").await;
    press_enter(&b).await;
    b.wait_until(
        "focus inside the dialog",
        "return document.activeElement && document.activeElement.closest('dialog[open]') !== null;",
    )
    .await;
    b.press('\u{E00C}').await;
    b.wait_until(
        "the dialog closed",
        "return document.querySelector('dialog[open]') === null;",
    )
    .await;
    b.shot("narrow-webhook").await;
    b.assert_clean("keyboard use", &[]).await;
    tab_to(&b, "#sign-out").await;
    press_enter(&b).await;
    b.find("#sign-in").await;

    // The admin key opens the tenants view (and a tenant route refuses an admin session).
    sign_in(&b, ADMIN_KEY).await;
    b.wait_heading("Tenants").await;
    b.find("tr[data-tenant='acme']").await;
    b.find("tr[data-tenant='globex']").await;
    // acme: 1 webhook, 0 plugins, 1 event stored, 0 pending, 1 event today and this week.
    let cells: Value = b
        .eval("return [...document.querySelectorAll(\"tr[data-tenant='acme'] td\")].map(td => td.textContent);")
        .await;
    let cells: Vec<&str> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        (
            cells[0], cells[1], cells[2], cells[3], cells[5], cells[6], cells[7]
        ),
        ("acme", "1", "0", "1", "0", "1", "1"),
        "{cells:?}"
    );
    assert!(
        !overflows(&b).await,
        "the tenants view is wider than 360 px"
    );
    b.shot("admin").await;
    b.assert_clean("the admin view", &[]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_uploaded_attached_and_simulated_on_a_past_event_and_events_replayed() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    let webhook = engine.create_webhook(json!({"url": receiver.url})).await;
    let event = engine
        .send_event("user.created", json!({"kind": "order", "n": 1}))
        .await;
    let delivery_id = event["deliveries"][0]["id"].as_str().unwrap().to_string();
    engine.wait_delivery(&delivery_id, "delivered").await;

    let b = Browser::start("plugins_replay", 1280, 900).await;
    b.goto(&engine.url("/console")).await;
    sign_in(&b, ACME_KEY).await;
    b.wait_heading("Webhooks").await;

    // Upload a real component through the file input.
    b.click("#nav a[href='#/plugins']").await;
    b.wait_heading("Plugins").await;
    b.type_into("#plugin-name", "only-orders").await;
    let component = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist/json-filter.wasm")
        .canonicalize()
        .expect("plugins/dist is built (scripts/test.sh)");
    b.find("#plugin-file")
        .await
        .send_keys(component.to_str().unwrap())
        .await
        .unwrap();
    b.click("#upload-form button[type=submit]").await;
    b.find("tr[data-plugin='only-orders']").await;
    b.shot("plugin-uploaded").await;

    // Simulate it on the past event: kind "order" is allowed, so it would deliver.
    let config = r#"{"path": "data.kind", "allowed": ["order"]}"#;
    b.type_into("#simulate-config", config).await;
    b.find("#simulate-source option[value='event']")
        .await
        .click()
        .await
        .unwrap();
    b.type_into("#simulate-event", event["id"].as_str().unwrap())
        .await;
    b.click("#simulate-form button[type=submit]").await;
    b.wait_until(
        "the simulation",
        "const b = document.querySelector('#simulate-outcome .badge'); return b && b.textContent;",
    )
    .await;
    assert_eq!(b.text("#simulate-outcome .badge").await, "deliver");
    assert!(
        b.text("#simulate-outcome")
            .await
            .contains("\"kind\":\"order\"")
    );
    b.shot("simulated").await;

    // Attach it to the webhook.
    b.type_into(
        "#attach-config",
        r#"{"path": "data.kind", "allowed": ["invoice"]}"#,
    )
    .await;
    b.click("#attach-form button[type=submit]").await;
    b.wait_heading("Webhook").await;
    let (_, attached) = engine
        .get(&format!("/v1/webhooks/{}", webhook["id"].as_str().unwrap()))
        .await;
    assert_eq!(attached["plugins"][0]["name"], "only-orders");
    b.assert_clean("plugins", &[]).await;

    // Replay the delivered event: the new delivery is filtered by the plugin now attached.
    b.goto(&engine.url(&format!("/console#/deliveries/{delivery_id}")))
        .await;
    b.wait_heading("Delivery").await;
    b.click("#replay-event").await;
    let link = b.find("#delivery-action-outcome a").await;
    let replayed = link.text().await.unwrap();
    assert!(replayed.starts_with("dlv_") && replayed != delivery_id);
    engine.wait_delivery(&replayed, "filtered").await;
    assert_eq!(receiver.count(), 1);
    b.shot("replayed").await;
    b.assert_clean("replay", &[]).await;

    // The webhook's page lists its chain; Detach (confirmed) takes the step out.
    let webhook_id = webhook["id"].as_str().unwrap();
    b.goto(&engine.url(&format!("/console#/webhooks/{webhook_id}")))
        .await;
    b.wait_heading("Webhook").await;
    let step = b.text("#plugin-chain tr[data-step='0']").await;
    assert!(
        step.contains("only-orders") && step.contains("current") && step.contains("invoice"),
        "{step}"
    );
    b.shot("plugin-chain").await;
    // (The replay's toast may still cover the bottom of the page.)
    b.wait_until(
        "the last toast gone",
        "return document.querySelector('#toast').textContent === '';",
    )
    .await;
    b.click("#detach-0").await;
    b.click("dialog button[value=detach]").await;
    b.wait_until(
        "the chain gone from the page",
        "return document.querySelector('h1')?.textContent === 'Webhook' \
            && document.querySelector('#toggle-status') !== null \
            && document.querySelector('#plugin-chain') === null;",
    )
    .await;
    let (_, detached) = engine.get(&format!("/v1/webhooks/{webhook_id}")).await;
    assert_eq!(detached["plugins"], json!([]), "{detached}");
    b.shot("detached").await;
    b.assert_clean("detach", &[]).await;
    b.close().await;
}

/// Whether the element matching `css` takes space on the page (not `display: none`).
async fn displayed(b: &Browser, css: &str) -> bool {
    let script = format!(
        "const e = document.querySelector({}); return e !== null && e.getClientRects().length > 0;",
        json!(css)
    );
    b.eval(&script).await.as_bool().unwrap()
}

/// Makes the page's API calls whose path starts with one of `prefixes` answer `ms` later (a
/// slow engine), until the next page load.
async fn slow_api(b: &Browser, prefixes: &[&str], ms: u64) {
    b.eval(&format!(
        "const slow = {}; const real = window.fetch.bind(window); \
         window.fetch = (url, options) => new Promise((done) => \
           setTimeout(done, slow.some((p) => String(url).startsWith(p)) ? {ms} : 0)) \
           .then(() => real(url, options)); return true;",
        json!(prefixes)
    ))
    .await;
}

/// What `<main>` holds: its headings and forms (to see two pages mixed into one).
async fn main_outline(b: &Browser) -> Value {
    b.eval(
        "return { h1: [...document.querySelectorAll('main h1')].map((e) => e.textContent), \
                  forms: [...document.querySelectorAll('main form')].map((e) => e.id), \
                  tables: document.querySelectorAll('main table').length, \
                  hash: location.hash };",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_renders_once_even_when_navigation_overtakes_it_and_load_more_ends() {
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    // Three webhooks; only the first takes user.created: 60 deliveries, two pages of 50.
    let first = engine
        .create_webhook(json!({"url": receiver.url, "event_types": ["user.created"]}))
        .await;
    let first_id = first["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        engine
            .create_webhook(json!({"url": receiver.url, "event_types": ["other.thing"]}))
            .await;
    }
    for n in 0..60 {
        engine.send_event("user.created", json!({"n": n})).await;
    }

    let b = Browser::start("render_once", 1280, 900).await;
    b.goto(&engine.url("/console")).await;
    sign_in(&b, ACME_KEY).await;
    b.wait_heading("Webhooks").await;
    wait_count(&b, "tr[data-webhook]", 3).await;
    // The sign-in renders the first page once: one table of three rows, not two.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let outline = main_outline(&b).await;
    assert_eq!(outline["tables"], json!(1), "{outline}");
    assert_eq!(outline["h1"], json!(["Webhooks"]), "{outline}");
    assert_eq!(b.find_all("tr[data-webhook]").await.len(), 3);
    b.shot("signed-in").await;

    // A second navigation before the first page's calls answered: only the second page shows.
    b.click("#nav a[href='#/event-types']").await;
    b.wait_heading("Event types").await;
    slow_api(&b, &["/v1/webhooks"], 700).await;
    b.eval("location.hash = '#/webhooks'; setTimeout(() => { location.hash = '#/event-types'; }, 50); return true;")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let outline = main_outline(&b).await;
    assert_eq!(outline["hash"], json!("#/event-types"), "{outline}");
    assert_eq!(outline["h1"], json!(["Event types"]), "{outline}");
    assert_eq!(outline["tables"], json!(0), "{outline}");
    assert_eq!(
        b.eval("return document.activeElement.textContent;").await,
        json!("Event types"),
        "the overtaken render does not take the focus"
    );
    b.shot("overtaken-webhooks").await;

    // The same from the deliveries list (two calls in a row) to a webhook's page.
    slow_api(&b, &["/v1/webhooks?", "/v1/deliveries"], 500).await;
    b.eval(&format!(
        "location.hash = '#/deliveries'; setTimeout(() => {{ location.hash = '#/webhooks/{first_id}'; }}, 50); return true;"
    ))
    .await;
    b.wait_heading("Webhook").await;
    b.find("#test-form").await;
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let outline = main_outline(&b).await;
    assert_eq!(outline["h1"], json!(["Webhook"]), "{outline}");
    assert_eq!(outline["forms"], json!(["test-form"]), "{outline}");
    b.shot("overtaken-deliveries").await;
    b.assert_clean("fast navigation", &[]).await;

    // "Load more" pages to the end, then hides; no row twice.
    b.goto(&engine.url("/console#/deliveries")).await;
    b.wait_heading("Deliveries").await;
    wait_count(&b, "tr[data-delivery]", 50).await;
    assert!(displayed(&b, "#more-deliveries").await);
    b.click("#more-deliveries").await;
    wait_count(&b, "tr[data-delivery]", 60).await;
    b.wait_until(
        "the button hidden",
        "return document.querySelector('#more-deliveries').getClientRects().length === 0;",
    )
    .await;
    let distinct = b
        .eval("return new Set([...document.querySelectorAll('tr[data-delivery]')].map((r) => r.dataset.delivery)).size;")
        .await;
    assert_eq!(distinct, json!(60));
    assert_eq!(b.text("main p.muted[aria-live]").await, "60 shown");
    b.shot("loaded-to-the-end").await;

    // An empty list: the message, no button.
    b.goto(&engine.url("/console#/deliveries?event_type=none.such"))
        .await;
    b.wait_until(
        "the empty list",
        "return document.querySelector('main p.muted[aria-live]')?.textContent === 'No deliveries match.';",
    )
    .await;
    assert!(!displayed(&b, "#more-deliveries").await);
    assert_eq!(b.find_all("tr[data-delivery]").await.len(), 0);
    b.shot("empty-list").await;
    b.assert_clean("load more", &[]).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_labels_fit_dialogs_focus_cancel_and_bulk_replay_counts_what_it_skips() {
    const LONG_TYPE: &str = "customer.subscription.trial_will_end";
    let engine = TestEngine::start().await;
    let receiver = Receiver::start().await;
    // Over a second per attempt: a p95 of four digits in milliseconds.
    receiver.delay(Duration::from_millis(1100));
    let kept = engine.create_webhook(json!({"url": receiver.url})).await;
    let doomed = engine
        .create_webhook(json!({"url": receiver.url, "description": "to be deleted"}))
        .await;
    let doomed_id = doomed["id"].as_str().unwrap().to_string();
    for n in 0..2 {
        let event = engine.send_event(LONG_TYPE, json!({"n": n})).await;
        for d in event["deliveries"].as_array().unwrap() {
            engine
                .wait_delivery(d["id"].as_str().unwrap(), "delivered")
                .await;
        }
    }

    let b = Browser::start("stats_dialogs_replay", 1280, 900).await;
    b.goto(&engine.url("/console#/stats?days=7")).await;
    sign_in(&b, ACME_KEY).await;
    b.wait_heading("Statistics").await;
    wait_count(&b, "#chart-latency g.bar", 7).await;
    // The axis maximum is the largest day's p95, whole and inside the chart.
    let axis: Value = b
        .eval(
            "const t = document.querySelector('#chart-latency svg > text.tick'); const box = t.getBBox(); \
             const cells = [...document.querySelectorAll('#chart-latency td')].map((c) => c.textContent); \
             return { text: t.textContent, x: box.x, cells };",
        )
        .await;
    let top = axis["text"].as_str().unwrap();
    let ms: f64 = top.strip_suffix(" ms").unwrap().parse().unwrap();
    assert!(ms >= 1000.0, "{axis}");
    assert!(
        axis["x"].as_f64().unwrap() >= 0.0,
        "the label is cut: {axis}"
    );
    let cells: Vec<&str> = axis["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(cells.contains(&top), "{axis}");
    // Days without attempts have no p95: "—", not 0 ms.
    assert_eq!(cells.iter().filter(|c| **c == "—").count(), 6, "{axis}");
    assert!(!cells.contains(&"0 ms"), "{axis}");
    // The success rate's axis label fits too, and the event type's name shows in full.
    let rate_x = b
        .eval("return document.querySelector('#chart-success svg > text.tick').getBBox().x;")
        .await;
    assert!(rate_x.as_f64().unwrap() >= 0.0, "{rate_x}");
    let labels = b
        .eval(
            "return [...document.querySelectorAll('#chart-types text')].map((t) => t.textContent);",
        )
        .await;
    assert!(
        labels.as_array().unwrap().contains(&json!(LONG_TYPE)),
        "{labels}"
    );
    assert_eq!(
        b.eval("return document.querySelector('main').textContent.includes('null');")
            .await,
        json!(false)
    );
    b.eval("document.querySelector('#chart-latency').scrollIntoView(); return true;")
        .await;
    b.shot("stats-latency").await;
    b.eval("document.querySelector('#chart-types').scrollIntoView(); return true;")
        .await;
    b.shot("stats-types").await;
    b.assert_clean("statistics", &[]).await;

    // The webhook to delete; its times say their zone.
    b.goto(&engine.url(&format!("/console#/webhooks/{doomed_id}")))
        .await;
    b.wait_heading("Webhook").await;
    let created = b
        .eval(
            "const zone = new Intl.DateTimeFormat(undefined, { timeZoneName: 'short' }).formatToParts(new Date()) \
               .find((p) => p.type === 'timeZoneName').value; \
             const text = [...document.querySelectorAll('dl.facts dt')].find((t) => t.textContent === 'Created') \
               .nextElementSibling.textContent; \
             return [text, zone];",
        )
        .await;
    let zone = created[1].as_str().unwrap();
    assert!(
        !zone.is_empty() && created[0].as_str().unwrap().ends_with(zone),
        "{created}"
    );

    // A destructive dialog opens on Cancel: Enter cancels.
    b.click("#delete-webhook").await;
    b.wait_until(
        "the focus on Cancel",
        "return document.activeElement && document.activeElement.closest('dialog[open]') !== null \
         && document.activeElement.value === 'cancel';",
    )
    .await;
    b.shot("delete-dialog").await;
    press_enter(&b).await;
    b.wait_until(
        "the dialog closed",
        "return document.querySelector('dialog') === null;",
    )
    .await;
    let (status, _) = engine.get(&format!("/v1/webhooks/{doomed_id}")).await;
    assert_eq!(status, 200, "Enter did not delete");
    b.click("#delete-webhook").await;
    b.click("dialog button[value=delete]").await;
    b.wait_heading("Webhooks").await;
    eventually(Duration::from_secs(10), "the webhook deleted", || async {
        let (status, _) = engine.get(&format!("/v1/webhooks/{doomed_id}")).await;
        (status == 404).then_some(())
    })
    .await;

    // Its deliveries stay listed; filtering on it shows its id, not "All webhooks".
    b.goto(&engine.url(&format!("/console#/deliveries?webhook_id={doomed_id}")))
        .await;
    b.wait_heading("Deliveries").await;
    wait_count(&b, "tr[data-delivery]", 2).await;
    let chosen = b
        .eval("const s = document.querySelector('#filter-webhook'); return [s.value, s.selectedOptions[0].textContent];")
        .await;
    assert_eq!(chosen[0], json!(doomed_id), "{chosen}");
    assert!(chosen[1].as_str().unwrap().contains("deleted"), "{chosen}");
    // A time filter keeps its seconds through the form.
    b.goto(&engine.url("/console#/deliveries?after=2026-01-02T03:04:05Z"))
        .await;
    b.wait_heading("Deliveries").await;
    let after = b
        .eval("return document.querySelector('#filter-after').value;")
        .await;
    assert!(after.as_str().unwrap().ends_with(":05"), "{after}");
    b.click("#apply-filters").await;
    b.wait_until(
        "the filter applied again",
        "return decodeURIComponent(location.hash).includes('after=2026-01-02T03:04:05.000Z');",
    )
    .await;

    // Bulk replay of every delivery: the dry run counts 4, the deleted webhook's 2 are
    // skipped, and the page says so.
    b.goto(&engine.url("/console#/deliveries")).await;
    b.wait_heading("Deliveries").await;
    wait_count(&b, "tr[data-delivery]", 4).await;
    b.click("#replay-matching").await;
    b.wait_until(
        "the replay dialog on Cancel",
        "return document.activeElement && document.activeElement.closest('dialog[open]') !== null \
         && document.activeElement.value === 'cancel';",
    )
    .await;
    assert!(b.text("dialog p").await.starts_with("4 deliveries match"));
    b.click("dialog button[value=replay]").await;
    let outcome = b
        .wait_until(
            "the replay outcome",
            "return document.querySelector('#replay-outcome').textContent;",
        )
        .await;
    assert_eq!(
        outcome,
        json!(
            "Replayed 2 of 4 matching deliveries (2 skipped: their webhook is deleted or \
             disabled, or their event was purged)."
        )
    );
    let (_, list) = engine
        .get(&format!(
            "/v1/deliveries?webhook_id={}",
            kept["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4, "{list}");
    b.shot("bulk-replayed").await;
    b.assert_clean("dialogs and bulk replay", &[]).await;
    b.close().await;
}
