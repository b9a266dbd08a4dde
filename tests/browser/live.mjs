// Opens the engine's live page in headless Chromium (Debian's), reads the
// sold count, waits until it goes up (the Rust test drives purchases
// meanwhile), saves a screenshot and prints {"before", "after"} as JSON.
//   node tests/browser/live.mjs URL SCREENSHOT
import { createRequire } from "node:module";
const require = createRequire(process.env.PLAYWRIGHT_CORE_DIR + "/");
const { chromium } = require("playwright-core");

const [url, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  await page.goto(url + "/live");
  await page.waitForFunction(() => document.getElementById("state").textContent === "live", null, { timeout: 10000 });
  const sold = async () => Number((await page.textContent("#sold")).replace(/,/g, ""));
  const before = await sold();
  const deadline = Date.now() + 20000;
  let after = before;
  while (Date.now() < deadline && after <= before + 10) {
    await page.waitForTimeout(250);
    after = await sold();
  }
  // One more tick so the rates and the chart show the load.
  await page.waitForTimeout(1200);
  after = await sold();
  await page.screenshot({ path: screenshot });
  console.log(JSON.stringify({ before, after }));
} finally {
  await browser.close();
}
