// Validate state machine definitions with AWS's own tooling from the npm registry:
// amazon-states-language-service (the ASL schema and checks behind AWS Toolkit) and
// asl-validator. Usage: node statemachine/validate.js NODE_MODULES DEFINITION.json...
// Prints one JSON object per file ({file, problems: [...]}) and exits 1 if any has problems.
"use strict";
const fs = require("fs");
const path = require("path");

const modules = path.resolve(process.argv[2]);
const need = (name) => require(path.join(modules, name));
const asl = need("amazon-states-language-service");
const { TextDocument } = need("vscode-languageserver-textdocument");
const aslValidator = need("asl-validator");

async function problemsOf(file) {
  const text = fs.readFileSync(file, "utf8");
  const problems = [];
  const doc = TextDocument.create("file://" + path.resolve(file), "asl", 0, text);
  const service = asl.getLanguageService({});
  const diagnostics = await service.doValidation(doc, service.parseJSONDocument(doc));
  for (const d of diagnostics) {
    // severity 1 = error, 2 = warning: both fail (an unreachable state is a warning).
    problems.push(`amazon-states-language-service line ${d.range.start.line + 1}: ${d.message}`);
  }
  const result = (aslValidator.default || aslValidator)(JSON.parse(text));
  if (!result.isValid) {
    for (const e of result.errors) {
      problems.push(`asl-validator: ${e["Error code"] || ""} ${e.Message || JSON.stringify(e)}`);
    }
  }
  return problems;
}

(async () => {
  let failed = false;
  for (const file of process.argv.slice(3)) {
    const problems = await problemsOf(file);
    failed = failed || problems.length > 0;
    console.log(JSON.stringify({ file, problems }));
  }
  process.exit(failed ? 1 : 0);
})().catch((err) => { console.error(err); process.exit(2); });
