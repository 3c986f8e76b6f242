import { createRoot } from "react-dom/client";
import "@mantine/core/styles.css";
import { App } from "./App.jsx";
import { takeTokenFromAddress } from "./lib/api.js";

takeTokenFromAddress();
createRoot(document.getElementById("root")).render(<App />);
