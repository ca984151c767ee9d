import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { InputError } from '../core/errors.js';

/**
 * A Hugging Face `tokenizer.json` (with `tokenizer_config.json` when present), through
 * Hugging Face's own JavaScript implementation (@huggingface/tokenizers): byte-level BPE
 * (Llama 3, Qwen2, GPT-2) and SentencePiece-style BPE (Llama 2, Mistral) alike.
 */
export interface TextTokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
}

export function hasTokenizer(dir: string): boolean {
  return existsSync(join(dir, 'tokenizer.json'));
}

function readJson(path: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new InputError(path, `expected a JSON file (${(e as Error).message})`);
  }
}

/** `otherwise`: what the caller can do instead, for the error when there is none (e.g. 'or pass token ids with --tokens'). */
export function loadTokenizer(dir: string, otherwise = ''): TextTokenizer {
  const file = join(dir, 'tokenizer.json');
  if (!existsSync(file)) throw new InputError('--model', `${dir} has no tokenizer.json; expected one${otherwise ? `, ${otherwise}` : ''}`);
  const json = readJson(file) as Record<string, unknown>;
  const cfgFile = join(dir, 'tokenizer_config.json');
  const config = existsSync(cfgFile) ? (readJson(cfgFile) as Record<string, unknown>) : {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(json as never, config as never);
  } catch (e) {
    throw new InputError(file, `could not be read as a tokenizer (${(e as Error).message})`);
  }
  return {
    encode: (text) => tok.encode(text).ids,
    // @huggingface/tokenizers 0.2 throws on an empty array ("token_ids must be a non-empty array of
    // integers"); Python tokenizers' Tokenizer.decode([]) and transformers' decode return '' (pinned by
    // tests/fixtures/tokenizers/*/encodings.json, the empty text), so do the same.
    decode: (ids) => (ids.length === 0 ? '' : tok.decode(ids, { skip_special_tokens: false } as never)),
  };
}
