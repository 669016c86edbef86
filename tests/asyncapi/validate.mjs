// Reads an AsyncAPI document on stdin and validates it with the official parser.
// Prints one JSON line per diagnostic; exits 0 when the document has no error.
import { Parser } from "@asyncapi/parser";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { document, diagnostics } = await new Parser().parse(input);
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
const errors = diagnostics.filter((d) => d.severity === 0);
process.exit(document && errors.length === 0 ? 0 : 1);
