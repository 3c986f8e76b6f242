// One rollout: its attempts, and the trace of one attempt as a waterfall with span details, LLM calls and rewards.
import { useState } from "react";
import { Anchor, Badge, Card, Code, Grid, Group, Select, Stack, Table, Tabs, Text, Title } from "@mantine/core";
import { StatusBadge } from "../components/StatusBadge.jsx";
import { ErrorNote } from "../components/ErrorNote.jsx";
import { Waterfall } from "../components/Waterfall.jsx";
import { queryString } from "../lib/api.js";
import { duration, formatNumber, formatSeconds, formatTime } from "../lib/format.js";
import { usePoll } from "../lib/live.js";
import { href } from "../lib/route.js";

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

export function SpanDetails({ span }) {
  if (!span) return <Text c="dimmed">Select a span to see its attributes.</Text>;
  const attributes = Object.entries(span.attributes || {});
  return (
    <Stack gap="xs" data-testid="span-details">
      <Title order={5}>{span.name}</Title>
      <Text size="xs" ff="monospace">
        span {span.span_id}
        {span.parent_id ? ` · parent ${span.parent_id}` : " · root"} · #{span.sequence_id}
      </Text>
      <Text size="sm">
        {formatSeconds(span.end_time != null && span.start_time != null ? span.end_time - span.start_time : null)} ·
        status {span.status?.status_code || "UNSET"}
        {span.status?.description ? `: ${span.status.description}` : ""}
      </Text>
      <Table withTableBorder fz="xs" data-testid="span-attributes">
        <Table.Tbody>
          {attributes.map(([key, value]) => (
            <Table.Tr key={key}>
              <Table.Td ff="monospace" style={{ verticalAlign: "top", whiteSpace: "nowrap" }}>
                {key}
              </Table.Td>
              <Table.Td>
                <Code block style={{ maxHeight: 160, overflow: "auto", whiteSpace: "pre-wrap", wordBreak: "break-all" }}>
                  {pretty(value)}
                </Code>
              </Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      {span.events?.length ? (
        <Text size="sm">
          Events: {span.events.map((event) => event.name).join(", ")}
        </Text>
      ) : null}
    </Stack>
  );
}

function messagesText(messages) {
  if (!Array.isArray(messages)) return pretty(messages ?? "");
  return messages
    .map((message) => {
      const parts = (message.parts || []).map((part) => part.content ?? pretty(part)).join("\n");
      return `${message.role || "?"}: ${parts}`;
    })
    .join("\n\n");
}

export function LlmCalls({ calls }) {
  if (!calls.length) return <Text c="dimmed">This attempt made no LLM calls that were recorded.</Text>;
  return (
    <Stack data-testid="llm-calls">
      {calls.map((call) => (
        <Card withBorder key={call.span_id} data-testid="llm-call">
          <Group justify="space-between" mb="xs">
            <Text fw={600}>{call.name}</Text>
            <Group gap={6}>
              <Badge variant="light">model {call.model || "?"}</Badge>
              <Badge variant="light" data-testid="prompt-tokens">
                prompt {call.input_tokens ?? call.prompt_token_ids ?? "?"} tokens
              </Badge>
              <Badge variant="light" data-testid="completion-tokens">
                completion {call.output_tokens ?? call.response_token_ids ?? "?"} tokens
              </Badge>
              {call.latency_seconds != null ? <Badge variant="outline">{formatSeconds(call.latency_seconds)}</Badge> : null}
            </Group>
          </Group>
          <Text size="xs" c="dimmed">
            Prompt
          </Text>
          <Code block style={{ whiteSpace: "pre-wrap", maxHeight: 220, overflow: "auto" }}>
            {messagesText(call.input_messages)}
          </Code>
          <Text size="xs" c="dimmed" mt="xs">
            Completion
          </Text>
          <Code block style={{ whiteSpace: "pre-wrap" }} data-testid="completion">
            {call.response_text ?? messagesText(call.output_messages)}
          </Code>
        </Card>
      ))}
    </Stack>
  );
}

export function Rewards({ rewards, spans, finalReward }) {
  const names = new Map(spans.map((span) => [span.span_id, span.name]));
  if (!rewards.length) return <Text c="dimmed">No rewards were recorded for this attempt.</Text>;
  return (
    <div data-testid="rewards">
      <Text mb="xs">
        Final reward: <b>{formatNumber(finalReward)}</b>
      </Text>
      <Table withTableBorder>
        <Table.Thead>
          <Table.Tr>
            <Table.Th>#</Table.Th>
            <Table.Th>Value</Table.Th>
            <Table.Th>For</Table.Th>
            <Table.Th>Named values</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {rewards.map((reward) => (
            <Table.Tr key={reward.span_id} data-testid="reward-row">
              <Table.Td>{reward.sequence_id}</Table.Td>
              <Table.Td>{formatNumber(reward.value)}</Table.Td>
              <Table.Td>
                {reward.step_span_id
                  ? `step ${names.get(reward.step_span_id) || ""} (${reward.step_span_id})`
                  : "the whole attempt"}
              </Table.Td>
              <Table.Td>
                {Object.entries(reward.values || {})
                  .map(([name, value]) => `${name}=${formatNumber(value)}`)
                  .join(", ") || "–"}
              </Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
    </div>
  );
}

export function RolloutPage({ rolloutId, params }) {
  const attempt = params.attempt || "latest";
  const { data, error } = usePoll(`/api/dashboard/rollouts/${encodeURIComponent(rolloutId)}${queryString({ attempt })}`);
  const [selected, setSelected] = useState(null);
  if (!data) return <ErrorNote error={error} />;
  const { rollout, attempts, spans, now } = data;
  const selectedSpan = spans.find((span) => span.span_id === selected);
  return (
    <div>
      <Anchor href={href("rollouts")} size="sm">
        ← all rollouts
      </Anchor>
      <ErrorNote error={error} />
      <Group mt="xs" mb="md" gap="sm">
        <Title order={3} ff="monospace" data-testid="rollout-id">
          {rollout.rollout_id}
        </Title>
        <StatusBadge status={rollout.status} />
        {rollout.mode ? <Badge variant="outline">{rollout.mode}</Badge> : null}
        <Text size="sm" c="dimmed">
          {formatSeconds(duration(rollout, now))} · started {formatTime(rollout.start_time)} · reward{" "}
          {formatNumber(data.final_reward)}
        </Text>
      </Group>
      <Grid>
        <Grid.Col span={6}>
          <Text size="xs" c="dimmed">
            Input
          </Text>
          <Code block style={{ maxHeight: 140, overflow: "auto" }}>
            {pretty(rollout.input)}
          </Code>
        </Grid.Col>
        <Grid.Col span={6}>
          <Text size="xs" c="dimmed">
            Metadata · resources {rollout.resources_id || "–"}
          </Text>
          <Code block style={{ maxHeight: 140, overflow: "auto" }}>
            {pretty(rollout.metadata)}
          </Code>
        </Grid.Col>
      </Grid>
      <Title order={4} mt="md" mb="xs">
        Attempts
      </Title>
      <Table withTableBorder data-testid="attempts-table">
        <Table.Thead>
          <Table.Tr>
            <Table.Th>#</Table.Th>
            <Table.Th>Attempt</Table.Th>
            <Table.Th>Status</Table.Th>
            <Table.Th>Worker</Table.Th>
            <Table.Th>Duration</Table.Th>
            <Table.Th>Last heartbeat</Table.Th>
          </Table.Tr>
        </Table.Thead>
        <Table.Tbody>
          {attempts.map((item) => (
            <Table.Tr key={item.attempt_id} data-testid="attempt-row" bg={item.attempt_id === data.attempt_id ? "var(--mantine-color-blue-light)" : undefined}>
              <Table.Td>{item.sequence_id}</Table.Td>
              <Table.Td>
                <Anchor href={href("rollouts", rollout.rollout_id, { attempt: item.attempt_id })} ff="monospace" size="sm">
                  {item.attempt_id}
                </Anchor>
              </Table.Td>
              <Table.Td>
                <StatusBadge status={item.status} />
              </Table.Td>
              <Table.Td>{item.worker_id || "–"}</Table.Td>
              <Table.Td>{formatSeconds(duration(item, now))}</Table.Td>
              <Table.Td>{item.last_heartbeat_time ? `${formatSeconds(now - item.last_heartbeat_time)} ago` : "–"}</Table.Td>
            </Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
      {attempts.length > 1 ? (
        <Select
          mt="xs"
          w={320}
          label="Trace of attempt"
          value={data.attempt_id}
          data={attempts.map((item) => ({ value: item.attempt_id, label: `#${item.sequence_id} ${item.attempt_id} (${item.status})` }))}
          onChange={(value) => (window.location.hash = href("rollouts", rollout.rollout_id, { attempt: value }))}
        />
      ) : null}
      <Tabs defaultValue="trace" mt="md">
        <Tabs.List>
          <Tabs.Tab value="trace" data-testid="tab-trace">
            Trace ({spans.length} spans)
          </Tabs.Tab>
          <Tabs.Tab value="llm" data-testid="tab-llm">
            LLM calls ({data.llm_calls.length})
          </Tabs.Tab>
          <Tabs.Tab value="rewards" data-testid="tab-rewards">
            Rewards ({data.rewards.length})
          </Tabs.Tab>
        </Tabs.List>
        <Tabs.Panel value="trace" pt="sm">
          {data.truncated ? <Text c="orange">Only the first {spans.length} spans are shown.</Text> : null}
          <Grid>
            <Grid.Col span={7}>
              <Waterfall spans={spans} selected={selected} onSelect={setSelected} />
            </Grid.Col>
            <Grid.Col span={5}>
              <SpanDetails span={selectedSpan} />
            </Grid.Col>
          </Grid>
        </Tabs.Panel>
        <Tabs.Panel value="llm" pt="sm">
          <LlmCalls calls={data.llm_calls} />
        </Tabs.Panel>
        <Tabs.Panel value="rewards" pt="sm">
          <Rewards rewards={data.rewards} spans={spans} finalReward={data.final_reward} />
        </Tabs.Panel>
      </Tabs>
    </div>
  );
}
