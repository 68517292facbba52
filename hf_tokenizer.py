"""Hugging Face tokenizers without the tokenizers library: tokenizer.json of type BPE, with byte
fallback (Llama's) or byte-level (GPT-2's), read into a vocab.Vocab and written from one, with
tokenizer_config.json for transformers' AutoTokenizer. tokenizer.py reads tokenizer.json through
read_tokenizer; hf.py's hf_export writes it with write_tokenizer. The helpers at the top read any
JSON file of an HF directory safely (size-capped, one-line errors).
"""
import json
import os

from fileio import MAX_FIELD, atomic_write, quoted, regular_file
import vocab as V

MAX_JSON = 64 << 20  # bytes: config.json, an index, tokenizer.json and a safetensors header are small


def read_json(path, what="file", cap=MAX_JSON):
    """A JSON object from a file of at most cap bytes, or ValueError in one line."""
    size = regular_file(path, what)
    if size > cap:
        raise ValueError(f"{path}: {size:,} bytes is too big for a {what} (at most {cap:,})")
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path}: not a readable JSON {what} ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


# -----------------------------------------------------------------------------
# tokenizer.json

COLLAPSE_RULES = [{"type": "Replace", "pattern": {"Regex": "\\A +|[ \u2581]+\\z"}, "content": ""},
                  {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]  # what we write for COLLAPSE
SPACE_TO_MARK = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
PREPEND_MARK = {"type": "Prepend", "prepend": "\u2581"}
GPT2_END = "<|endoftext|>"  # GPT-2's one special token: its BOS, EOS and unk
GPT2_CLASSES = ("GPT2Tokenizer", "GPT2TokenizerFast")  # transformers' classes that default to it
GPT2_MODEL_TYPES = ("gpt2", "gpt_neo", "gptj")  # config.json model types read with it (GPT-2 vocabularies)


def _token_name(x):
    """A special token as tokenizer_config.json names it: a string or {"content": ...}."""
    return x.get("content") if isinstance(x, dict) else x


def _parts(obj, kind):
    """The steps of a normalizer/pre_tokenizer/post_processor (a Sequence flattened), each a dict."""
    if obj is None:
        return []
    if not isinstance(obj, dict):
        raise ValueError(f"{kind} is not an object")
    if obj.get("type") == "Sequence":
        steps = obj.get({"normalizer": "normalizers", "pre_tokenizer": "pretokenizers",
                         "post_processor": "processors"}[kind])
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ValueError(f"{kind} Sequence has no list of steps")
        return steps
    return [obj]


def read_tokenizer(path):
    """A Hugging Face tokenizer (a directory, or a tokenizer.json with tokenizer_config.json beside it)
    -> vocab.Vocab. A directory with only a sentencepiece tokenizer.model is read as that."""
    path = os.fspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    jpath = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.exists(jpath):
        spm = os.path.join(path, "tokenizer.model")
        if os.path.exists(spm):
            v, problem = V.read_sentencepiece(spm)
            if problem:
                raise ValueError(f"{spm}: run.c cannot encode like this tokenizer: {problem}")
            return v
        raise ValueError(f"{path}: no tokenizer.json or tokenizer.model")
    try:
        return _parse_tokenizer(read_json(jpath, "tokenizer.json"), folder)
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        msg = str(e) if isinstance(e, ValueError) else f"malformed ({type(e).__name__}: {e})"
        raise ValueError(msg if msg.startswith(jpath) else f"{jpath}: {msg}") from None


def _parse_tokenizer(t, folder):
    """A tokenizer.json object (t) -> Vocab, reading the special tokens' names from folder's configs."""
    model, vocab, merges, added = _bpe_model(t)
    flags, prefix = _flavour(t, model)
    pieces, types, in_text = _tokens(vocab, added, flags, prefix)
    n, ids = len(pieces), {}
    for s, i in vocab.items():
        ids.setdefault(s, i)
    for a in added:
        ids.setdefault(a["content"], a["id"])
    scores = [0.0] * n
    ranked = _ranked_merges(merges, vocab, scores)
    bos, eos, unk = _specials(model, folder, ids, n, bool(flags & V.BYTE_LEVEL))
    bos_first = _template_bos(t, pieces)
    if bos_first is not None:
        bos, flags = bos_first, flags | V.ADD_BOS
    if unk >= 0 and unk not in (bos, eos):  # GPT-Neo's <|endoftext|> is unk, BOS and EOS at once: a control token
        types[unk] = V.UNKNOWN
    classes = list(V.split_classes()) if flags & V.BYTE_LEVEL else []
    v = V.Vocab(pieces, scores, types, in_text, bos, eos, unk, V.find_end(pieces, types), prefix, flags, ranked, classes)
    V.check(v, "tokenizer.json")
    return v


def _bpe_model(t):
    """(model, vocab {token: id}, merges, added_tokens) of a tokenizer.json, checked to be a BPE we encode."""
    model = t.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else model
        raise ValueError(f"model type {quoted(kind)} is not supported (BPE only: with byte fallback like Llama's, "
                         "or byte-level like GPT-2's)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise ValueError(f"BPE {key}={quoted(model[key])} is not supported")
    if model.get("dropout") not in (None, 0, 0.0):
        raise ValueError(f"BPE dropout={quoted(model['dropout'])} is not supported (encoding must be deterministic)")
    vocab, merges = model.get("vocab"), model.get("merges", [])
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(i) is int and 0 <= i < MAX_FIELD
                                              for k, i in vocab.items()):
        raise ValueError("model.vocab must map token strings to ids")
    if not isinstance(merges, list):
        raise ValueError("model.merges must be a list")
    added = t.get("added_tokens") or []
    if not isinstance(added, list) or not all(isinstance(a, dict) and isinstance(a.get("content"), str) and
                                              type(a.get("id")) is int and 0 <= a["id"] < MAX_FIELD for a in added):
        raise ValueError("added_tokens must be a list of {id, content, ...}")
    return model, vocab, merges, added


def _flavour(t, model):
    """(flags, prefix) from the normalizer, the pre-tokenizer and the BPE model's options."""
    norm, pre = _parts(t.get("normalizer"), "normalizer"), _parts(t.get("pre_tokenizer"), "pre_tokenizer")
    flags, prefix = 0, V.PREFIX_NONE
    if len(pre) == 1 and pre[0].get("type") == "ByteLevel" and not norm:
        if pre[0].get("use_regex", True) is not True:
            raise ValueError("a ByteLevel pre_tokenizer without GPT-2's split (use_regex=false) is not supported")
        flags |= V.BYTE_LEVEL
        prefix = V.PREFIX_EVERY if pre[0].get("add_prefix_space") else V.PREFIX_NONE
    elif len(pre) == 1 and pre[0].get("type") == "Metaspace" and not norm:
        m = pre[0]
        if m.get("replacement", "\u2581") != "\u2581":
            raise ValueError(f"Metaspace replacement {quoted(m.get('replacement'))} is not supported (U+2581 only)")
        scheme = m.get("prepend_scheme", "always" if m.get("add_prefix_space", True) else "never")
        prefix = {"first": V.PREFIX_FIRST, "always": V.PREFIX_EVERY, "never": V.PREFIX_NONE}.get(scheme)
        if prefix is None:
            raise ValueError(f"Metaspace prepend_scheme {quoted(scheme)} is not supported")
        flags |= V.SPLIT_SPACES if m.get("split", True) else 0
    elif not pre and norm and norm[-1] == SPACE_TO_MARK:
        rest = norm[:-1]
        if rest[:2] == COLLAPSE_RULES:
            flags, rest = flags | V.COLLAPSE, rest[2:]
        if rest == [PREPEND_MARK]:
            prefix = V.PREFIX_ALWAYS
        elif rest:
            raise ValueError(f"normalizer steps {quoted([s.get('type') for s in rest])} are not supported")
    else:
        raise ValueError(f"normalizer {quoted([s.get('type') for s in norm])} with pre_tokenizer "
                         f"{quoted([s.get('type') for s in pre])} "
                         "is not supported (Llama's: a U+2581 Metaspace or Prepend/Replace normalizer; GPT-2's: ByteLevel)")
    if model.get("byte_fallback"):
        if flags & V.BYTE_LEVEL:
            raise ValueError("byte_fallback with a ByteLevel pre_tokenizer is not supported")
        flags |= V.BYTE_FALLBACK
    flags |= (V.FUSE_UNK if model.get("fuse_unk") else 0) | (V.IGNORE_MERGES if model.get("ignore_merges") else 0)
    return flags, prefix


def _tokens(vocab, added, flags, prefix):
    """(pieces, types, in_text) of every id: the model's vocabulary, then the added tokens over it
    (special ones control, the others user-defined); ids neither names are unused."""
    ids = {*vocab.values(), *(a["id"] for a in added)}
    n = max(ids, default=-1) + 1
    if n > 2 * len(ids):  # the lists below are sized by the largest id: it must be the vocabulary's size
        raise ValueError(f"token id {n - 1} in a vocabulary of {len(ids)} ids: more than half of the ids below it "
                         "name no token (the ids must count the tokens, not be sized by one large id)")
    pieces, types, in_text = [b""] * n, [V.UNUSED] * n, [False] * n
    byte_level = bool(flags & V.BYTE_LEVEL)
    alphabet = {c: b for b, c in enumerate(V.byte_alphabet())}
    for s, i in vocab.items():
        if byte_level and all(c in alphabet for c in s):
            pieces[i], types[i] = bytes(alphabet[c] for c in s), V.NORMAL
        elif not byte_level:
            pieces[i] = s.replace("\u2581", " ").encode("utf-8")
            types[i] = V.BYTE if flags & V.BYTE_FALLBACK and V.byte_value(pieces[i]) >= 0 else V.NORMAL
        else:  # not spelled in GPT-2's alphabet: byte-level BPE can never produce it
            pieces[i] = s.encode("utf-8")
    for a in added:
        for key in ("lstrip", "rstrip", "single_word"):
            if a.get(key):
                raise ValueError(f"added token {quoted(a['content'])} has {key}=true, which run.c does not implement")
        if a.get("normalized", not a.get("special")) and prefix == V.PREFIX_ALWAYS:
            raise ValueError(f"added token {quoted(a['content'])} is normalized under a Prepend normalizer (not supported)")
        i, text = a["id"], a["content"].encode("utf-8")
        kind = V.BYTE if flags & V.BYTE_FALLBACK and V.byte_value(text) >= 0 else V.CONTROL if a.get("special") else V.USER_DEFINED
        pieces[i], types[i], in_text[i] = text, kind, True  # HF reads every added token out of the text
    return pieces, types, in_text


def _ranked_merges(merges, vocab, scores):
    """[(left, right, result)] ids in rank order; each result's score becomes -1 - rank (sentencepiece-style
    priority, for writers that merge by score) unless it has one."""
    ranked = []
    for r, m in enumerate(merges):
        pair = m.split(" ") if isinstance(m, str) else m
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"merge {r} ({quoted(m)}) is not a pair of tokens")
        a, b = pair
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"merge {r} ({quoted(a)} {quoted(b)}) names a token the vocabulary lacks")
        ranked.append((vocab[a], vocab[b], vocab[a + b]))
        if scores[vocab[a + b]] == 0.0:
            scores[vocab[a + b]] = -1.0 - r
    return ranked


def _specials(model, folder, ids, n, byte_level):
    """(bos, eos, unk) ids, -1 for none: tokenizer_config.json / special_tokens_map.json name them, else
    config.json's ids; the model's own unk_token first. BOS and EOS named by none of them are GPT-2's
    <|endoftext|> where the tokenizer is GPT-2's class (gpt2_class)."""
    cfg = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(folder, name)):
            cfg.update(read_json(os.path.join(folder, name), name))
    model_cfg = read_json(os.path.join(folder, "config.json"), "config.json") if os.path.exists(
        os.path.join(folder, "config.json")) else {}
    default = ids[GPT2_END] if GPT2_END in ids and gpt2_class(cfg, model_cfg, byte_level) else -1

    def special(key):
        name = _token_name(cfg.get(f"{key}_token"))
        if isinstance(name, str):
            if name not in ids:
                raise ValueError(f"{key}_token {quoted(name)} of tokenizer_config.json is not in the vocabulary")
            return ids[name]
        i = model_cfg.get(f"{key}_token_id")
        return i if type(i) is int and 0 <= i < n else default if key != "unk" else -1

    bos, eos = special("bos"), special("eos")
    unk = ids.get(model["unk_token"], -1) if isinstance(model.get("unk_token"), str) else special("unk")
    if isinstance(model.get("unk_token"), str) and unk < 0:
        raise ValueError(f"model.unk_token {quoted(model['unk_token'])} is not in the vocabulary")
    return bos, eos, unk


def gpt2_class(cfg, model_cfg, byte_level):
    """Whether transformers reads this tokenizer with its GPT-2 class, whose BOS, EOS and unk default to
    <|endoftext|>: tokenizer_config.json's tokenizer_class says so, else config.json's model_type (GPT-2's and
    GPT-Neo's published folders); a bare byte-level tokenizer.json (no class, no model type: how
    `download_tokenizer` fetches GPT-2's and GPT-Neo's) is read as theirs too, where transformers alone
    would name no BOS or EOS. The unk default is not taken: ids come from the model's own unk_token (none:
    byte-level BPE has every byte), which transformers' label does not change."""
    if isinstance(cfg.get("tokenizer_class"), str):
        return cfg["tokenizer_class"] in GPT2_CLASSES
    if isinstance(model_cfg.get("model_type"), str):
        return model_cfg["model_type"] in GPT2_MODEL_TYPES
    return byte_level


def _template_bos(t, pieces):
    """The BOS id the post-processor puts before the text, or None: it must be nothing, or a template of
    one special token (of the vocabulary) and the text."""
    bos, n = None, len(pieces)
    for step in _parts(t.get("post_processor"), "post_processor"):
        kind = step.get("type")
        if kind == "ByteLevel":
            continue
        if kind != "TemplateProcessing":
            raise ValueError(f"post_processor {quoted(kind)} is not supported (TemplateProcessing or ByteLevel)")
        table = step.get("special_tokens") or {}
        if not isinstance(table, dict):
            raise ValueError("the template's special_tokens is not an object")
        for name, spec in table.items():
            tids = spec.get("ids") if isinstance(spec, dict) else None
            if not (isinstance(tids, list) and len(tids) == 1 and type(tids[0]) is int and 0 <= tids[0] < n
                    and pieces[tids[0]] == name.encode("utf-8")):
                raise ValueError(f"the template's special token {quoted(name)} (ids {quoted(tids)}) is not that token "
                                 "of the vocabulary")
        single = step.get("single")
        if not isinstance(single, list):
            raise ValueError("the template has no 'single' list")
        for item in single:
            if "SpecialToken" in item and item["SpecialToken"].get("id") not in table:
                raise ValueError(f"the template names {quoted(item['SpecialToken'].get('id'))}, which its special_tokens lack")
        shape = ["S" if "SpecialToken" in i else "A" if "Sequence" in i else "?" for i in single]
        if shape == ["S", "A"]:
            bos = table[single[0]["SpecialToken"]["id"]]["ids"][0]
        elif shape != ["A"]:
            raise ValueError(f"template {shape} is not supported (only a BOS before the text, or nothing)")
    return bos


def gpt2_tokenizer_json(vocab_path, merges_path):
    """The tokenizer.json object of a byte-level BPE given as GPT-2's two older files, vocab.json ({token: id})
    and merges.txt (a "#version" line, then a "left right" merge per line, in rank order), as GPT-2's own
    tokenizer.json spells it: ByteLevel pre-tokenizer (no prefix space), decoder and post-processor, and
    <|endoftext|> a special added token. GPT-Neo publishes its vocabulary (GPT-2's) only in these files."""
    vocab = read_json(vocab_path, "vocab.json")
    size = regular_file(merges_path, "merges.txt")
    if size > MAX_JSON:
        raise ValueError(f"{merges_path}: {size:,} bytes is too big for a merges.txt (at most {MAX_JSON:,})")
    try:
        lines = open(merges_path, encoding="utf-8").read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{merges_path}: not a readable merges.txt ({e})") from None
    merges = []
    for k, line in enumerate(lines, 1):
        if line and not (k == 1 and line.startswith("#version")):
            pair = line.split(" ")
            if len(pair) != 2 or not all(pair):
                raise ValueError(f"{merges_path}: line {k} is not a merge of two tokens: {quoted(line[:80])}")
            merges.append(pair)
    added = [{"id": vocab[GPT2_END], "content": GPT2_END, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": True, "special": True}] if type(vocab.get(GPT2_END)) is int else []
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": level, "post_processor": {**level, "add_prefix_space": True, "trim_offsets": False},
            "decoder": {**level, "add_prefix_space": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": merges}}


def write_tokenizer(v, dirpath, max_len):
    """Write v as tokenizer.json + tokenizer_config.json: Llama's byte-fallback form (a Prepend/Replace
    normalizer, merges derived from the scores when v merges by score) or GPT-2's byte-level form."""
    spell = [V.spelling(v, i) for i in range(len(v))]
    byte_level = bool(v.flags & V.BYTE_LEVEL)
    added = [{"id": i, "content": spell[i], "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": v.types[i] != V.USER_DEFINED} for i in range(len(v)) if v.types[i] in (V.CONTROL, V.UNKNOWN, V.USER_DEFINED)]
    merges = v.merges or derive_merges(v)
    vocab = {}
    for i, s in enumerate(spell):
        if not (v.types[i] == V.UNUSED and not v.pieces[i]):  # padding: no token at all
            vocab.setdefault(s, i)
    if byte_level:
        normalizer, pre = None, {"type": "ByteLevel", "add_prefix_space": v.prefix == V.PREFIX_EVERY,
                                 "trim_offsets": True, "use_regex": True}
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    else:
        if v.prefix in (V.PREFIX_FIRST, V.PREFIX_EVERY):
            normalizer, pre = None, {"type": "Metaspace", "replacement": "\u2581", "split": bool(v.flags & V.SPLIT_SPACES),
                                     "prepend_scheme": "first" if v.prefix == V.PREFIX_FIRST else "always"}
        else:
            steps = (COLLAPSE_RULES if v.flags & V.COLLAPSE else []) + ([PREPEND_MARK] if v.prefix else []) + [SPACE_TO_MARK]
            normalizer, pre = {"type": "Sequence", "normalizers": steps}, None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]
            + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if v.prefix else [])}
    if v.flags & V.ADD_BOS and v.bos >= 0:
        b = spell[v.bos]
        post = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {b: {"id": b, "ids": [v.bos], "tokens": [b]}}}
    else:
        post = None
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
          "pre_tokenizer": pre, "post_processor": post, "decoder": decoder,
          "model": {"type": "BPE", "dropout": None, "unk_token": spell[v.unk] if v.unk >= 0 else None,
                    "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": bool(v.flags & V.FUSE_UNK),
                    "byte_fallback": bool(v.flags & V.BYTE_FALLBACK), "ignore_merges": bool(v.flags & V.IGNORE_MERGES),
                    "vocab": vocab, "merges": [[spell[a], spell[b]] for a, b, _ in merges]}}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, "model_max_length": max_len}
    for key, i in (("bos_token", v.bos), ("eos_token", v.eos), ("unk_token", v.unk)):
        if i >= 0:
            config[key] = spell[i]
    atomic_write(os.path.join(dirpath, "tokenizer.json"), json.dumps(tj, ensure_ascii=False).encode())
    atomic_write(os.path.join(dirpath, "tokenizer_config.json"), (json.dumps(config, indent=2) + "\n").encode())


def derive_merges(v):
    """Ranked merges that reproduce merging by score: every split of a normal piece into two normal
    pieces, best-scoring result first (sentencepiece's order; transformers' converter does the same)."""
    normal = {}
    for i, (p, t) in enumerate(zip(v.pieces, v.types)):
        if t == V.NORMAL and p:
            normal.setdefault(p, i)
    out = []
    for p, c in normal.items():
        text = p.decode("utf-8", errors="surrogateescape")
        for k in range(1, len(text)):
            a = normal.get(text[:k].encode("utf-8", errors="surrogateescape"))
            b = normal.get(text[k:].encode("utf-8", errors="surrogateescape"))
            if a is not None and b is not None:
                out.append((-v.scores[c], c, a, b))
    return [(a, b, c) for _, c, a, b in sorted(out)]
