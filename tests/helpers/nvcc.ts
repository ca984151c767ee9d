import { spawnSync } from 'node:child_process';

/** The nvcc to use: $NVCC, else nvcc on PATH, else /usr/local/cuda*; null when there is none. */
export function findNvcc(): string | null {
  if (process.env.NVCC) return process.env.NVCC;
  const r = spawnSync('bash', ['-c', 'command -v nvcc || for c in /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do [ -x "$c" ] && echo "$c" && break; done'], { encoding: 'utf8' });
  const first = r.stdout.trim().split('\n')[0];
  return r.status === 0 && first ? first : null;
}
