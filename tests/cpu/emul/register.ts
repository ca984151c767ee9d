import { register } from 'node:module';

/** `node --import ./dist/tests/cpu/emul/register.js`: the kernels of another architecture (hooks.ts). */
register('./hooks.js', import.meta.url);
