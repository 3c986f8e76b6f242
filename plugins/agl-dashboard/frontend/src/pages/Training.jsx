// Training: curves per step and per validation (reward, success rate, loss/KL, throughput), APO rounds.
import { Badge, Card, Code, Group, Select, SimpleGrid, Table, Text, Title } from "@mantine/core";
import { StatusBadge } from "../components/StatusBadge.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { LineChart } from "../components/LineChart.jsx";
import { formatNumber, formatTime } from "../lib/format.js";
import { usePoll } from "../lib/live.js";
import { href } from "../lib/route.js";
import { candidatesByRound, metricNames, metricSeries, throughputSeries } from "../lib/training.js";

const CANDIDATE_COLORS = { seed: "green", beam: "green", dropped: "gray", rejected: "yellow" };

export function ApoRounds({ candidates }) {
  if (!candidates.length) return null;
  return (
    <Card withBorder mt="md" data-testid="apo-rounds">
      <Title order={4} mb="xs">
        Prompt candidates per round
      </Title>
      <Table fz="sm">
        <Table.Thead>
          <Table.Tr>
            <Table.Th>Round</Table.Th>
            <Table.Th>Candidate</Table.Th>
            <Table.Th>Parent</Table.Th>
            <Table.Th>Template</Table.Th>
            <Table.Th>Score</Table.Th>
            <Table.Th>Prompt</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {candidatesByRound(candidates).flatMap(({ round, items }) =>
            items.map((candidate, index) => (
              <Table.Tr key={`${round}:${candidate.candidate}`} data-testid="apo-candidate">
                <Table.Td>{index === 0 ? round : ""}</Table.Td>
                <Table.Td ff="monospace">
                  {candidate.candidate}
                  {candidate.status ? (
                    <Badge ml={6} size="xs" color={CANDIDATE_COLORS[candidate.status] ?? "blue"}>
                      {candidate.status === "beam" ? "kept" : candidate.status}
                    </Badge>
                  ) : null}
                </Table.Td>
                <Table.Td ff="monospace">{candidate.parent ?? "–"}</Table.Td>
                <Table.Td ff="monospace">{candidate.template ?? "–"}</Table.Td>
                <Table.Td>{candidate.score == null ? "–" : formatNumber(candidate.score)}</Table.Td>
                <Table.Td>
                  {candidate.reason ? (
                    <Text size="xs" c="yellow.8">
                      {candidate.reason}
                    </Text>
                  ) : (
                    <Code block style={{ whiteSpace: "pre-wrap", maxHeight: 100, overflow: "auto" }}>
                      {candidate.prompt ?? ""}
                    </Code>
                  )}
                </Table.Td>
              </Table.Tr>
            )),
          )}
        </Table.Tbody>
      </Table>
    </Card>
  );
}

export function RunCharts({ run }) {
  const { steps, validations } = run;
  const stepNames = metricNames(steps);
  const valNames = metricNames(validations);
  const charts = [
    {
      id: "reward",
      title: "Reward",
      series: [
        { name: "reward_mean (train)", points: metricSeries(steps, "reward_mean") },
        { name: "val_reward_mean (validation)", points: metricSeries(validations, "val_reward_mean") },
      ],
    },
    {
      id: "success",
      title: "Success rate",
      series: [
        { name: "success_rate (train)", points: metricSeries(steps, "success_rate") },
        { name: "val_succeeded (validation)", points: metricSeries(validations, "val_succeeded") },
      ],
    },
    {
      id: "loss",
      title: "Loss and KL",
      series: [
        { name: "loss", points: metricSeries(steps, "loss") },
        { name: "kl", points: metricSeries(steps, "kl") },
      ],
    },
    {
      id: "throughput",
      title: "Throughput",
      series: [
        { name: "rollouts/s", points: throughputSeries(steps) },
        { name: "tokens_per_s", points: metricSeries(steps, "tokens_per_s") },
      ],
    },
  ];
  if (run.candidates.length || stepNames.includes("best_score")) {
    charts.unshift({
      id: "apo-score",
      title: "Score per round",
      series: [
        { name: "best_score", points: metricSeries(steps, "best_score") },
        { name: "mean_score", points: metricSeries(steps, "mean_score") },
      ],
    });
  }
  const shown = charts.filter((chart) => chart.series.some((s) => s.points.length) || chart.id === "reward");
  return (
    <>
      <SimpleGrid cols={2} spacing="lg">
        {shown.map((chart) => (
          <Card withBorder key={chart.id}>
            <LineChart title={chart.title} series={chart.series} testId={`chart-${chart.id}`} />
          </Card>
        ))}
      </SimpleGrid>
      <ApoRounds candidates={run.candidates} />
      <Card withBorder mt="md">
        <Title order={4} mb="xs">
          Every metric per step
        </Title>
        <Table.ScrollContainer minWidth={600}>
          <Table fz="xs" data-testid="metrics-table">
            <Table.Thead>
              <Table.Tr>
                <Table.Th>step</Table.Th>
                {stepNames.map((name) => (
                  <Table.Th key={name}>{name}</Table.Th>
                ))}
              </Table.Tr>
            </Table.Thead>
            <Table.Tbody>
              {steps.map((point) => (
                <Table.Tr key={point.step} data-testid="metrics-row">
                  <Table.Td>{point.step}</Table.Td>
                  {stepNames.map((name) => (
                    <Table.Td key={name}>{formatNumber(point.metrics[name])}</Table.Td>
                  ))}
                </Table.Tr>
              ))}
            </Table.Tbody>
          </Table>
        </Table.ScrollContainer>
        {valNames.length ? (
          <Text size="xs" c="dimmed" mt="xs">
            Validations: {validations.length} ({valNames.join(", ")})
          </Text>
        ) : null}
      </Card>
    </>
  );
}

export function TrainingPage({ params }) {
  const { data, error } = usePoll("/api/dashboard/training");
  const runs = data?.runs || [];
  const chosen = runs.find((run) => run.rollout_id === params.run) || runs[runs.length - 1];
  return (
    <div>
      <Group justify="space-between" mb="sm">
        <Title order={3}>Training</Title>
        {runs.length > 1 ? (
          <Select
            w={360}
            value={chosen?.rollout_id}
            data={runs.map((run) => ({ value: run.rollout_id, label: `${run.algorithm} ${run.rollout_id} (${formatTime(run.start_time)})` }))}
            onChange={(value) => (window.location.hash = href("training", undefined, { run: value }))}
            data-testid="run-select"
          />
        ) : null}
      </Group>
      <ErrorNote error={error} />
      {data && !chosen ? (
        <Text c="dimmed">
          No training run in this store yet. Algorithms record their metrics here as they train (GRPO, APO).
        </Text>
      ) : null}
      {chosen ? (
        <div data-testid="training-run" data-steps={chosen.steps.length}>
          <Group mb="md" gap="sm">
            <Badge size="lg">{chosen.algorithm}</Badge>
            <StatusBadge status={chosen.status} />
            <Text size="sm" c="dimmed">
              run {chosen.rollout_id} · {chosen.steps.length} steps · {chosen.validations.length} validations · started{" "}
              {formatTime(chosen.start_time)}
            </Text>
          </Group>
          <RunCharts run={chosen} />
        </div>
      ) : null}
    </div>
  );
}
