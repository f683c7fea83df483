// ESLint flat config: @eslint/js and typescript-eslint's recommended rules, type-aware for
// TypeScript (types from tsconfig.test.json, which covers lib/, test/, bench/ and scripts/).
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'dist/',
      'build/',
      'deps/',
      'node_modules/',
      'prebuilds/',
      'bench/results/',
      'bench/fixtures/',
      'bench/.build/',
      '.tmp/',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      globals: { ...globals.node },
      parserOptions: {
        project: './tsconfig.test.json',
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      // A leading underscore marks what is deliberately unused (rest-destructuring leftovers).
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrorsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
        },
      ],
      // `let x; f(() => x); x = ...`: a closure made before the value exists cannot use const.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      // async functions without await are how the tests' callbacks meet Promise-returning
      // signatures; the rule would only make them wrap values in Promise.resolve.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Plain JavaScript (scripts/, this file): no type information.
    files: ['**/*.js', '**/*.mjs', '**/*.cjs'],
    extends: [tseslint.configs.disableTypeChecked],
  },
  {
    files: ['**/*.js', '**/*.cjs'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
