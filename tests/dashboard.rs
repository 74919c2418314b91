//! The web dashboard in a real browser: Debian's chromium, driven over WebDriver
//! (chromedriver) against real daemons on 127.0.0.1. `bash tests/setup.sh` installs
//! chromium and chromium-driver; without them this test fails.

use fantoccini::{Client, ClientBuilder, Locator};
use peer::localnet::LocalNet;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_peer");
const GIB: u64 = 1 << 30;

/// chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chromedriver: {e}. Install it with 'bash tests/setup.sh'"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let args =
            ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1500"];
        caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
        // Two TLS back ends are linked (libp2p's and the WebDriver client's): pick one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("chromium did not start under chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Evaluates `js` in the page until it returns something other than false/null/0/"",
/// up to `secs` seconds; returns that value.
async fn wait_js(c: &Client, js: &str, secs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = c.execute(js, vec![]).await.unwrap_or(Value::Null);
        let truthy = match &v {
            Value::Null | Value::Bool(false) => false,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            _ => true,
        };
        if truthy {
            return v;
        }
        let page = c.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
        assert!(Instant::now() < deadline, "not true within {secs} s: {js}\npage:\n{page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `fetch(path)` from the page, with the bearer token or without; returns [status, body].
async fn fetch(c: &Client, path: &str, token: Option<&str>) -> (u64, String) {
    let js = "const [path, token, done] = arguments; \
              const headers = token ? { Authorization: 'Bearer ' + token } : {}; \
              fetch(path, { headers }).then(async r => done([r.status, await r.text()]));";
    let v = c.execute_async(js, vec![json!(path), json!(token)]).await.unwrap();
    (v[0].as_u64().unwrap_or(0), v[1].as_str().unwrap_or("").to_string())
}

async fn click(c: &Client, css: &str) {
    c.wait().at_most(Duration::from_secs(30)).for_element(Locator::Css(css)).await.unwrap().click().await.unwrap();
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("letters")).unwrap();
    std::fs::write(root.join("report.txt"), "quarterly report\n".repeat(5000)).unwrap();
    std::fs::write(root.join("letters/dear.txt"), b"dear friend").unwrap();
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(root.join("photo.raw"), noise).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_peer_runs_a_schedule_and_restores_a_file_in_a_real_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    write_tree(&docs);
    let net = LocalNet::start(EXE.as_ref(), &tmp.path().join("net"), 3, GIB, |_, _| {}).unwrap();
    net.wait_connected(2, Duration::from_secs(60)).unwrap();
    let d = docs.to_str().unwrap();
    net.run(0, &["backup", d, "--copies", "2"]).unwrap();
    net.run(0, &["schedule", "add", "docs", d, "--cron", "0 3 1 1 *", "--copies", "2"]).unwrap();
    let url = net.run(0, &["dashboard"]).unwrap().trim().to_string();
    let (base, token) = url.split_once("#token=").expect("the URL carries its token in the fragment");
    assert!(base.starts_with("http://127.0.0.1:") && token.len() == 64, "{url}");

    let driver = Driver::start();
    let c = driver.browser().await;

    // Without the token: the page says access is refused, and the API answers 401.
    c.goto(base).await.unwrap();
    let refused =
        wait_js(&c, "const e = document.getElementById('refused'); return !e.hidden && e.innerText", 30).await;
    assert!(refused.as_str().unwrap().contains("Access refused"), "{refused}");
    assert_eq!(fetch(&c, "/api/status", None).await.0, 401);
    assert_eq!(fetch(&c, "/api/status", Some("0".repeat(64).as_str())).await.0, 401);
    assert_eq!(fetch(&c, "/metrics", None).await.0, 401);
    let (code, health) = fetch(&c, "/health", None).await;
    assert_eq!((code, health.as_str()), (200, r#"{"status":"up"}"#));

    // With the token: this peer, its snapshot and its contracts with audit standing.
    c.goto(&url).await.unwrap();
    wait_js(&c, "return document.querySelectorAll('tr.snapshot').length === 1", 30).await;
    let id = wait_js(&c, "return document.getElementById('peer-id').innerText", 10).await;
    assert_eq!(id.as_str(), Some(net.peers[0].peer_id.as_str()));
    wait_js(&c, "return document.querySelectorAll('tr.contract').length >= 2", 30).await;
    let verdict = wait_js(&c, "return document.getElementById('verdict').innerText", 10).await;
    assert_eq!(verdict, "all copies held");

    // Run the schedule from the page: a second snapshot appears.
    click(&c, "button.run-schedule[data-name='docs']").await;
    wait_js(&c, "return document.querySelectorAll('tr.snapshot').length === 2", 120).await;
    let schedule_row = wait_js(&c, "return document.getElementById('schedules').innerText.includes(': ok ') && document.getElementById('schedules').innerText", 30).await;
    assert!(schedule_row.as_str().unwrap().contains("docs"), "{schedule_row}");
    let (code, metrics) = fetch(&c, "/metrics", Some(token)).await;
    assert_eq!(code, 200);
    assert!(metrics.contains("peer_backups_total{result=\"success\"} 2"), "{metrics}");
    assert!(metrics.contains("libp2p_swarm_connections_established_total"), "{metrics}");

    // Browse the newest snapshot and restore one file to a chosen place.
    click(&c, "tr.snapshot button.browse").await;
    click(&c, "tr.entry[data-name='docs'] a.dir").await;
    click(&c, "tr.entry[data-name='report.txt'] button.restore").await;
    let target = tmp.path().join("chosen place");
    let input = c.find(Locator::Id("restore-target")).await.unwrap();
    input.send_keys(target.to_str().unwrap()).await.unwrap();
    click(&c, "#restore-go").await;
    let result = wait_js(
        &c,
        "const t = document.getElementById('restore-result').innerText; return t.startsWith('restored') && t",
        60,
    )
    .await;
    assert!(result.as_str().unwrap().contains("restored 1 files"), "{result}");
    let restored = std::fs::read(target.join("docs/report.txt")).unwrap();
    assert!(restored == std::fs::read(docs.join("report.txt")).unwrap(), "the restored file differs");
    assert!(!target.join("docs/photo.raw").exists(), "only the chosen file is restored");

    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a screenshot of the page");
    if let Some(path) = std::env::var_os("PEER_DASHBOARD_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    c.close().await.unwrap();
}
