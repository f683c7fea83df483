#!/usr/bin/env node
// Builds the addon: incremental when build/ is configured, a full configure otherwise.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const gyp = require.resolve('node-gyp/bin/node-gyp.js');
const configured = fs.existsSync(path.join(root, 'build', 'Makefile'));
const args = configured ? ['build'] : ['rebuild'];
if (process.env.FUSEKIT_DEBUG_BUILD) args.push('--debug');
execFileSync(process.execPath, [gyp, ...args], { cwd: root, stdio: 'inherit' });
