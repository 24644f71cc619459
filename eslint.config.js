// ESLint: typescript-eslint's type-aware rules on the whole tree (the worker through its own tsconfig).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["node_modules/", "dist/", "build/", ".wrangler/", "worker/public/", "**/*.js", "**/*.mjs"] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // The two that catch real bugs in code full of streams and waitUntil: a promise nobody awaits or handles.
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      // `_`-named bindings are left out on purpose (a destructured field dropped from a copy).
      "@typescript-eslint/no-unused-vars": [
        "error",
        { varsIgnorePattern: "^_", argsIgnorePattern: "^_", destructuredArrayIgnorePattern: "^_" },
      ],
      // An async function without await still returns a promise, which is what interfaces of stores and streams ask for.
      "@typescript-eslint/require-await": "off",
    },
  },
  {
    // Tests read JSON answers and error objects loosely and assert on them at once; the product code is held to
    // these rules, where an `any` would cross a boundary unchecked.
    files: ["test/**/*.ts"],
    rules: {
      "@typescript-eslint/no-unsafe-assignment": "off",
      "@typescript-eslint/no-unsafe-argument": "off",
      "@typescript-eslint/no-unsafe-member-access": "off",
      "@typescript-eslint/restrict-template-expressions": "off",
      "@typescript-eslint/unbound-method": "off",
      "@typescript-eslint/no-base-to-string": "off",
      // The fuzz test builds malformed requests on purpose, control characters included.
      "no-control-regex": "off",
    },
  },
  {
    // A worker of the local stack, checked with the worker's types (the root tsconfig leaves it out).
    files: ["scripts/local-s3-endpoint/worker.ts"],
    languageOptions: { parserOptions: { projectService: false, project: "./worker/tsconfig.json" } },
  },
);
