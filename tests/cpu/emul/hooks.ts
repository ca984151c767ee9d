/**
 * Test-only module hooks (register.ts installs them): every import of src/cpu/build.js resolves
 * to the stand-in build.ts beside this file, except the stand-in's own import of the real one.
 */
interface Resolved {
  url: string;
}
type Next = (specifier: string, context: { parentURL?: string }) => Promise<Resolved>;

const standIn = new URL('./build.js', import.meta.url).href;

export async function resolve(specifier: string, context: { parentURL?: string }, next: Next): Promise<Resolved> {
  const r = await next(specifier, context);
  if (r.url.endsWith('/dist/src/cpu/build.js') && context.parentURL !== standIn) return { ...r, url: standIn };
  return r;
}
