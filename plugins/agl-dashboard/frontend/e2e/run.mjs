// End-to-end checks of the dashboard in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core),
// against a real store server. Run by plugins/agl-dashboard/tests/test_e2e.py, which fills the store with real runs,
// passes what the page must show in $AGL_E2E_EXPECT (JSON) and answers the steps this script asks for on stdin
// ("STEP <name>" out, "OK" in): adding a rollout while the page is open, stopping the server.
//
//   AGL_E2E_URL=http://127.0.0.1:PORT AGL_E2E_TOKEN=... AGL_E2E_EXPECT='{...}' AGL_E2E_SCREENSHOTS=dir node e2e/run.mjs
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const url = process.env.AGL_E2E_URL;
const token = process.env.AGL_E2E_TOKEN;
const expect = JSON.parse(process.env.AGL_E2E_EXPECT || "{}");
const shots = process.env.AGL_E2E_SCREENSHOTS || mkdtempSync(join(tmpdir(), "agl-e2e-shots-"));
const chromiumPath = process.env.AGL_E2E_CHROMIUM || "/usr/bin/chromium";
if (!url) throw new Error("set AGL_E2E_URL to the store server's address");
mkdirSync(shots, { recursive: true });

const reader = createInterface({ input: process.stdin });
const lines = reader[Symbol.asyncIterator]();
async function step(name) {
  console.log(`STEP ${name}`);
  const { value, done } = await lines.next();
  if (done || value.trim() !== "OK") throw new Error(`the test did not confirm step ${name}: ${value}`);
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok - ${message}`);
}

async function shot(page, name) {
  await page.waitForTimeout(300); // let the last poll's render settle
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
  console.log(`screenshot ${name}.png`);
}

const profile = mkdtempSync(join(tmpdir(), "agl-e2e-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: chromiumPath,
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const errors = [];
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  page.on("pageerror", (error) => errors.push(error.message));

  // Token auth: the page loads without the token, its data does not; it asks, then shows the data.
  await page.goto(`${url}/#/rollouts`);
  await page.getByTestId("token-prompt").waitFor();
  check((await page.getByTestId("connection").getAttribute("data-state")) === "unauthorized", "no token: the indicator says a token is needed");
  check((await page.getByTestId("rollout-row").count()) === 0, "no token: no rollout is shown");
  await page.getByTestId("token-input").fill("wrong-token");
  await page.getByTestId("token-save").click();
  await page.getByTestId("token-prompt").waitFor();
  await page.getByTestId("token-input").fill(token);
  await page.getByTestId("token-save").click();
  await page.locator(`[data-testid=rollouts-total][data-total="${expect.total}"]`).waitFor();
  check(true, `rollouts page: total ${expect.total}`);

  // The first page (50 newest) shows each rollout's status as the store has it.
  const rows = page.getByTestId("rollout-row");
  await rows.first().waitFor();
  const shown = await rows.evaluateAll((trs) => trs.map((tr) => [tr.querySelector("a").textContent, tr.dataset.status]));
  check(shown.length === Math.min(50, expect.total), `first page has ${shown.length} rows`);
  for (const [id, status] of shown) {
    if (expect.statuses[id] !== status) throw new Error(`rollout ${id} shows ${status}, the store says ${expect.statuses[id]}`);
  }
  check(true, "every row's status matches the store");
  await shot(page, "rollouts");

  // Status filter (server-side): only the failed ones.
  await page.getByTestId("filter-failed").click();
  await page.locator(`[data-testid=rollouts-total][data-total="${expect.counts.failed}"]`).waitFor();
  const failed = await rows.evaluateAll((trs) => trs.map((tr) => tr.dataset.status));
  check(failed.length === expect.counts.failed && failed.every((s) => s === "failed"), `failed filter: ${failed.length} failed rollouts`);

  // Live: a rollout added while the page is open appears without a reload.
  await page.goto(`${url}/#/rollouts`);
  await page.locator(`[data-testid=rollouts-total][data-total="${expect.total}"]`).waitFor();
  await step("add-rollout");
  await page.locator(`[data-testid=rollouts-total][data-total="${expect.total + 1}"]`).waitFor();
  check((await rows.first().getAttribute("data-status")) === "queuing", "a new rollout appeared live, queuing, on top");

  // A rollout's trace: spans nested under their parents.
  await page.goto(`${url}/#/rollouts/${expect.nested.rollout_id}`);
  await page.getByTestId("waterfall").waitFor();
  const spans = await page.getByTestId("span-row").evaluateAll((els) =>
    els.map((el) => ({ id: el.dataset.spanId, parent: el.dataset.parentId, depth: Number(el.dataset.depth), name: el.dataset.name })),
  );
  check(spans.length === expect.nested.spans.length, `trace shows ${spans.length} spans`);
  const depthOf = new Map(spans.map((s) => [s.id, s.depth]));
  const indexOf = new Map(spans.map((s, i) => [s.id, i]));
  for (const span of expect.nested.spans) {
    const want = span.parent_id ? depthOf.get(span.parent_id) + 1 : 0;
    if (depthOf.get(span.span_id) !== want) throw new Error(`span ${span.name} is at depth ${depthOf.get(span.span_id)}, not ${want}`);
    if (span.parent_id && !(indexOf.get(span.span_id) > indexOf.get(span.parent_id))) throw new Error(`span ${span.name} is not below its parent`);
  }
  check(spans.some((s) => s.depth > 0), "children are indented under their parents");
  await page.locator(`[data-testid=span-row][data-depth="1"]`).first().click();
  await page.getByTestId("span-attributes").waitFor();
  check((await page.getByTestId("span-attributes").textContent()).includes("agl.operation.name"), "span details list the attributes");
  await page.getByTestId("tab-rewards").click();
  await page.getByTestId("rewards").waitFor();
  await page.getByTestId("tab-trace").click();
  await shot(page, "rollout");

  // An LLM call: prompt, completion and token counts.
  if (expect.llm) {
    await page.goto(`${url}/#/rollouts/${expect.llm.rollout_id}`);
    await page.getByTestId("tab-llm").click();
    await page.getByTestId("llm-call").first().waitFor();
    const tokens = await page.getByTestId("prompt-tokens").first().textContent();
    check(tokens.includes(String(expect.llm.input_tokens)), `LLM call shows ${expect.llm.input_tokens} prompt tokens`);
    await shot(page, "llm-calls");
  }

  // Resources: versions and the diff between them.
  await page.goto(`${url}/#/resources`);
  await page.locator(`[data-testid=resource-set][data-resources-id="${expect.prompt_id}"]`).waitFor();
  const diff = page.locator(`[data-testid=resource-set][data-resources-id="${expect.prompt_id}"] [data-testid=version-diff]`);
  check((await diff.locator("[data-kind=added]").count()) > 0 && (await diff.locator("[data-kind=removed]").count()) > 0, "the prompt's two versions differ line by line");
  await shot(page, "resources");

  // Workers.
  await page.goto(`${url}/#/workers`);
  await page.getByTestId("worker-row").first().waitFor();
  check((await page.getByTestId("worker-row").count()) === expect.workers, `${expect.workers} workers`);
  await shot(page, "workers");

  // Training: one point per step on the reward curve.
  if (expect.steps) {
    await page.goto(`${url}/#/training`);
    await page.getByTestId("training-run").waitFor();
    const train = page.locator('[data-testid=chart-reward] [data-series="reward_mean (train)"] [data-testid=point]');
    check((await train.count()) === expect.steps, `reward curve: ${expect.steps} points for ${expect.steps} steps`);
    const val = page.locator('[data-testid=chart-reward] [data-series="val_reward_mean (validation)"] [data-testid=point]');
    check((await val.count()) === expect.validations, `validation curve: ${expect.validations} points`);
    check((await page.getByTestId("metrics-row").count()) === expect.steps, "the metrics table has a row per step");
    await shot(page, "training");
  }

  // An APO run: its candidates per round, kept, dropped and rejected (with the reason).
  if (expect.apo) {
    await page.goto(`${url}/#/training?run=${expect.apo.rollout_id}`);
    await page.getByTestId("apo-rounds").waitFor();
    const rows = page.getByTestId("apo-candidate");
    check((await rows.count()) === expect.apo.candidates, `APO table: ${expect.apo.candidates} candidates`);
    const rejected = rows.filter({ hasText: "rejected" });
    check((await rejected.count()) === expect.apo.rejected, `APO table: ${expect.apo.rejected} rejected`);
    check((await rejected.first().textContent()).includes("drops the required variable"), "a rejection says why");
    await shot(page, "training-apo");
  }

  // The server goes away: the indicator says so, without a reload.
  await page.goto(`${url}/#/rollouts`);
  await page.locator('[data-testid=connection][data-state="live"]').waitFor();
  await step("stop-server");
  await page.locator('[data-testid=connection][data-state="offline"]').waitFor();
  check(true, "the indicator shows the server is unreachable");
  await shot(page, "offline");

  if (errors.length) throw new Error(`errors in the page: ${errors.join("; ")}`);
  console.log("E2E PASSED");
} catch (error) {
  console.log(`E2E FAILED: ${error.stack || error}`);
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  reader.close(); // stdin stays open on the test's side: stop reading it, or node would wait on it forever
}
