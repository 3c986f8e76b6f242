// Curves of a training run from its metric spans (steps and validations).

export function metricSeries(points, metric) {
  return points
    .filter((point) => Number.isFinite(point.metrics?.[metric]))
    .map((point) => ({ x: point.step, y: point.metrics[metric] }));
}

export function metricNames(points) {
  const names = new Set();
  points.forEach((point) => Object.keys(point.metrics || {}).forEach((name) => names.add(name)));
  return [...names].sort();
}

// Rollouts per second of each step (rollouts / step_time_s), when both are recorded.
export function throughputSeries(steps) {
  return steps
    .filter((point) => point.metrics?.rollouts > 0 && point.metrics?.step_time_s > 0)
    .map((point) => ({ x: point.step, y: point.metrics.rollouts / point.metrics.step_time_s }));
}

// APO: candidates grouped by round, best score first within a round.
export function candidatesByRound(candidates) {
  const rounds = new Map();
  for (const candidate of candidates) {
    const round = candidate.round ?? 0;
    if (!rounds.has(round)) rounds.set(round, []);
    rounds.get(round).push(candidate);
  }
  return [...rounds.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([round, items]) => ({ round, items: items.sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity)) }));
}
