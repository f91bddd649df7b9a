//! A real headless Chromium driven over WebDriver (chromedriver on 127.0.0.1, fantoccini as
//! the client), for the console's tests.
//!
//! - Chromium runs with the flags that work here as root and on a closed network (no sandbox,
//!   no GPU, no background networking or component updates) and a fresh profile directory.
//! - Everything the page writes to its console (errors, CSP violations, failed loads) is read
//!   after every step; [`Browser::assert_clean`] fails the test on any of it.
//! - A screenshot is taken of every page the test visits; if the test fails they are written
//!   to `target/console-screenshots/<test>/` (nothing is written when it passes, unless
//!   `HOOKD_KEEP_SCREENSHOTS` is set).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Longest wait for an element or a condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// `POST /session/{id}/se/log {"type": "browser"}`: the page's console messages since the
/// last read (chromedriver's logging extension; W3C WebDriver has no log command).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (axum::http::Method, Option<String>) {
        (
            axum::http::Method::POST,
            Some(r#"{"type":"browser"}"#.to_string()),
        )
    }
}

/// Whether a command failed because its element left the page (a re-render replaced it).
fn is_stale(err: &fantoccini::error::CmdError) -> bool {
    matches!(
        err,
        fantoccini::error::CmdError::Standard(e)
            if e.error == fantoccini::error::ErrorStatus::StaleElementReference
    )
}

pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    driver_pid: u32,
    _profile: tempfile::TempDir,
    test: String,
    shots: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
}

impl Browser {
    /// Starts chromedriver (its own process group) and a Chromium session of `width`×`height`.
    pub async fn start(test: &str, width: u32, height: u32) -> Browser {
        let mut command = tokio::process::Command::new(CHROMEDRIVER);
        command
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut driver = command
            .spawn()
            .expect("chromedriver starts (scripts/test.sh installs it)");
        let driver_pid = driver.id().expect("chromedriver has a pid");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().unwrap();
                }
            }
            panic!("chromedriver exited before saying its port");
        })
        .await
        .expect("chromedriver says its port");
        // Keep reading so chromedriver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let capabilities = match capabilities {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session starts");
        Browser {
            client,
            driver,
            driver_pid,
            _profile: profile,
            test: test.to_string(),
            shots: Default::default(),
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Waits (bounded) for an element matching `css`.
    pub async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                return element;
            }
            if Instant::now() >= deadline {
                self.shot("no-such-element").await;
                panic!("no element `{css}` after {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Runs `script` (a function body returning a value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Waits (bounded) until `script` returns something truthy; returns it.
    pub async fn wait_until(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(script).await;
            if !matches!(value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("")
            {
                return value;
            }
            if Instant::now() >= deadline {
                self.shot("timed-out").await;
                panic!("timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's heading is `text` (a page has rendered).
    pub async fn wait_heading(&self, text: &str) {
        let script = format!(
            "const h = document.querySelector('main h1'); return h && h.textContent === {};",
            json!(text)
        );
        self.wait_until(&format!("the heading `{text}`"), &script)
            .await;
    }

    /// Presses and releases one key (a WebDriver key code like `'\u{E004}'` for Tab) on
    /// whatever has the focus, as a keyboard would.
    pub async fn press(&self, key: char) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let actions = KeyActions::new("keyboard".to_string())
            .then(KeyAction::Down { value: key })
            .then(KeyAction::Up { value: key });
        self.client.perform_actions(actions).await.unwrap();
    }

    /// Clicks the element matching `css`. Pages re-render after each action, so an element
    /// found a moment ago may have been replaced: then the new one is found and clicked.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.click().await {
                Ok(()) => return,
                Err(err) if is_stale(&err) && Instant::now() < deadline => {}
                Err(err) => panic!("clicking `{css}`: {err}"),
            }
        }
    }

    /// Replaces the value of the input matching `css` with `text` (typed as keys).
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// The visible text of the element matching `css` (found again if it was re-rendered).
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(err) if is_stale(&err) && Instant::now() < deadline => {}
                Err(err) => panic!("reading `{css}`: {err}"),
            }
        }
    }

    /// Keeps a screenshot of the current page under `name` (written only if the test fails).
    pub async fn shot(&self, name: &str) {
        if let Ok(png) = self.client.screenshot().await {
            self.shots.lock().unwrap().push((name.to_string(), png));
        }
    }

    /// The page's console messages since the last read.
    pub async fn logs(&self) -> Vec<Value> {
        match self.client.issue_cmd(BrowserLog).await.unwrap() {
            Value::Array(entries) => entries,
            other => panic!("unexpected log answer: {other}"),
        }
    }

    /// Fails on any console message of level WARNING or SEVERE since the last read (script
    /// errors, CSP violations, failed loads), except those matching `expected`.
    pub async fn assert_clean(&self, step: &str, expected: &[&str]) {
        let bad: Vec<Value> = self
            .logs()
            .await
            .into_iter()
            .filter(|entry| matches!(entry["level"].as_str(), Some("SEVERE" | "WARNING")))
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !expected.iter().any(|e| message.contains(e))
            })
            .collect();
        assert!(bad.is_empty(), "{step}: the page logged {bad:#?}");
    }

    /// Ends the session and chromedriver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = client.close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("HOOKD_KEEP_SCREENSHOTS").is_some();
        let shots = std::mem::take(&mut *self.shots.lock().unwrap_or_else(|e| e.into_inner()));
        if keep && !shots.is_empty() {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/console-screenshots")
                .join(&self.test);
            let _ = std::fs::create_dir_all(&dir);
            for (i, (name, png)) in shots.iter().enumerate() {
                let _ = std::fs::write(dir.join(format!("{i:02}-{name}.png")), png);
            }
            eprintln!("screenshots of {} written to {}", self.test, dir.display());
        }
        // chromedriver and the Chromium it started share chromedriver's process group (this
        // test made it); end the group so a failed test leaves no browser behind.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver_pid)])
            .stderr(Stdio::null())
            .status();
    }
}
