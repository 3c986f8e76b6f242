"""The room-selection agent: book the right meeting room for a request, using a tool that lists the rooms.

A task is a booking request: a date, a start time, a duration, a number of attendees and the equipment they need.
The agent (an unmodified ``openai`` client on any OpenAI-compatible endpoint) may call the tool ``list_rooms(date,
time, duration_min)``, which returns every room with its capacity, equipment and whether it is free then; it
ends with a line ``ROOM: <id>`` (or ``ROOM: none``). Its two prompt templates are resources, so APO can optimize
both: ``system_prompt`` (no variables) and ``request_prompt`` ({date}, {time}, {duration}, {attendees}, {needs}).

The reward is programmatic (:func:`room_reward`): 1 for the best room (free, big enough, with every piece of
equipment asked for, and the smallest such room; ties by id), 0.5 for another room that would do, 0 otherwise;
for a request no room can meet, 1 for ``none``.

    from room_selector import make_dataset, room_agent, SEED_PROMPTS
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from agl_kernel.agent import openai_client, rollout
from agl_kernel.emit import operation

__all__ = ["ROOMS", "SEED_PROMPTS", "TOOLS", "best_room", "list_rooms", "make_dataset", "room_agent", "room_reward"]

ROOMS: list[dict[str, Any]] = [
    {"id": "A101", "capacity": 4, "equipment": ["whiteboard"]},
    {"id": "A102", "capacity": 6, "equipment": ["screen", "whiteboard"]},
    {"id": "B201", "capacity": 8, "equipment": ["screen", "video"]},
    {"id": "B202", "capacity": 10, "equipment": ["whiteboard", "video"]},
    {"id": "C301", "capacity": 12, "equipment": ["screen", "whiteboard", "video"]},
    {"id": "C302", "capacity": 16, "equipment": ["screen"]},
    {"id": "D401", "capacity": 20, "equipment": ["screen", "video", "step-free"]},
    {"id": "D402", "capacity": 30, "equipment": ["screen", "whiteboard", "video", "step-free"]},
]
EQUIPMENT = ["whiteboard", "screen", "video", "step-free"]

SEED_PROMPTS = {
    "system_prompt": "You are an assistant that books meeting rooms.",
    "request_prompt": "Book a room for {attendees} people on {date} at {time} for {duration} minutes. Needs: {needs}.",
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "list_rooms",
            "description": "Every meeting room with its capacity, its equipment and whether it is free for the slot.",
            "parameters": {
                "type": "object",
                "properties": {
                    "date": {"type": "string", "description": "YYYY-MM-DD"},
                    "time": {"type": "string", "description": "HH:MM, 24-hour"},
                    "duration_min": {"type": "integer"},
                },
                "required": ["date", "time", "duration_min"],
            },
        },
    }
]

_ANSWER = re.compile(r"ROOM:\s*([A-Za-z]\d{3}|none)\b", re.IGNORECASE)


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _booked(room_id: str, date: str, start: int, end: int, bookings: list[dict[str, Any]]) -> bool:
    return any(b["room"] == room_id and b["date"] == date and b["start"] < end and start < b["end"] for b in bookings)


def list_rooms(task: dict[str, Any], date: str, time: str, duration_min: int) -> list[dict[str, Any]]:
    """What the tool returns: every room, free or not for the slot (the calendar is the task's)."""
    start = _minutes(time)
    end = start + int(duration_min)
    return [{**room, "free": not _booked(room["id"], date, start, end, task["bookings"])} for room in ROOMS]


def best_room(task: dict[str, Any]) -> str | None:
    """The smallest free room that seats everyone and has every piece of equipment asked for (``None``: none)."""
    rooms = list_rooms(task, task["date"], task["time"], task["duration_min"])
    fits = [
        r
        for r in rooms
        if r["free"] and r["capacity"] >= task["attendees"] and set(task["needs"]) <= set(r["equipment"])
    ]
    return min(fits, key=lambda r: (r["capacity"], r["id"]))["id"] if fits else None


def room_reward(task: dict[str, Any], answer: str | None) -> float:
    best = best_room(task)
    if answer is None:
        return 0.0
    if answer.lower() == "none":
        return 1.0 if best is None else 0.0
    if answer == best:
        return 1.0
    rooms = {r["id"]: r for r in list_rooms(task, task["date"], task["time"], task["duration_min"])}
    room = rooms.get(answer)
    would_do = (
        room is not None
        and room["free"]
        and room["capacity"] >= task["attendees"]
        and set(task["needs"]) <= set(room["equipment"])
    )
    return 0.5 if would_do else 0.0


def make_dataset(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` booking requests, each with its own calendar of existing bookings (deterministic for a seed)."""
    rng = random.Random(seed)
    tasks = []
    for index in range(n):
        date = f"2026-12-{rng.randint(1, 28):02d}"
        start = rng.choice(range(8 * 60, 17 * 60, 30))
        duration = rng.choice([30, 60, 90, 120])
        bookings = []
        for room in ROOMS:
            if rng.random() < 0.4:
                booked_start = start + rng.choice([-60, -30, 0, 30, 60])
                bookings.append(
                    {
                        "room": room["id"],
                        "date": date,
                        "start": booked_start,
                        "end": booked_start + rng.choice([30, 60]),
                    }
                )
        tasks.append(
            {
                "id": f"req-{seed}-{index}",
                "date": date,
                "time": f"{start // 60:02d}:{start % 60:02d}",
                "duration_min": duration,
                "attendees": rng.choice([2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25]),
                "needs": sorted(rng.sample(EQUIPMENT, rng.choice([0, 1, 1, 2]))),
                "bookings": bookings,
            }
        )
    return tasks


def parse_answer(text: str | None) -> str | None:
    found = _ANSWER.findall(text or "")
    if not found:
        return None
    answer = found[-1]
    return "none" if answer.lower() == "none" else answer.upper()


@rollout
async def room_agent(task: dict[str, Any], resources: dict[str, Any]) -> float:
    """One booking: up to 4 model turns, with the ``list_rooms`` tool; the reward of the final ``ROOM:`` answer."""
    llm = resources["llm"]
    values = {
        "date": task["date"],
        "time": task["time"],
        "duration": task["duration_min"],
        "attendees": task["attendees"],
        "needs": ", ".join(task["needs"]) or "nothing in particular",
    }
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": resources["system_prompt"].format()},
        {"role": "user", "content": resources["request_prompt"].format(**values)},
    ]

    @operation("list_rooms")
    def call_tool(arguments: dict[str, Any]) -> list[dict[str, Any]]:
        return list_rooms(task, str(arguments["date"]), str(arguments["time"]), int(arguments["duration_min"]))

    client = openai_client(llm, max_retries=2)
    answer: str | None = None
    for _ in range(4):
        reply = await client.chat.completions.create(
            model=llm.model,
            messages=messages,
            tools=TOOLS,
            **llm.sampling_parameters,  # type: ignore[arg-type]
        )
        message = reply.choices[0].message
        if not message.tool_calls:
            answer = parse_answer(message.content)
            break
        messages.append(message.model_dump(exclude_none=True))
        for tool_call in message.tool_calls:
            try:
                result: Any = call_tool(json.loads(tool_call.function.arguments or "{}"))
            except (KeyError, ValueError, TypeError) as exc:
                result = {"error": f"bad arguments for list_rooms: {exc}"}
            messages.append({"role": "tool", "tool_call_id": tool_call.id, "content": json.dumps(result)})
    return room_reward(task, answer)
