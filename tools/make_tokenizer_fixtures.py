#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/<model>.json: token ids from the Hugging Face tokenizer for a
varied set of texts, for each of the two real GGUF models. Run once by hand; the JSON is committed
and the C++ tests compare against it (no Python is needed to build or test tqkv).

    pip install transformers tokenizers gguf sentencepiece protobuf   # torch is NOT needed
    python3 tools/make_tokenizer_fixtures.py [--models models] [--out tests/fixtures/tokenizer]

How the tokenizer is built: transformers' own GGUF path (TokenizersBackend.from_pretrained with
gguf_file=..., i.e. integrations/gguf/gguf_tokenizer_mapping.py). transformers' GGUF *metadata
reader* imports torch only for tensor dtypes, so we hand it an equivalent metadata reader built on
the `gguf` package instead; everything after reading the metadata is transformers' code.

Per model we record, for every text:
  ids          encode(text, add_special_tokens=False): special/control tokens in the text ARE
               recognised (HF's default) -> our encode(text, add_bos=false, parse_special=true)
  ids_plain    the same with split_special_tokens=True: control tokens are NOT recognised
               (user-defined tokens still are) -> our encode(text, false, parse_special=false)
  ids_bos      encode(text, add_special_tokens=True): HF adds BOS iff the file's add_bos_token
               -> our encode(text, add_bos=tokenizer.add_bos(), parse_special=true)
  lossless     whether HF's decode(ids) gives the text back (false only where a byte-level
               vocabulary cannot spell some bytes, which are then dropped)

Also written: pretokenizer_splits.json, Hugging Face's word splits of the texts for each
tokenizer.ggml.pre family we support (gpt2, smollm, llama-bpe, qwen2), for the PCRE2 test.

Known quirks of transformers' GGUF conversion, and what we record instead:
  SmolLM2 (tokenizer.ggml.pre = "smollm"): transformers has no split regex for "smollm" and falls
    back to plain GPT-2 ByteLevel splitting. The original SmolLM2 tokenizer.json splits digits
    first: pre_tokenizer = Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=
    False, use_regex=True)] (llama.cpp's "smollm" regexes say the same: "\\p{N}" then GPT-2's).
    We install that original pre-tokenizer; where the unmodified GGUF conversion differs, the case
    also carries `ids_hf_gguf_unmodified`.
  Gemma 3: the original tokenizer is a SentencePiece BPE model, in which the runs of 2..31 spaces
    are USER_DEFINED pieces, matched whole (longest first) before any merge. transformers' GGUF
    conversion respells them as ordinary vocabulary ("  " -> "▁▁") reached by merges, which cuts
    long runs differently (40 spaces: 16+24 instead of 31+9). We rebuild the SentencePiece model
    from the GGUF vocabulary (pieces, scores, types; identity normalizer, no dummy prefix, byte
    fallback) and encode every text with the sentencepiece library too. Where the two disagree the
    fixture records sentencepiece's ids and keeps transformers' in `ids_hf_gguf_unmodified`.
"""
import argparse
import json
import os
import sys
import types


def install_metadata_reader():
    """Give transformers a torch-free GGUF metadata reader (same return shape as its own)."""
    from gguf import GGUFReader

    def read_gguf_metadata(path, string_arrays=()):
        r = GGUFReader(path)
        md = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
        return md, tuple(t.name for t in r.tensors)

    fake = types.ModuleType("transformers.integrations.gguf.reader")
    fake.read_gguf_metadata = read_gguf_metadata
    sys.modules["transformers.integrations.gguf.reader"] = fake


COMMON_TEXTS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you doing today?",
    " leading space",
    "trailing spaces   ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure you've heard: they'll say it's what we'd DON'T WON'T I'M.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}",
    "for (auto& [k, v] : map) { std::cout << k << \"=\" << v << '\\n'; }",
    "3.14159 2.71828 1,000,000 -42 +7 1e-9 0x1F",
    "12345678901234567890123456789",
    "year 2024, 1st 2nd 3rd 100th; ½ ² ③ ٣ ६",
    "a  b   c    d     e",
    "\t\ttabs\tand\ttabs",
    "line1\nline2\n\nline4\n\n\n\nline8",
    "windows\r\nline\r\nendings",
    "   \n\t  \n ",
    "emoji 😀😃🎉 and family 👨‍👩‍👧‍👦 and flag 🇫🇷",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "café naïve résumé façade Ångström Øre Ελληνικά Русский текст",
    "decomposed e\u0301 and ñ vs n\u0303",
    "العربية हिन्दी ไทย עברית",
    "non-breaking\u00a0space and ideographic\u3000space and zero\u200bwidth",
    "<html><body><div class=\"x\">text</div></body></html>",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "!!!???...---***&&&",
    "MixedCASE camelCase snake_case kebab-case SCREAMING_CASE",
    "private use \ue000\ue001 and rare \U0001d54f\U0001f9ff",
    "control \x01\x02 chars",
    "bytes SmolLM2 cannot spell: \x04\x06\x1d end",
    "plane 16 private use \U0010fffd (byte fallback)",
    "forty spaces:" + " " * 40 + "end",
    "many newlines" + "\n" * 45 + "end",
    " \n \n  \n\t \t\n",
    "x" * 300,
    "99 bottles of beer on the wall, 99 bottles of beer. Take 1 down, pass it around: 98!",
    "Zürich Straße ÄÖÜ äöü ß İstanbul ǅ ﬁ ＡＢＣ１２３",
]

SMOL_SPECIAL = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more<|endoftext|>",
    "<|im_start|<|im_start|>",
    "<start_of_turn>not special here<end_of_turn>",
]
GEMMA_SPECIAL = [
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos>hello<eos>",
    "text<end_of_turn>more",
    "<start_of_turn<start_of_turn>",
    "<|im_start|>not special here<|im_end|>",
    "[multimodal] and <pad> and <unused0>",
    "<div>html tags</div><span>x</span>",
]


def sentencepiece_from_gguf(path):
    """The Gemma SentencePiece BPE model rebuilt from a GGUF's tokenizer.ggml.* arrays."""
    import sentencepiece as spm
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = GGUFReader(path).fields
    tokens = [f["tokenizer.ggml.tokens"].contents(i) for i in range(len(f["tokenizer.ggml.tokens"].data))]
    scores = f["tokenizer.ggml.scores"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(tokens)
    for key, attr in [("bos", "bos_id"), ("eos", "eos_id"), ("unknown", "unk_id"), ("padding", "pad_id")]:
        setattr(m.trainer_spec, attr, f[f"tokenizer.ggml.{key}_token_id"].contents())
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for token, score, ttype in zip(tokens, scores, types):
        piece = m.pieces.add()
        # llama.cpp's converter wrote the user-defined space runs with real spaces; SentencePiece
        # matches them on the escaped text, so spell them with U+2581 again.
        piece.piece = token.replace(" ", "\u2581") if ttype == 4 else token
        piece.score = score
        piece.type = ttype
    return spm.SentencePieceProcessor(model_proto=m.SerializeToString()), [
        t for t, ty in zip(tokens, types) if ty == 3
    ]


def encode_all(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    ids_bos = tok.encode(text, add_special_tokens=True)
    # split_special_tokens: special (control) added tokens are tokenized as plain text; the
    # non-special (user-defined) added tokens are still matched whole, as llama.cpp does.
    ids_plain = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
    return ids, ids_plain, ids_bos


def write_pretokenizer_splits(out_dir, texts):
    """pretokenizer_splits.json: how Hugging Face's pre-tokenizers cut each text into words, for
    every tokenizer.ggml.pre family we support (covers llama-bpe and qwen2, which have no real model
    here). ByteLevel pieces are mapped back from the byte alphabet to text."""
    from tokenizers import Regex, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    unspell = {c: b for b, c in bytes_to_unicode().items()}

    def from_letters(piece):
        return bytes(unspell[c] for c in piece).decode("utf-8")

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    families = {
        "gpt2": lambda t: [from_letters(p) for p, _ in byte_level.pre_tokenize_str(t)],
        "smollm": lambda t: [
            from_letters(p)
            for p, _ in pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            ).pre_tokenize_str(t)
        ],
    }
    for name in ("llama-bpe", "qwen2"):
        split = pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[name]), behavior="isolated")
        families[name] = lambda t, split=split: [p for p, _ in split.pre_tokenize_str(t)]
    out = {"made_with": "tokenizers pre_tokenizers (see tools/make_tokenizer_fixtures.py)", "families": {}}
    for name, fn in families.items():
        out["families"][name] = [{"text": t, "pieces": fn(t)} for t in texts]
    path = os.path.join(out_dir, "pretokenizer_splits.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(families)} families x {len(texts)} texts")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models")
    ap.add_argument("--out", default="tests/fixtures/tokenizer")
    args = ap.parse_args()

    install_metadata_reader()
    import tokenizers
    import transformers
    from tokenizers import pre_tokenizers
    from transformers import TokenizersBackend

    specs = [
        ("smollm2-135m-instruct-q4_1", SMOL_SPECIAL, True, False),
        ("gemma3-270m-q4_k_m", GEMMA_SPECIAL, False, True),
    ]
    os.makedirs(args.out, exist_ok=True)
    for name, special_texts, fix_digits, check_spm in specs:
        gguf_file = name + ".gguf"
        tok = TokenizersBackend.from_pretrained(args.models, gguf_file=gguf_file)
        unmodified = None
        notes = []
        if fix_digits:
            unmodified = TokenizersBackend.from_pretrained(args.models, gguf_file=gguf_file)
            tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
            notes.append(
                "pre-tokenizer replaced by the original SmolLM2 one: Sequence[Digits(individual_digits="
                "True), ByteLevel(add_prefix_space=False, use_regex=True)]; transformers' GGUF "
                "conversion has no 'smollm' split and uses plain ByteLevel (see ids_hf_gguf_unmodified)"
            )
        sp, control_texts = (None, [])
        if check_spm:
            sp, control_texts = sentencepiece_from_gguf(os.path.join(args.models, gguf_file))
        cases = []
        n_diff = 0
        for text in COMMON_TEXTS + special_texts:
            ids, ids_plain, ids_bos = encode_all(tok, text)
            case = {"text": text, "ids": ids, "ids_plain": ids_plain, "ids_bos": ids_bos}
            # Bytes a byte-level vocabulary cannot spell are dropped, so decoding loses them.
            case["lossless"] = tok.decode(ids) == text
            if sp is not None:
                # SentencePiece never parses control tokens: compare with ids_plain.
                ref = sp.encode(text)
                if ref != ids_plain:
                    if any(c in text for c in control_texts):
                        raise SystemExit(f"sentencepiece and transformers differ on a text with control tokens: {text!r}")
                    case["ids_hf_gguf_unmodified"] = ids_plain
                    bos = ids_bos[: len(ids_bos) - len(ids)]
                    case.update(ids=ref, ids_plain=ref, ids_bos=bos + ref)
                    n_diff += 1
            if unmodified is not None:
                u = unmodified.encode(text, add_special_tokens=False)
                if u != ids:
                    case["ids_hf_gguf_unmodified"] = u
                    n_diff += 1
            cases.append(case)
        if sp is not None:
            notes.append(
                "cross-checked with the sentencepiece library on the SentencePiece BPE model rebuilt "
                "from the GGUF vocabulary (user-defined pieces matched whole); where transformers' "
                "GGUF conversion disagrees, the ids are sentencepiece's (see ids_hf_gguf_unmodified)"
            )
        if unmodified is not None or sp is not None:
            notes.append(f"{n_diff} of {len(cases)} texts differ under the unmodified conversion")
        out = {
            "model": gguf_file,
            "made_with": {
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "builder": "TokenizersBackend.from_pretrained(models, gguf_file=...)",
            },
            "hf_add_special_tokens_adds_bos": tok.encode("x", add_special_tokens=True)[:1]
            != tok.encode("x", add_special_tokens=False)[:1],
            "bos_id": tok.bos_token_id,
            "notes": notes,
            "cases": cases,
        }
        path = os.path.join(args.out, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(out, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"wrote {path}: {len(cases)} texts; notes: {notes}")
    extra = [
        "I'VE GOT 1234567 apples's AND THEY'LL rot",
        "x = 12345.678;\r\n\r\n  y += 99;\n\n\n",
        "  multiple   spaces\tand\t\ttabs  \n  ",
        "¿Qué? ¡Sí! — «quotes» “curly” 'single'",
    ]
    write_pretokenizer_splits(args.out, [t for t in COMMON_TEXTS if t] + extra)


if __name__ == "__main__":
    main()
