//! The live page in a real browser: headless Chromium (Debian's) driven by
//! playwright-core opens `/live` while purchases go on, and the page's sold
//! count goes up. The screenshot is kept as a test artefact
//! (`target/live-page.png`). `scripts/test.sh` installs both.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use tokio::process::Command;

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_counts_purchases_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let playwright = root.join(".data/node/node_modules/playwright-core");
    assert!(
        playwright.exists(),
        "playwright-core is not installed: run scripts/test.sh (services.sh test-tools)"
    );
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../live-page.png");
    let app = Arc::new(spawn_app(&[]).await);
    // Something sold before the page opens, so it has a sale to show.
    let code = app.code_for("live-0", 1).await;
    assert_eq!(app.purchase(&code).await.status, StatusCode::OK);

    let browser = Command::new("node")
        .arg(root.join("tests/browser/live.mjs"))
        .arg(format!("http://{}", app.addr))
        .arg(&screenshot)
        .env("PLAYWRIGHT_CORE_DIR", &playwright)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");

    let done = Arc::new(AtomicBool::new(false));
    let load = {
        let (app, done) = (app.clone(), done.clone());
        tokio::spawn(async move {
            let mut item = 2;
            while !done.load(Ordering::SeqCst) && item < 5000 {
                let code = app.code_for(&format!("live-{}", item / 10), item).await;
                let _ = app.purchase(&code).await;
                item += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let output = tokio::time::timeout(Duration::from_secs(90), browser.wait_with_output())
        .await
        .expect("the browser test ends within 90 s")
        .expect("node ran");
    done.store(true, Ordering::SeqCst);
    let _ = load.await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "live.mjs failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts: serde_json::Value = serde_json::from_str(stdout.trim()).expect("live.mjs prints JSON");
    println!("live page sold count: {counts}; screenshot {}", screenshot.display());
    let (before, after) = (counts["before"].as_u64(), counts["after"].as_u64());
    assert!(
        before.is_some() && after > before,
        "the page's sold count went up: {counts}"
    );
    assert!(screenshot.exists(), "screenshot saved");
    Arc::into_inner(app).expect("no other handle").finish().await;
}
