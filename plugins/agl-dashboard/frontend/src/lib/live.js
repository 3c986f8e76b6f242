// Live data: every page polls its route (polling is enough at these sizes and survives a server restart), and
// every poll reports to one connection state that the header's indicator shows.
import { useEffect, useRef, useState, useSyncExternalStore } from "react";
import { AuthError, getJson } from "./api.js";

export const POLL_MS = Number(new URLSearchParams(window.location.search).get("poll")) || 2000;

let connection = { state: "connecting", since: Date.now(), message: "" };
const listeners = new Set();

export function reportConnection(state, message = "") {
  if (connection.state === state && connection.message === message) return;
  connection = { state, since: Date.now(), message };
  listeners.forEach((listener) => listener());
}

export function useConnection() {
  return useSyncExternalStore(
    (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    () => connection,
  );
}

// Fetch `path` now and every `interval` ms while the component is shown; a new path starts over.
export function usePoll(path, interval = POLL_MS) {
  const [result, setResult] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  useEffect(() => {
    if (!path) return undefined;
    const mine = ++generation.current;
    const controller = new AbortController();
    let timer = null;
    setResult((previous) => ({ ...previous, loading: true }));
    const tick = async () => {
      try {
        const data = await getJson(path, { signal: controller.signal });
        if (generation.current !== mine) return;
        reportConnection("live");
        setResult({ data, error: null, loading: false });
      } catch (error) {
        if (controller.signal.aborted || generation.current !== mine) return;
        if (error instanceof AuthError) reportConnection("unauthorized", error.message);
        else if (error instanceof TypeError) reportConnection("offline", "the server cannot be reached");
        else reportConnection("live");
        setResult((previous) => ({ ...previous, error, loading: false }));
      }
      if (generation.current === mine && interval > 0) timer = setTimeout(tick, interval);
    };
    tick();
    return () => {
      controller.abort();
      if (timer) clearTimeout(timer);
    };
  }, [path, interval]);
  return result;
}
