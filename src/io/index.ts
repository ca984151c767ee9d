/** The io layer: `.npy` and safetensors readers/writers, atomic output files. */
export { readTokens } from './tokens.js';
export { AtomicOutputs, checkOutputDir, checkOutputPath, checkOutputsNotInputs, readInputFile, writeFileAtomic } from './atomic.js';
export {
  type NpyDType,
  encodeNpy,
  npyToFloat32,
  npyToInt32,
  parseNpy,
  readNpy,
  readNpyFloat32,
  readNpyInt32,
  writeNpy,
} from './npy.js';
export {
  INDEX_FILE,
  SINGLE_FILE,
  type SafetensorsDType,
  type SafetensorsEntry,
  type SafetensorsFile,
  type SafetensorsIndex,
  encodeSafetensors,
  parseSafetensors,
  readSafetensors,
  readSafetensorsIndex,
  toFloat32,
  writeSafetensors,
} from './safetensors.js';
