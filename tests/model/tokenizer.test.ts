/**
 * Our tokenizer (tokenizer.json through @huggingface/tokenizers) against the Python `tokenizers`
 * library. tests/fixtures/tokenizers/<name>/ holds a small trained tokenizer.json +
 * tokenizer_config.json and encodings.json: awkward texts (empty, leading and repeated spaces,
 * accents, combining marks, CJK, emoji with ZWJ, newlines, literal special-token text, ...)
 * encoded by Python with add_special_tokens False and True, and decoded back
 * (tests/fixtures/make_hf_fixtures.py made them).
 *
 * `loadTokenizer(dir).encode(text)` adds special tokens as transformers' `tokenizer(text)` does
 * (add_special_tokens=True, the default on both sides); without them we compare through the
 * library directly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tokenizer } from '@huggingface/tokenizers';
import { loadTokenizer } from '../../src/model/tokenizer.js';

const ROOT = fileURLToPath(new URL('../../../tests/fixtures/tokenizers/', import.meta.url));
const FIXTURES = existsSync(ROOT) ? ROOT : fileURLToPath(new URL('../fixtures/tokenizers/', import.meta.url));

interface Row {
  text: string;
  ids: number[];
  tokens: string[];
  ids_with_special: number[];
  decoded: string;
  decoded_with_special: string;
  decoded_skip_special: string;
  round_trip: boolean;
}

const show = (s: string) => JSON.stringify(s);

/** transformers' `clean_up_tokenization` (tokenization_utils_base.py), applied on decode when the config asks. */
function cleanUp(s: string): string {
  return s
    .replaceAll(' .', '.')
    .replaceAll(' ?', '?')
    .replaceAll(' !', '!')
    .replaceAll(' ,', ',')
    .replaceAll(" ' ", "'")
    .replaceAll(" n't", "n't")
    .replaceAll(" 'm", "'m")
    .replaceAll(" 's", "'s")
    .replaceAll(" 've", "'ve")
    .replaceAll(" 're", "'re");
}

const names = readdirSync(FIXTURES).filter((n) => existsSync(join(FIXTURES, n, 'encodings.json'))).sort();

test('tokenizer fixtures exist', () => {
  assert.deepEqual(names, ['gpt2-bytelevel', 'llama3-bytelevel', 'sentencepiece-bpe']);
});

for (const name of names) {
  const dir = join(FIXTURES, name);
  const { encodings } = JSON.parse(readFileSync(join(dir, 'encodings.json'), 'utf8')) as { encodings: Row[] };
  const config = JSON.parse(readFileSync(join(dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;

  test(`${name}: loadTokenizer(dir).encode equals Python tokenizers (add_special_tokens=True)`, () => {
    const tok = loadTokenizer(dir);
    const bad = encodings.filter((r) => JSON.stringify(tok.encode(r.text)) !== JSON.stringify(r.ids_with_special));
    assert.deepEqual(
      bad.map((r) => `${show(r.text)}: got ${JSON.stringify(tok.encode(r.text))}`),
      [],
      `${bad.length} of ${encodings.length} texts encode differently`,
    );
  });

  test(`${name}: ids and tokens without special tokens equal Python's`, () => {
    const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as object;
    const tok = new Tokenizer(json, config);
    const bad: string[] = [];
    for (const r of encodings) {
      const e = tok.encode(r.text, { add_special_tokens: false });
      if (JSON.stringify(e.ids) !== JSON.stringify(r.ids)) bad.push(`${show(r.text)}: ids ${JSON.stringify(e.ids)} vs ${JSON.stringify(r.ids)}`);
      else if (JSON.stringify(e.tokens) !== JSON.stringify(r.tokens)) bad.push(`${show(r.text)}: tokens ${JSON.stringify(e.tokens)} vs ${JSON.stringify(r.tokens)}`);
    }
    assert.deepEqual(bad, []);
  });

  test(`${name}: decode equals Python's and round-trips wherever Python's does`, () => {
    const tok = loadTokenizer(dir);
    const clean = config.clean_up_tokenization_spaces === true ? cleanUp : (s: string) => s;
    const bad: string[] = [];
    for (const r of encodings) {
      const got = tok.decode(r.ids);
      if (got !== clean(r.decoded)) bad.push(`${show(r.text)}: decoded ${show(got)} vs Python ${show(clean(r.decoded))}`);
      const gotSpecial = tok.decode(r.ids_with_special);
      if (gotSpecial !== clean(r.decoded_with_special)) bad.push(`${show(r.text)}: with special tokens decoded ${show(gotSpecial)} vs Python ${show(clean(r.decoded_with_special))}`);
      if (r.round_trip && clean(r.text) === r.text && got !== r.text) bad.push(`${show(r.text)}: does not round-trip (${show(got)})`);
    }
    assert.deepEqual(bad, []);
  });
}
