// A small SVG line chart: one polyline and one point per (x, y) of each series, with min/max ticks.
import { Text } from "@mantine/core";
import { formatNumber } from "../lib/format.js";

const PALETTE = ["#228be6", "#fa5252", "#40c057", "#fab005", "#7950f2", "#15aabf"];

export function LineChart({ title, series, xLabel = "step", height = 180, testId }) {
  const width = 460;
  const pad = { left: 48, right: 12, top: 10, bottom: 28 };
  const drawn = series.filter((s) => s.points.length > 0);
  const all = drawn.flatMap((s) => s.points);
  if (all.length === 0) {
    return (
      <div data-testid={testId} data-points={0}>
        <Text fw={600} size="sm">
          {title}
        </Text>
        <Text c="dimmed" size="sm">
          not recorded in this run
        </Text>
      </div>
    );
  }
  let [xMin, xMax] = [Math.min(...all.map((p) => p.x)), Math.max(...all.map((p) => p.x))];
  let [yMin, yMax] = [Math.min(...all.map((p) => p.y)), Math.max(...all.map((p) => p.y))];
  if (xMax === xMin) [xMin, xMax] = [xMin - 1, xMax + 1];
  if (yMax === yMin) [yMin, yMax] = [yMin - (Math.abs(yMin) || 1) * 0.5, yMax + (Math.abs(yMax) || 1) * 0.5];
  const sx = (x) => pad.left + ((x - xMin) / (xMax - xMin)) * (width - pad.left - pad.right);
  const sy = (y) => pad.top + (1 - (y - yMin) / (yMax - yMin)) * (height - pad.top - pad.bottom);
  return (
    <div data-testid={testId} data-points={all.length}>
      <Text fw={600} size="sm">
        {title}
      </Text>
      <svg viewBox={`0 0 ${width} ${height}`} width="100%" role="img" aria-label={title}>
        <line x1={pad.left} y1={height - pad.bottom} x2={width - pad.right} y2={height - pad.bottom} stroke="#ccc" />
        <line x1={pad.left} y1={pad.top} x2={pad.left} y2={height - pad.bottom} stroke="#ccc" />
        <text x={pad.left - 4} y={sy(yMax) + 4} fontSize="10" textAnchor="end">
          {formatNumber(yMax)}
        </text>
        <text x={pad.left - 4} y={sy(yMin) + 4} fontSize="10" textAnchor="end">
          {formatNumber(yMin)}
        </text>
        <text x={sx(xMin)} y={height - 12} fontSize="10" textAnchor="middle">
          {formatNumber(xMin)}
        </text>
        <text x={sx(xMax)} y={height - 12} fontSize="10" textAnchor="middle">
          {formatNumber(xMax)}
        </text>
        <text x={(width + pad.left) / 2} y={height - 2} fontSize="10" textAnchor="middle" fill="#888">
          {xLabel}
        </text>
        {drawn.map((s, index) => {
          const color = s.color || PALETTE[index % PALETTE.length];
          const sorted = [...s.points].sort((a, b) => a.x - b.x);
          return (
            <g key={s.name} data-series={s.name}>
              <polyline
                fill="none"
                stroke={color}
                strokeWidth="2"
                points={sorted.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ")}
              />
              {sorted.map((p) => (
                <circle key={`${p.x}`} cx={sx(p.x)} cy={sy(p.y)} r="3.5" fill={color} data-testid="point">
                  <title>{`${s.name} at ${xLabel} ${p.x}: ${formatNumber(p.y)}`}</title>
                </circle>
              ))}
            </g>
          );
        })}
      </svg>
      {drawn.length > 1 || drawn[0].name !== title ? (
        <Text size="xs" c="dimmed">
          {drawn.map((s, index) => (
            <span key={s.name} style={{ marginRight: 12, color: s.color || PALETTE[index % PALETTE.length] }}>
              ● {s.name}
            </span>
          ))}
        </Text>
      ) : null}
    </div>
  );
}
