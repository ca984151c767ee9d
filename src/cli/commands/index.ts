import type { Command } from 'commander';
import { registerAttend } from './attend.js';
import { registerCompile } from './compile.js';
import { registerDemo } from './demo.js';
import { registerPlan } from './plan.js';
import { registerLaunch } from './launch.js';
import { registerModelCommands } from './model.js';
import { registerTrain } from './train.js';

/** Each command lives in its own file and registers itself here. */
export function registerCommands(program: Command): void {
  registerAttend(program);
  registerDemo(program);
  registerPlan(program);
  registerLaunch(program);
  registerModelCommands(program);
  registerTrain(program);
  registerCompile(program);
}
