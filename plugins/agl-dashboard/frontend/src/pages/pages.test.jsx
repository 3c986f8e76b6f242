import { describe, expect, it } from "vitest";
import { screen } from "@testing-library/react";
import { renderWithMantine } from "../test/render.jsx";
import { RolloutsTable } from "./Rollouts.jsx";
import { ApoRounds, RunCharts } from "./Training.jsx";
import { WorkersTable } from "./Workers.jsx";
import { LlmCalls, Rewards } from "./Rollout.jsx";

const rollout = (id, status, extra = {}) => ({
  rollout: { rollout_id: id, status, mode: "train", attempt_count: 1, start_time: 100, end_time: 102.5, input: { q: 1 }, metadata: {}, ...extra },
  latest_attempt: { worker_id: "runner-0" },
  reward: status === "succeeded" ? 1 : null,
});

describe("pages", () => {
  it("lists rollouts with status, attempts, duration, reward and worker", () => {
    renderWithMantine(<RolloutsTable rows={[rollout("ro-a", "succeeded"), rollout("ro-b", "running", { end_time: null })]} now={110} />);
    const rows = screen.getAllByTestId("rollout-row");
    expect(rows.map((r) => r.dataset.status)).toEqual(["succeeded", "running"]);
    expect(rows[0].textContent).toContain("2.50 s");
    expect(rows[0].textContent).toContain("runner-0");
    expect(rows[1].textContent).toContain("10.0 s"); // still running: by the server's clock
    expect(screen.getAllByTestId("reward").map((cell) => cell.textContent)).toEqual(["1", "–"]);
  });

  it("draws a GRPO run's curves with one point per step and its loss", () => {
    const steps = [1, 2, 3].map((step) => ({ step, metrics: { reward_mean: step / 10, success_rate: 0.5, loss: 1 / step, kl: 0.01 } }));
    renderWithMantine(<RunCharts run={{ steps, validations: [{ step: 0, metrics: { val_reward_mean: 0.2 } }], candidates: [] }} />);
    expect(screen.getByTestId("chart-reward").dataset.points).toBe("4");
    expect(screen.getByTestId("chart-loss").querySelectorAll("[data-testid=point]")).toHaveLength(6);
    expect(screen.getAllByTestId("metrics-row")).toHaveLength(3);
    expect(screen.queryByTestId("apo-rounds")).toBeNull();
  });

  it("shows APO candidates per round, best first, with their status, template and prompt", () => {
    renderWithMantine(
      <ApoRounds
        candidates={[
          { round: 1, candidate: "c0", parent: null, score: 0.4, status: "dropped" },
          { round: 1, candidate: "c2", parent: "c0", score: 0.7, status: "beam", template: "system", prompt: "Solve {q} step by step" },
          { round: 1, candidate: "c3", parent: "c0", score: null, status: "rejected", template: "system", reason: "drops {q}" },
        ]}
      />,
    );
    const rows = screen.getAllByTestId("apo-candidate");
    expect(rows[0].textContent).toContain("c2");
    expect(rows[0].textContent).toContain("kept");
    expect(rows[0].textContent).toContain("Solve {q} step by step");
    expect(rows[1].textContent).toContain("dropped");
    expect(rows[2].textContent).toContain("rejected");
    expect(rows[2].textContent).toContain("drops {q}");
  });

  it("shows workers with their heartbeat age and stats", () => {
    renderWithMantine(
      <WorkersTable workers={[{ worker_id: "w1", status: "busy", last_heartbeat_time: 95, current_rollout_id: "ro-1", heartbeat_stats: { cpu: 0.5 } }]} now={100} />,
    );
    expect(screen.getByTestId("heartbeat-age").textContent).toBe("5.00 s ago");
    expect(screen.getByTestId("worker-row").textContent).toContain("cpu 0.50");
  });

  it("shows an LLM call's prompt, completion and token counts, and rewards per step", () => {
    renderWithMantine(
      <>
        <LlmCalls
          calls={[{ span_id: "s1", name: "chat m", model: "m", input_tokens: 12, output_tokens: 3, input_messages: [{ role: "user", parts: [{ type: "text", content: "2+2?" }] }], response_text: "4" }]}
        />
        <Rewards rewards={[{ span_id: "r1", sequence_id: 3, value: 0.5, step_span_id: "s1", values: {} }]} spans={[{ span_id: "s1", name: "chat m" }]} finalReward={1} />
      </>,
    );
    expect(screen.getByTestId("prompt-tokens").textContent).toContain("12");
    expect(screen.getByTestId("completion").textContent).toBe("4");
    expect(screen.getByText(/user: 2\+2\?/)).toBeTruthy();
    expect(screen.getByTestId("reward-row").textContent).toContain("step chat m (s1)");
  });
});
