import { describe, expect, it } from "vitest";
import { queryString } from "./api.js";
import { duration, formatSeconds } from "./format.js";
import { parseRoute, href } from "./route.js";
import { candidatesByRound, metricSeries, throughputSeries } from "./training.js";
import { resourceText } from "./diff.js";

describe("helpers", () => {
  it("builds query strings with repeated keys and no empty values", () => {
    expect(queryString({ status: ["failed", "running"], q: "", limit: 50, mode: undefined })).toBe(
      "?status=failed&status=running&limit=50",
    );
    expect(queryString({})).toBe("");
  });

  it("parses and builds hash routes", () => {
    expect(parseRoute("#/rollouts/ro-1?attempt=at-2")).toEqual({ page: "rollouts", id: "ro-1", params: { attempt: "at-2" } });
    expect(parseRoute("")).toEqual({ page: "rollouts", id: undefined, params: {} });
    expect(href("rollouts", "ro 1", { attempt: "x" })).toBe("#/rollouts/ro%201?attempt=x");
  });

  it("formats durations, running ones by the server's clock", () => {
    expect(formatSeconds(0.25)).toBe("250 ms");
    expect(formatSeconds(75)).toBe("1 min 15 s");
    expect(formatSeconds(null)).toBe("–");
    expect(duration({ start_time: 10, end_time: null }, 14)).toBe(4);
    expect(duration({ start_time: 10, end_time: 11 }, 14)).toBe(1);
  });

  it("turns metric spans into curves, one point per step", () => {
    const steps = [
      { step: 1, metrics: { reward_mean: 0.1, rollouts: 8, step_time_s: 2 } },
      { step: 2, metrics: { reward_mean: 0.3, rollouts: 8, step_time_s: 4 } },
      { step: 3, metrics: { loss: 0.5 } },
    ];
    expect(metricSeries(steps, "reward_mean")).toEqual([{ x: 1, y: 0.1 }, { x: 2, y: 0.3 }]);
    expect(throughputSeries(steps)).toEqual([{ x: 1, y: 4 }, { x: 2, y: 2 }]);
  });

  it("groups APO candidates by round, best first", () => {
    const rounds = candidatesByRound([
      { round: 2, candidate: "2a", score: 0.1 },
      { round: 1, candidate: "1a", score: 0.2 },
      { round: 2, candidate: "2b", score: 0.9 },
    ]);
    expect(rounds.map((r) => [r.round, r.items.map((c) => c.candidate)])).toEqual([
      [1, ["1a"]],
      [2, ["2b", "2a"]],
    ]);
  });

  it("writes a prompt's template line by line for the diff", () => {
    const text = resourceText({ p: { resource_type: "prompt_template", engine: "f-string", template: "a\nb" } });
    expect(text).toContain("[p]\nengine: \"f-string\"\nresource_type: \"prompt_template\"\ntemplate:\n  a\n  b");
  });
});
