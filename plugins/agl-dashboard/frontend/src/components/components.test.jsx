import { describe, expect, it } from "vitest";
import { fireEvent, screen } from "@testing-library/react";
import { renderWithMantine } from "../test/render.jsx";
import { Waterfall } from "./Waterfall.jsx";
import { LineChart } from "./LineChart.jsx";
import { VersionDiff } from "./VersionDiff.jsx";
import { ConnectionIndicator } from "./ConnectionIndicator.jsx";
import { StatusBadge } from "./StatusBadge.jsx";

const span = (id, parent, name, start, end) => ({
  span_id: id,
  parent_id: parent,
  name,
  attempt_id: "at-1",
  sequence_id: 0,
  start_time: start,
  end_time: end,
  attributes: {},
});

describe("Waterfall", () => {
  it("nests children under their parents, in start order, and reports clicks", () => {
    const spans = [
      span("c2", "root", "second child", 3, 4),
      span("root", null, "agl.attempt", 1, 5),
      span("g", "c1", "grandchild", 2.5, 2.6),
      span("c1", "root", "first child", 2, 3),
      span("orphan", "gone", "parent not in trace", 4, 4.5),
    ];
    let clicked = null;
    renderWithMantine(<Waterfall spans={spans} onSelect={(id) => (clicked = id)} />);
    const rows = screen.getAllByTestId("span-row").map((row) => [row.dataset.spanId, Number(row.dataset.depth)]);
    expect(rows).toEqual([
      ["root", 0],
      ["c1", 1],
      ["g", 2],
      ["c2", 1],
      ["orphan", 0],
    ]);
    fireEvent.click(screen.getAllByTestId("span-row")[2]);
    expect(clicked).toBe("g");
  });

  it("says so when the attempt has no spans", () => {
    renderWithMantine(<Waterfall spans={[]} />);
    expect(screen.getByText(/No spans recorded/)).toBeTruthy();
  });
});

describe("LineChart", () => {
  it("draws one point per (x, y) of each series", () => {
    renderWithMantine(
      <LineChart
        title="Reward"
        testId="chart"
        series={[
          { name: "train", points: [{ x: 1, y: 0.1 }, { x: 2, y: 0.4 }, { x: 3, y: 0.3 }] },
          { name: "val", points: [{ x: 0, y: 0.2 }, { x: 3, y: 0.5 }] },
        ]}
      />,
    );
    const chart = screen.getByTestId("chart");
    expect(chart.dataset.points).toBe("5");
    expect(chart.querySelectorAll('[data-series="train"] [data-testid=point]')).toHaveLength(3);
    expect(chart.querySelectorAll('[data-series="val"] [data-testid=point]')).toHaveLength(2);
    expect(chart.textContent).toContain("0.500"); // the top of the y axis
  });

  it("says a metric was not recorded instead of drawing an empty chart", () => {
    renderWithMantine(<LineChart title="Loss" testId="chart" series={[{ name: "loss", points: [] }]} />);
    expect(screen.getByTestId("chart").textContent).toContain("not recorded");
  });
});

describe("VersionDiff", () => {
  const version = (template) => ({ resources: { prompt: { resource_type: "prompt_template", engine: "f-string", template } } });

  it("marks removed and added lines of a prompt between two versions", () => {
    renderWithMantine(<VersionDiff before={version("Answer {q}.\nBe brief.")} after={version("Answer {q}.\nShow your work.")} />);
    const lines = [...screen.getByTestId("version-diff").querySelectorAll("[data-kind]")];
    const removed = lines.filter((l) => l.dataset.kind === "removed").map((l) => l.textContent);
    const added = lines.filter((l) => l.dataset.kind === "added").map((l) => l.textContent);
    expect(removed.join()).toContain("Be brief.");
    expect(added.join()).toContain("Show your work.");
    expect(lines.some((l) => l.dataset.kind === "same" && l.textContent.includes("Answer {q}."))).toBe(true);
  });

  it("says when two versions are the same", () => {
    renderWithMantine(<VersionDiff before={version("x")} after={version("x")} />);
    expect(screen.getByText(/identical/)).toBeTruthy();
  });
});

describe("ConnectionIndicator and StatusBadge", () => {
  it("shows the connection state", () => {
    const { rerender } = renderWithMantine(<ConnectionIndicator connection={{ state: "live", since: Date.now() }} />);
    expect(screen.getByTestId("connection").textContent).toBe("live");
    rerender(<ConnectionIndicator connection={{ state: "offline", since: Date.now(), message: "down" }} />);
    expect(screen.getByTestId("connection").dataset.state).toBe("offline");
    expect(screen.getByTestId("connection").textContent).toBe("server unreachable");
  });

  it("shows a status with its name", () => {
    renderWithMantine(<StatusBadge status="failed" />);
    expect(screen.getByTestId("status").dataset.status).toBe("failed");
  });
});
