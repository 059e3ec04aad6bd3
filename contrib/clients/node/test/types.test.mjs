// index.d.ts compiles and describes the client as a TypeScript service uses it.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { it } from "node:test";

const here = path.dirname(fileURLToPath(import.meta.url));

it("the type declarations check a service's use of the client", () => {
  const tsc = path.join(here, "..", "node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", path.join(here, "tsconfig.json")], { encoding: "utf8", timeout: 60000 });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
