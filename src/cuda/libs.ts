import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';

/**
 * Finds and loads the NVIDIA shared libraries: an environment override first (a full path),
 * then the loader's own search by soname, then the usual install places (CUDA toolkits and the
 * pip `nvidia-*` packages under Python site-packages). Returns the library or a one-line reason.
 */

export type Loaded = { lib: koffi.IKoffiLib; path: string } | { error: string };

function tryLoad(path: string): koffi.IKoffiLib | string {
  try {
    return koffi.load(path);
  } catch (e) {
    return (e as Error).message.split('\n')[0];
  }
}

function subdirs(dir: string): string[] {
  try {
    return readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => join(dir, d.name));
  } catch {
    return [];
  }
}

/** Folders where CUDA toolkits and pip wheels put their libraries. */
export function libraryDirs(): string[] {
  const dirs: string[] = [];
  const cudaRoots = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda', ...subdirs('/usr/local').filter((d) => /\/cuda-[\d.]+$/.test(d))];
  for (const root of cudaRoots) {
    if (!root) continue;
    dirs.push(join(root, 'lib64'), join(root, 'lib'), join(root, 'targets', 'x86_64-linux', 'lib'), join(root, 'targets', 'sbsa-linux', 'lib'));
  }
  dirs.push('/usr/lib/x86_64-linux-gnu', '/usr/lib64', '/usr/local/nvidia/lib64', '/usr/local/nvidia/lib');
  // pip wheels: <site-packages>/nvidia/<pkg>/lib and (CUDA 13) <site-packages>/nvidia/cu13/lib
  const sitePackages: string[] = [];
  for (const base of ['/usr/local/lib', '/usr/lib', ...subdirs('/opt').map((d) => join(d, '.venv', 'lib')), ...subdirs('/opt').map((d) => join(d, 'lib'))]) {
    for (const py of subdirs(base).filter((d) => /python3[.\d]*$/.test(d))) sitePackages.push(join(py, 'site-packages'), join(py, 'dist-packages'));
  }
  if (process.env.VIRTUAL_ENV) for (const py of subdirs(join(process.env.VIRTUAL_ENV, 'lib'))) sitePackages.push(join(py, 'site-packages'));
  for (const sp of sitePackages) for (const pkg of subdirs(join(sp, 'nvidia'))) dirs.push(join(pkg, 'lib'));
  return [...new Set(dirs)].filter((d) => existsSync(d));
}

/**
 * Load the first of `names` (sonames such as 'libnvrtc.so.13'): `env` (a path) wins when set;
 * then the system loader; then `libraryDirs()`. `before` runs with the chosen folder first (to
 * preload a dependency by absolute path, e.g. libnvrtc-builtins).
 */
export function loadLibrary(names: string[], env: string, before?: (dir: string) => void): Loaded {
  const override = process.env[env];
  if (override) {
    const dir = override.includes('/') ? override.slice(0, override.lastIndexOf('/')) : '.';
    before?.(dir);
    const r = tryLoad(override);
    return typeof r === 'string' ? { error: `${env}=${override} could not be loaded: ${r}` } : { lib: r, path: override };
  }
  const tried: string[] = [];
  for (const dir of libraryDirs()) {
    for (const name of names) {
      const path = join(dir, name);
      if (!existsSync(path)) continue;
      before?.(dir);
      const r = tryLoad(path);
      if (typeof r !== 'string') return { lib: r, path };
      tried.push(`${path} (${r})`);
    }
  }
  for (const name of names) {
    const r = tryLoad(name);
    if (typeof r !== 'string') return { lib: r, path: name };
    tried.push(name);
  }
  return { error: `none of ${names.join(', ')} could be loaded (set ${env} to its path); tried ${tried.slice(0, 6).join('; ')}${tried.length > 6 ? '; ...' : ''}` };
}
