// How long the rollouts page takes to load in headless Chromium: from navigation to the first page of rows and the
// total on screen. Used by benchmarks/dashboard_rollouts.py, which fills the store and starts the server.
//
//   AGL_E2E_URL=http://127.0.0.1:PORT AGL_E2E_TOKEN=... AGL_BENCH_RUNS=7 AGL_BENCH_EXPECT_TOTAL=10000 \
//     node e2e/measure-load.mjs [hash-route ...]        # prints one JSON line per route: {route, runs_ms: [...]}
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const url = process.env.AGL_E2E_URL;
const token = process.env.AGL_E2E_TOKEN || "";
const runs = Number(process.env.AGL_BENCH_RUNS || 7);
const routes = process.argv.slice(2).length ? process.argv.slice(2) : ["#/rollouts"];
const profile = mkdtempSync(join(tmpdir(), "agl-bench-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.AGL_E2E_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  if (token) {
    await page.goto(`${url}/#token=${encodeURIComponent(token)}`); // the page keeps it, as `agl dashboard` does
    await page.getByTestId("connection").waitFor();
  }
  for (const route of routes) {
    const times = [];
    let cold = null;
    for (let i = 0; i < runs + 1; i++) {
      await page.goto("about:blank");
      const started = Date.now();
      await page.goto(`${url}/${route}`);
      await page.locator("[data-testid=rollout-row]").first().waitFor();
      await page.locator("[data-testid=rollouts-total][data-total]:not([data-total=''])").waitFor();
      const elapsed = Date.now() - started;
      const rows = await page.getByTestId("rollout-row").count();
      const total = Number(await page.getByTestId("rollouts-total").getAttribute("data-total"));
      if (i === 0) cold = elapsed; // the first load: nothing cached in the browser yet
      else times.push(elapsed);
      if (i === 0) console.error(`${route}: ${rows} rows of ${total}`);
    }
    console.log(JSON.stringify({ route, cold_ms: cold, runs_ms: times }));
  }
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
