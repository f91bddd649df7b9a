// Compiled (tsc --noEmit --strict) against the types openapi-typescript generated from
// hookd's /openapi.json (tests/it/api_clients.rs): the shapes a TypeScript user relies on.
import type { components, paths } from "./schema";
type Webhook = components["schemas"]["WebhookView"];
type Header = components["schemas"]["HeaderField"];
const w: Partial<Webhook> = { url: "https://example.com", status: "paused", retry_schedule: ["10s"] };
const h: Header = { name: "x", value: "y" };
type ListDeliveries = paths["/v1/deliveries"]["get"]["parameters"]["query"];
const q: ListDeliveries = { status: "failed", limit: 5 };
export { w, h, q };
